/**
 * NIfTI volumes (+ label maps) -> npz files in the medical segmentation challenge format
 * (`medtune prepare`, and training pointed at a Decathlon folder): `imgs` uint8 (D, H, W), `gts` uint8 (D, H, W), `spacing` float64 (x, y, z),
 * `direction` float64 (9,) and `origin` float64 (3,) (SimpleITK / LPS conventions, see
 * src/data/nifti.ts).
 */
import type { NiftiVolume } from './nifti.js';
import { percentileToUint8, windowToUint8, WINDOW_PRESETS, type IntensityWindow } from './intensity.js';
import type { Shard } from '../shard.js';

export type Modality = 'CT' | 'MR' | 'PET';

export interface PrepareOptions {
  modality: Modality;
  /** CT only; default soft tissue (center 40, width 400) */
  window?: IntensityWindow;
  /** keep only the slices from the first to the last one with a label, plus `margin` on each side */
  cropToLabels?: boolean;
  margin?: number;
}

export interface PreparedCase {
  imgs: Uint8Array;
  gts?: Uint8Array;
  shape: [number, number, number];
  spacing: [number, number, number];
  direction: number[];
  origin: [number, number, number];
  labels: number[];
  /** first slice kept (0 unless cropped) */
  zStart: number;
}

function labelData(label: NiftiVolume, scaled: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(scaled.length);
  for (let i = 0; i < scaled.length; i++) {
    const v = scaled[i];
    const r = Math.round(v);
    if (!(Math.abs(v - r) <= 1e-3) || r < 0 || r > 255) {
      throw new Error(`${label.source}: label value ${v} at voxel ${i} is not an integer in 0..255`);
    }
    out[i] = r;
  }
  return out;
}

/** Normalize one image (and its label map) into challenge arrays. */
export async function prepareCase(image: NiftiVolume, label: NiftiVolume | undefined, opts: PrepareOptions): Promise<PreparedCase> {
  const { scaledData } = await import('./nifti.js');
  if (label) checkSameGeometry(image, label);
  const values = scaledData(image);
  let imgs: Uint8Array;
  if (opts.modality === 'CT') {
    imgs = windowToUint8(values, opts.window ?? WINDOW_PRESETS['soft-tissue']);
  } else {
    if (opts.window) throw new Error(`--window applies to CT only; ${opts.modality} uses percentile clipping`);
    imgs = percentileToUint8(values, 0.5, 99.5, image.source).data;
  }
  let gts = label ? labelData(label, scaledData(label)) : undefined;
  let shape = image.shape.slice() as [number, number, number];
  const g = image.geometry;
  let origin = g.origin.slice() as [number, number, number];
  let zStart = 0;
  if (opts.cropToLabels && gts) {
    const slice = shape[1] * shape[2];
    let first = -1;
    let last = -1;
    for (let z = 0; z < shape[0]; z++) {
      const s = gts.subarray(z * slice, (z + 1) * slice);
      if (s.some((v) => v !== 0)) {
        if (first < 0) first = z;
        last = z;
      }
    }
    if (first < 0) throw new Error(`${label!.source}: empty label map, nothing to crop to`);
    const m = opts.margin ?? 0;
    zStart = Math.max(0, first - m);
    const zEnd = Math.min(shape[0] - 1, last + m);
    imgs = imgs.slice(zStart * slice, (zEnd + 1) * slice);
    gts = gts.slice(zStart * slice, (zEnd + 1) * slice);
    shape = [zEnd - zStart + 1, shape[1], shape[2]];
    // the new first slice sits zStart steps along the z index direction
    origin = [0, 1, 2].map((i) => g.origin[i] + g.direction[i * 3 + 2] * g.spacing[2] * zStart) as [number, number, number];
  }
  const labels: number[] = [];
  if (gts) {
    const seen = new Uint8Array(256);
    for (let i = 0; i < gts.length; i++) seen[gts[i]] = 1;
    for (let v = 1; v < 256; v++) if (seen[v]) labels.push(v);
  }
  return { imgs, gts, shape, spacing: g.spacing.slice() as [number, number, number], direction: g.direction.slice(), origin, labels, zStart };
}

