import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ORGAN_INTENSITY, ensureSyntheticVolumes, generateSyntheticVolumes, syntheticVolume } from '../src/data/synthetic.js';
import { loadNpzVolume } from '../src/data/volume.js';

const tmp = mkdtempSync(join(tmpdir(), 'medtune-synthetic-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('synthetic CT-like volumes', () => {
  it('are written as challenge npz, deterministic from the seed', () => {
    const opts = { count: 2, depth: 8, size: 48, seed: 5 };
    const a = generateSyntheticVolumes(join(tmp, 'a'), opts);
    const b = generateSyntheticVolumes(join(tmp, 'b'), opts);
    const c = generateSyntheticVolumes(join(tmp, 'c'), { ...opts, seed: 6 });
    expect(a.map((p) => p.split('/').pop())).toEqual(['synthetic_000.npz', 'synthetic_001.npz']);
    // compare contents: the zip headers carry the write time
    const same = (p: string, q: string) => {
      const [x, y] = [loadNpzVolume(p), loadNpzVolume(q)];
      return Buffer.compare(x.imgs, y.imgs) === 0 && Buffer.compare(x.gts as Uint8Array, y.gts as Uint8Array) === 0;
    };
    expect(same(a[0], b[0])).toBe(true);
    expect(same(a[1], b[1])).toBe(true);
    expect(same(a[0], c[0])).toBe(false);
    expect(same(a[0], a[1])).toBe(false);
    const v = loadNpzVolume(a[0]);
    expect([v.depth, v.height, v.width, v.channels]).toEqual([8, 48, 48, 1]);
    expect(v.spacing).toEqual([0.8, 0.8, 2.5]);
  });

  it('have K labelled organs with clearly different intensities', () => {
    const { imgs, gts } = syntheticVolume({ depth: 12, size: 64, seed: 1, organs: 4 }, 0);
    const sum = new Float64Array(5);
    const n = new Float64Array(5);
    for (let i = 0; i < gts.length; i++) {
      sum[gts[i]] += imgs[i];
      n[gts[i]]++;
    }
    for (let k = 1; k <= 4; k++) {
      expect(n[k]).toBeGreaterThan(200); // each organ is a real blob
      expect(Math.abs(sum[k] / n[k] - ORGAN_INTENSITY[k - 1])).toBeLessThan(12);
    }
    // every organ differs from the body (~100) and the others by far more than the noise (sd 10)
    const means = [1, 2, 3, 4].map((k) => sum[k] / n[k]);
    for (const m of means) expect(Math.abs(m - 100)).toBeGreaterThan(30);
  });

  it('ensureSyntheticVolumes generates only when the folder has no npz', () => {
    const dir = join(tmp, 'demo');
    expect(ensureSyntheticVolumes(dir, { count: 1, depth: 4, size: 32, seed: 0 })).toBe(true);
    expect(ensureSyntheticVolumes(dir, { count: 1, depth: 4, size: 32, seed: 0 })).toBe(false);
  });
});
