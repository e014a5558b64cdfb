import { readFileSync } from 'node:fs';
import { unzipSync, zipSync } from 'fflate';
import { dump, parse, type NpyArray, type TypedArray } from 'npyjs';

export type { NpyArray, TypedArray };

/** Parse one .npy buffer; `source` names the file in errors. */
export function parseNpy(bytes: Uint8Array, source: string): NpyArray {
  try {
    // copy into an exact-size ArrayBuffer: a small Node Buffer is a view into a shared pool
    const copy = Uint8Array.prototype.slice.call(bytes).buffer as ArrayBuffer;
    const arr = parse(copy);
    if (arr.fortranOrder) throw new Error('Fortran-ordered arrays are not supported; save with np.ascontiguousarray');
    return arr;
  } catch (err) {
    throw new Error(`${source}: not a valid .npy array (${(err as Error).message})`);
  }
}

/** Read every array of an .npz archive (stored or deflate-compressed). */
export function readNpz(path: string): Record<string, NpyArray> {
  let entries: Record<string, Uint8Array>;
  try {
    entries = unzipSync(readFileSync(path));
  } catch (err) {
    throw new Error(`${path}: not a readable npz (zip) file (${(err as Error).message})`);
  }
  const out: Record<string, NpyArray> = {};
  for (const [name, bytes] of Object.entries(entries)) {
    if (!name.endsWith('.npy')) continue;
    out[name.slice(0, -4)] = parseNpy(bytes, `${path}:${name}`);
  }
  return out;
}

/** Write arrays as an .npz archive; `compress` deflates like numpy's savez_compressed. */
export function encodeNpz(arrays: Record<string, { data: TypedArray; shape: number[] }>, compress = true): Uint8Array {
  const files: Record<string, Uint8Array> = {};
  for (const [name, { data, shape }] of Object.entries(arrays)) {
    files[`${name}.npy`] = new Uint8Array(dump(data, shape));
  }
  // a fixed timestamp keeps the archive bytes a function of the arrays alone
  return zipSync(files, { level: compress ? 6 : 0, mtime: '1980-01-01T00:00:00Z' });
}