/** The npz bytes of a prepared case (deflate-compressed, like numpy's savez_compressed). */
export async function encodePreparedCase(c: PreparedCase): Promise<Uint8Array> {
  const { encodeNpz } = await import('../io/npz.js');
  const arrays: Parameters<typeof encodeNpz>[0] = {
    imgs: { data: c.imgs, shape: c.shape },
  };
  if (c.gts) arrays.gts = { data: c.gts, shape: c.shape };
  arrays.spacing = { data: Float64Array.from(c.spacing), shape: [3] };
  arrays.direction = { data: Float64Array.from(c.direction), shape: [9] };
  arrays.origin = { data: Float64Array.from(c.origin), shape: [3] };
  return encodeNpz(arrays, true);
}

const NIFTI_RE = /\.nii(\.gz)?$/i;

export function niftiBase(name: string): string {
  return name.replace(NIFTI_RE, '');
}

export interface PairedFile {
  name: string;
  image: string;
  label?: string;
}

/**
 * Pair images with label maps: same base name, or the image carrying nnU-Net's channel suffix
 * `_0000` (case_0000.nii.gz <-> case.nii.gz). The output is named after the label (or image) base.
 */
export function pairFiles(imageNames: string[], labelNames: string[] | undefined): { pairs: PairedFile[]; unpairedImages: string[] } {
  const images = imageNames.filter((f) => NIFTI_RE.test(f)).sort();
  if (!labelNames) return { pairs: images.map((f) => ({ name: niftiBase(f).replace(/_0000$/, ''), image: f })), unpairedImages: [] };
  const byBase = new Map(images.map((f) => [niftiBase(f), f]));
  const used = new Set<string>();
  const pairs: PairedFile[] = [];
  for (const l of labelNames.filter((f) => NIFTI_RE.test(f)).sort()) {
    const base = niftiBase(l);
    const image = byBase.get(base) ?? byBase.get(`${base}_0000`);
    if (!image) throw new Error(`${l}: no image for this label map (looked for ${base}.nii[.gz] and ${base}_0000.nii[.gz])`);
    used.add(image);
    pairs.push({ name: base, image, label: l });
  }
  return { pairs, unpairedImages: images.filter((f) => !used.has(f)) };
}

export interface PrepareDirOptions extends PrepareOptions {
  /** a Decathlon / nnU-Net folder (dataset.json, imagesTr/, labelsTr/), or `images` (+ `labels`) */
  root?: string;
  images?: string;
  labels?: string;
  out: string;
  /** replace npz files already in `out` (default: refuse) */
  overwrite?: boolean;
  /** this process's share of the cases (SLURM array, Kubernetes Indexed Job) */
  shard?: Shard;
  log?: (line: string) => void;
}

interface CaseFiles {
  name: string;
  image: string;
  label?: string;
}

/** Image and label must describe the same voxels: shape, spacing, origin and direction. */
function checkSameGeometry(image: NiftiVolume, label: NiftiVolume): void {
  const close = (a: readonly number[], b: readonly number[]) => a.every((v, i) => Math.abs(v - b[i]) <= 1e-4 * Math.max(1, Math.abs(v)));
  const fields: Array<[string, readonly number[], readonly number[]]> = [
    ['shape', image.shape, label.shape],
    ['spacing', image.geometry.spacing, label.geometry.spacing],
    ['origin', image.geometry.origin, label.geometry.origin],
    ['direction', image.geometry.direction, label.geometry.direction],
  ];
  for (const [what, a, b] of fields) {
    if (a.length !== b.length || !close(a, b)) {
      throw new Error(`${label.source}: label ${what} (${b.map((v) => +v.toFixed(6)).join(', ')}) differs from image ${image.source} (${a.map((v) => +v.toFixed(6)).join(', ')})`);
    }
  }
}

/**
 * Convert every case of a Decathlon folder or of two directories; returns the npz paths written.
 * A case that fails (geometry, label values) is reported and the others go on; the call then
 * throws listing every failure. Listed cases whose files are missing are skipped and counted.
 */
