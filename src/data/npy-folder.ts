/**
 * The MedSAM npy-folder format: `<dir>/imgs/NAME.npy` (1024,1024,3) float in [0,1] (or uint8 0..255)
 * and `<dir>/gts/NAME.npy` (256,256) label map covering the same field of view, paired by file name.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseNpy } from '../io/npz.js';
import { assertReadableFile, toLabelArray, type LabelArray } from './volume.js';

export interface NpyPairEntry {
  kind: 'npy';
  /** the image file; names the sample in messages */
  path: string;
  gtPath: string;
}

/** One 2D sample of the npy-folder format, loaded. */
export interface NpyPair {
  path: string;
  height: number;
  width: number;
  channels: 1 | 3;
  /** (H,W[,C]) in 0..1 when float; uint8 images stay 0..255 */
  image: Float32Array | Uint8Array;
  labelHeight: number;
  labelWidth: number;
  labels: LabelArray;
}

export interface NpyHeader {
  dtype: string;
  shape: number[];
  fortranOrder: boolean;
}

/** True when `dir` has both `imgs/` and `gts/` subfolders. */
export function isNpyFolder(dir: string): boolean {
  const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory();
  return isDir(join(dir, 'imgs')) && isDir(join(dir, 'gts'));
}

/** The (image, label) pairs of an npy folder, sorted by name; a label file without its image is an error. */
export function listNpyFolder(dir: string): NpyPairEntry[] {
  const names = readdirSync(join(dir, 'gts'))
    .filter((n) => n.endsWith('.npy'))
    .sort();
  if (names.length === 0) throw new Error(`${join(dir, 'gts')}: no .npy label files`);
  return names.map((name) => {
    const path = join(dir, 'imgs', name);
    const gtPath = join(dir, 'gts', name);
    if (!existsSync(path)) throw new Error(`${gtPath}: no matching image ${path}`);
    return { kind: 'npy', path, gtPath };
  });
}

/** Read only the header of an .npy file (no data), to check shapes up front. */
export function readNpyHeader(path: string): NpyHeader {
  assertReadableFile(path);
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(16);
    const n = readSync(fd, head, 0, 16, 0);
    if (n < 10 || head.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${path}: not a valid .npy array (bad magic)`);
    const major = head[6];
    const lenBytes = major === 1 ? 2 : 4;
    const headerLen = lenBytes === 2 ? head.readUInt16LE(8) : head.readUInt32LE(8);
    const buf = Buffer.alloc(headerLen);
    if (readSync(fd, buf, 0, headerLen, 8 + lenBytes) !== headerLen) throw new Error(`${path}: not a valid .npy array (truncated header)`);
    const text = buf.toString('latin1');
    const descr = /'descr'\s*:\s*'([^']*)'/.exec(text);
    const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(text);
    const shape = /'shape'\s*:\s*\(([^)]*)\)/.exec(text);
    if (!descr || !fortran || !shape) throw new Error(`${path}: not a valid .npy array (unreadable header)`);
    return {
      dtype: descr[1].replace(/^[<>|=]/, ''),
      fortranOrder: fortran[1] === 'True',
      shape: shape[1]
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
        .map(Number),
    };
  } finally {
    closeSync(fd);
  }
}

/** The file's bytes as a plain Uint8Array (a small Buffer is a view into Node's shared pool). */
function readBytes(path: string): Uint8Array {
  const buf = readFileSync(path);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

const IMAGE_DTYPES = new Set(['f4', 'f8', 'f2', 'u1']);

/** Check an image header: (H,W,3) or (H,W), float or uint8. Returns (H, W, C). */
export function checkNpyImageHeader(header: NpyHeader, path: string): [number, number, 1 | 3] {
  const s = header.shape;
  if (!IMAGE_DTYPES.has(header.dtype)) throw new Error(`${path}: image dtype '${header.dtype}' not supported (float in [0,1] or uint8)`);
  if (header.fortranOrder) throw new Error(`${path}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray`);
  if (s.length === 3 && s[2] === 3) return [s[0], s[1], 3];
  if (s.length === 2) return [s[0], s[1], 1];
  throw new Error(`${path}: image shape (${s.join(',')}) is not (H,W,3) or (H,W)`);
}

/** Load the label map of a pair (small; read while indexing). */
export function loadNpyLabels(entry: NpyPairEntry): { labels: LabelArray; height: number; width: number } {
  assertReadableFile(entry.gtPath);
  const arr = parseNpy(readBytes(entry.gtPath), entry.gtPath);
  if (arr.shape.length !== 2) throw new Error(`${entry.gtPath}: label shape (${arr.shape.join(',')}) is not (H,W)`);
  return { labels: toLabelArray(arr, entry.gtPath), height: arr.shape[0], width: arr.shape[1] };
}

/** Load one image/label pair, the image as Float32 in [0,1] (uint8 images are kept as is). */
export function loadNpyPair(entry: NpyPairEntry): NpyPair {
  const { labels, height: labelHeight, width: labelWidth } = loadNpyLabels(entry);
  assertReadableFile(entry.path);
  const arr = parseNpy(readBytes(entry.path), entry.path);
  const [height, width, channels] = checkNpyImageHeader(
    { dtype: arr.dtype, shape: arr.shape, fortranOrder: arr.fortranOrder },
    entry.path,
  );
  const d = arr.data;
  const image = d instanceof Uint8Array || d instanceof Float32Array ? d : Float32Array.from(d as Float64Array);
  if (!(image instanceof Uint8Array)) {
    const bad = image.findIndex((v) => Number.isNaN(v));
    if (bad >= 0) throw new Error(`${entry.path}: the image holds NaN values (first at flat index ${bad})`);
  }
  return { path: entry.path, height, width, channels, image, labelHeight, labelWidth, labels };
}
