/**
 * Synthetic CT-like volumes for the demo: a soft-tissue "body" ellipse on dark background, with K
 * ellipsoid "organs" (labels 1..K) of clearly different intensities, plus Gaussian noise. Written as
 * challenge-format npz (imgs, gts (D,H,W) uint8, spacing), deflate-compressed. Deterministic from seed.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import seedrandom from 'seedrandom';
import { encodeNpz } from '../io/npz.js';

export interface SyntheticOptions {
  /** number of volumes */
  count: number;
  /** slices per volume */
  depth: number;
  /** in-plane size (H = W) */
  size: number;
  seed: number | string;
  /** organs per volume, labels 1..organs (default 3, at most 5) */
  organs?: number;
  /** noise standard deviation in gray levels (default 10) */
  noise?: number;
}

/** Mean intensity of each organ label (the body is 100, the background 15). */
export const ORGAN_INTENSITY = [175, 235, 45, 145, 205] as const;
const BODY = 100;
const BACKGROUND = 15;

/** One synthetic volume: imgs and gts (D, size, size). */
export function syntheticVolume(opts: Omit<SyntheticOptions, 'count'>, index: number): { imgs: Uint8Array; gts: Uint8Array } {
  const { depth: D, size: N } = opts;
  const K = Math.min(opts.organs ?? 3, ORGAN_INTENSITY.length);
  const sigma = opts.noise ?? 10;
  const rng = seedrandom.alea(`${opts.seed}/synthetic/${index}`);
  const u = (a: number, b: number) => a + (b - a) * rng();
  const imgs = new Uint8Array(D * N * N);
  const gts = new Uint8Array(D * N * N);

  const body = { cx: N * u(0.47, 0.53), cy: N * u(0.47, 0.53), rx: N * u(0.4, 0.46), ry: N * u(0.34, 0.42) };
  const phase = u(0, 2 * Math.PI);
  const organs = Array.from({ length: K }, (_, k) => {
    const a = phase + (2 * Math.PI * k) / K + u(-0.25, 0.25);
    const r = N * u(0.17, 0.22);
    return {
      cx: body.cx + r * Math.cos(a),
      cy: body.cy + r * Math.sin(a) * 0.85,
      cz: (D - 1) * u(0.4, 0.6),
      rx: N * u(0.07, 0.12),
      ry: N * u(0.07, 0.12),
      rz: Math.max(1.5, D * u(0.3, 0.45)),
      value: ORGAN_INTENSITY[k] + u(-8, 8),
    };
  });

  // Box–Muller pairs of standard normals.
  let spare = NaN;
  const gauss = () => {
    if (!Number.isNaN(spare)) {
      const s = spare;
      spare = NaN;
      return s;
    }
    const r = Math.sqrt(-2 * Math.log(1 - rng()));
    const t = 2 * Math.PI * rng();
    spare = r * Math.sin(t);
    return r * Math.cos(t);
  };

  // The body is the same on every slice; organs are painted inside their bounding boxes only.
  const bodyPlane = new Float32Array(N * N);
  for (let y = 0; y < N; y++) {
    for (let x = 0; x < N; x++) {
      const bx = (x + 0.5 - body.cx) / body.rx;
      const by = (y + 0.5 - body.cy) / body.ry;
      bodyPlane[y * N + x] = bx * bx + by * by <= 1 ? BODY : BACKGROUND;
    }
  }
  const plane = new Float32Array(N * N);
  for (let z = 0; z < D; z++) {
    plane.set(bodyPlane);
    const labels = gts.subarray(z * N * N, (z + 1) * N * N);
    organs.forEach((o, k) => {
      const dz = (z - o.cz) / o.rz;
      if (dz * dz > 1) return;
      const y0 = Math.max(0, Math.floor(o.cy - o.ry));
      const y1 = Math.min(N - 1, Math.ceil(o.cy + o.ry));
      const x0 = Math.max(0, Math.floor(o.cx - o.rx));
      const x1 = Math.min(N - 1, Math.ceil(o.cx + o.rx));
      for (let y = y0; y <= y1; y++) {
        for (let x = x0; x <= x1; x++) {
          const dx = (x + 0.5 - o.cx) / o.rx;
          const dy = (y + 0.5 - o.cy) / o.ry;
          if (dx * dx + dy * dy + dz * dz > 1) continue;
          plane[y * N + x] = o.value;
          labels[y * N + x] = k + 1;
        }
      }
    });
    const out = imgs.subarray(z * N * N, (z + 1) * N * N);
    for (let i = 0; i < N * N; i++) {
      const v = Math.round(plane[i] + sigma * gauss());
      out[i] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  return { imgs, gts };
}

/** Write `count` volumes as `synthetic_000.npz`, … into `dir` (created); returns their paths. */
export function generateSyntheticVolumes(dir: string, opts: SyntheticOptions): string[] {
  mkdirSync(dir, { recursive: true });
  const paths: string[] = [];
  for (let i = 0; i < opts.count; i++) {
    const { imgs, gts } = syntheticVolume(opts, i);
    const shape = [opts.depth, opts.size, opts.size];
    const bytes = encodeNpz({
      imgs: { data: imgs, shape },
      gts: { data: gts, shape },
      spacing: { data: Float64Array.from([0.8, 0.8, 2.5]), shape: [3] },
    });
    const path = join(dir, `synthetic_${String(i).padStart(3, '0')}.npz`);
    writeFileSync(path, bytes);
    paths.push(path);
  }
  return paths;
}

/** Generate the volumes unless `dir` already holds npz files (configs/demo.yaml's data). */
export function ensureSyntheticVolumes(dir: string, opts: SyntheticOptions): boolean {
  if (existsSync(dir) && readdirSync(dir).some((n) => n.endsWith('.npz'))) return false;
  generateSyntheticVolumes(dir, opts);
  return true;
}