export async function prepareDirectories(o: PrepareDirOptions): Promise<string[]> {
  const { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { readNifti } = await import('./nifti.js');
  const { shardCases } = await import('../shard.js');
  const log = o.log ?? (() => {});
  let cases: CaseFiles[];
  let labelNames: Map<number, string> | undefined;
  if (o.root) {
    const { readDecathlon } = await import('./decathlon.js');
    const ds = readDecathlon(o.root);
    labelNames = ds.labelNames;
    for (const m of ds.missing) log(`warning: ${m.id}: ${m.path} is missing; skipped`);
    if (ds.missing.length > 0) log(`skipped ${ds.missing.length} case(s) listed in ${join(ds.root, 'dataset.json')} whose files are missing`);
    cases = ds.cases.map((c) => ({ name: c.id, image: c.image, label: c.label }));
  } else {
    if (!o.images) throw new Error('prepare: name a Decathlon folder or --images (and --labels)');
    const listDir = (dir: string, what: string) => {
      if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`${what} directory not found: ${dir}`);
      return readdirSync(dir);
    };
    const { pairs, unpairedImages } = pairFiles(listDir(o.images, 'images'), o.labels ? listDir(o.labels, 'labels') : undefined);
    if (pairs.length === 0) throw new Error(`no NIfTI (.nii / .nii.gz) ${o.labels ? 'label maps' : 'images'} found in ${o.labels ?? o.images}`);
    for (const f of unpairedImages) log(`warning: ${join(o.images, f)} has no label map; skipped`);
    cases = pairs.map((p) => ({ name: p.name, image: join(o.images!, p.image), label: p.label ? join(o.labels!, p.label) : undefined }));
  }
  cases = shardCases(cases, o.shard, (c) => c.name);
  if (o.shard) log(`shard ${o.shard.index}/${o.shard.count} (${o.shard.source}): ${cases.length} case(s)`);
  const outPath = (c: CaseFiles) => join(o.out, `${c.name}.npz`);
  const existing = cases.map(outPath).filter((p) => existsSync(p));
  if (existing.length > 0 && !o.overwrite) {
    throw new Error(`${existing.length} output file(s) exist already (${existing.slice(0, 3).join(', ')}${existing.length > 3 ? ', ...' : ''}); pass --overwrite to replace them`);
  }
  mkdirSync(o.out, { recursive: true });
  if (labelNames) writeFileSync(join(o.out, 'labels.json'), `${JSON.stringify(Object.fromEntries(labelNames), null, 2)}\n`);
  const written: string[] = [];
  const failed: string[] = [];
  for (const f of cases) {
    try {
      const image = readNifti(f.image);
      const label = f.label ? readNifti(f.label) : undefined;
      const c = await prepareCase(image, label, o);
      const unknown = labelNames ? c.labels.filter((v) => !labelNames!.has(v)) : [];
      if (unknown.length > 0) throw new Error(`${f.label}: label value(s) ${unknown.join(', ')} not in dataset.json (labels ${[...labelNames!.keys()].join(', ')})`);
      writeFileSync(outPath(f), await encodePreparedCase(c));
      written.push(outPath(f));
      const crop = o.cropToLabels ? `, slices ${c.zStart}..${c.zStart + c.shape[0] - 1} of ${image.shape[0]}` : '';
      const named = (v: number) => (labelNames?.has(v) ? `${v} ${labelNames.get(v)}` : String(v));
      const lab = c.gts ? `, labels ${c.labels.length ? c.labels.map(named).join(', ') : 'none'}` : '';
      log(`${outPath(f)}: (${c.shape.join(', ')}), spacing ${c.spacing.map((s) => +s.toFixed(4)).join(' x ')} mm${lab}${crop}`);
    } catch (err) {
      failed.push((err as Error).message);
      log(`error: ${(err as Error).message}`);
    }
  }
  if (failed.length > 0) throw new Error(`${failed.length} of ${cases.length} case(s) failed (${written.length} written):\n  ${failed.join('\n  ')}`);
  return written;
}
