/**
 * Challenge-format npz volumes: `imgs` (D,H,W), (H,W), (H,W,3) or (D,H,W,3) uint8, `gts` an integer
 * label map of the same spatial shape, optional `spacing`. Every problem is reported as an Error
 * whose message starts with the file's path.
 */
import { existsSync, statSync } from 'node:fs';
import { readNpz, type NpyArray } from '../io/npz.js';

/** Integer label maps as the pipeline reads them (0 = background). */
export type LabelArray = Uint8Array | Uint16Array | Int16Array | Int32Array | Uint32Array;

export interface Volume {
  path: string;
  /** slices; 1 for a 2D image */
  depth: number;
  height: number;
  width: number;
  /** 1 (gray) or 3 (RGB, channels-last) */
  channels: 1 | 3;
  /** (D,H,W[,C]) row-major */
  imgs: Uint8Array;
  /** (D,H,W) row-major */
  gts: LabelArray;
  /** voxel spacing in mm when the file has it */
  spacing?: number[];
}

/** Throws `${path}: not found` / `${path}: is a directory` in the pipeline's wording. */
export function assertReadableFile(path: string): void {
  if (!existsSync(path)) throw new Error(`${path}: file not found`);
  if (statSync(path).isDirectory()) throw new Error(`${path}: is a directory, expected a file`);
}

/**
 * Turn an npy label array into a LabelArray without copying where possible. Float or 64-bit label
 * maps (some tools write them) are accepted when they hold non-negative integers.
 */
export function toLabelArray(arr: NpyArray, source: string): LabelArray {
  const d = arr.data;
  if (d instanceof Uint8Array || d instanceof Uint16Array || d instanceof Uint32Array) return d;
  if (d instanceof Int16Array || d instanceof Int32Array || d instanceof Int8Array) {
    for (let i = 0; i < d.length; i++) {
      if (d[i] < 0) throw new Error(`${source}: label map has a negative label (${d[i]})`);
    }
    return d instanceof Int8Array ? new Uint8Array(d.buffer, d.byteOffset, d.length) : d;
  }
  if (d instanceof Float32Array || d instanceof Float64Array || d instanceof BigInt64Array || d instanceof BigUint64Array) {
    const out = new Int32Array(d.length);
    for (let i = 0; i < d.length; i++) {
      const v = Number(d[i]);
      if (!(v >= 0) || v !== Math.floor(v) || v > 0x7fffffff) {
        throw new Error(`${source}: label map must hold non-negative integers, found ${v}`);
      }
      out[i] = v;
    }
    return out;
  }
  throw new Error(`${source}: unsupported label dtype '${arr.dtype}'`);
}

function shapeStr(shape: number[]): string {
  return `(${shape.join(',')})`;
}

/**
 * Match `imgs` against `gts` and return (depth, height, width, channels).
 * Accepted: imgs (H,W)+gts (H,W); imgs (H,W,3)+gts (H,W); imgs (D,H,W)+gts (D,H,W); imgs (D,H,W,3)+gts (D,H,W).
 */
export function volumeGeometry(imgShape: number[], gtShape: number[], source: string): [number, number, number, 1 | 3] {
  const same = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => v === b[i]);
  const mismatch = () =>
    new Error(
      `${source}: imgs shape ${shapeStr(imgShape)} does not match gts shape ${shapeStr(gtShape)} ` +
        '(expected imgs (D,H,W), (H,W), (H,W,3) or (D,H,W,3) with gts of the same spatial shape)',
    );
  if (gtShape.length !== 2 && gtShape.length !== 3) throw mismatch();
  let channels: 1 | 3;
  if (same(imgShape, gtShape)) channels = 1;
  else if (imgShape.length === gtShape.length + 1 && imgShape[imgShape.length - 1] === 3 && same(imgShape.slice(0, -1), gtShape)) {
    channels = 3;
  } else throw mismatch();
  const [d, h, w] = gtShape.length === 3 ? gtShape : [1, gtShape[0], gtShape[1]];
  if (d < 1 || h < 1 || w < 1) throw new Error(`${source}: empty array, gts shape ${shapeStr(gtShape)}`);
  return [d, h, w, channels];
}

/** Load and validate one npz volume. */
export function loadNpzVolume(path: string): Volume {
  assertReadableFile(path);
  const arrays = readNpz(path);
  const found = Object.keys(arrays).join(', ') || 'no arrays';
  for (const key of ['imgs', 'gts']) {
    if (!arrays[key]) throw new Error(`${path}: npz has no '${key}' array (found: ${found})`);
  }
  const imgs = arrays.imgs;
  if (!(imgs.data instanceof Uint8Array)) {
    throw new Error(`${path}: imgs must be uint8 (0..255), got dtype '${imgs.dtype}'`);
  }
  const [depth, height, width, channels] = volumeGeometry(imgs.shape, arrays.gts.shape, path);
  const gts = toLabelArray(arrays.gts, `${path}:gts`);
  let any = false;
  for (let i = 0; i < gts.length; i++) {
    if (gts[i] !== 0) {
      any = true;
      break;
    }
  }
  if (!any) throw new Error(`${path}: empty label volume (gts is all zero, nothing to train on)`);
  const spacing = arrays.spacing ? Array.from(arrays.spacing.data as Float64Array, Number) : undefined;
  return { path, depth, height, width, channels, imgs: imgs.data, gts, spacing };
}
