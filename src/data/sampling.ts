/**
 * The index of 2D training samples, (file, slice, label) for every slice that holds a label, built up
 * front so that bad files are reported before training starts; and the cache that serves slices.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import {
  checkNpyImageHeader,
  isNpyFolder,
  listNpyFolder,
  loadNpyLabels,
  loadNpyPair,
  readNpyHeader,
  type NpyPairEntry,
} from './npy-folder.js';
import { loadNpzVolume, type LabelArray, type Volume } from './volume.js';

export type DataEntry = { kind: 'npz'; path: string } | NpyPairEntry;

/** One 2D image plane for the transforms. */
export interface ImagePlane {
  /** (H,W[,C]) row-major */
  image: Uint8Array | Float32Array;
  /** multiply pixels by this to get 0..1 (1/255 for uint8) */
  imageScale: number;
  width: number;
  height: number;
  channels: 1 | 3;
}

/** One 2D label plane, covering the same field of view as its image (possibly at another resolution). */
export interface LabelPlane {
  /** (labelHeight, labelWidth) row-major */
  labels: LabelArray;
  labelWidth: number;
  labelHeight: number;
  /** each non-zero label present (ascending) → its bounding box on the label grid */
  labelBoxes: Map<number, LabelBox>;
}

/** One 2D slice, ready for the transforms. Image and labels may differ in resolution (npy folders). */
export interface SliceData extends ImagePlane, LabelPlane {}

/** [x0, y0, x1, y1], inclusive pixel indices */
export type LabelBox = [number, number, number, number];

/** The loaded, label-bearing slices of one file. */
export interface FileData {
  slices: Map<number, SliceData>;
  bytes: number;
}

export interface SampleIndex {
  entries: DataEntry[];
  /** per sample: which entry, slice and label */
  file: Int32Array;
  slice: Int32Array;
  label: Int32Array;
  length: number;
  /** (slice, label) pairs left out at indexing (too small to see at the resolution asked for) */
  tooSmall: number;
}

/**
 * Expand a data spec (a directory, a file, or a list of them) into entries: a directory of npz files
 * (sorted by name), an npy folder (`imgs/` + `gts/`), or single .npz files.
 */
export function resolveDataEntries(spec: string | string[]): DataEntry[] {
  const out: DataEntry[] = [];
  for (const item of Array.isArray(spec) ? spec : [spec]) {
    const p = resolve(item);
    if (!existsSync(p)) throw new Error(`${item}: file not found`);
    if (statSync(p).isDirectory()) {
      if (isNpyFolder(p)) {
        out.push(...listNpyFolder(p));
        continue;
      }
      const npz = readdirSync(p)
        .filter((n) => n.endsWith('.npz'))
        .sort();
      if (npz.length === 0) throw new Error(`${item}: directory has no .npz files (nor imgs/ and gts/ npy folders)`);
      for (const n of npz) out.push({ kind: 'npz', path: join(p, n) });
    } else if (p.endsWith('.npz')) {
      out.push({ kind: 'npz', path: p });
    } else {
      throw new Error(`${item}: not an .npz file or a data directory`);
    }
  }
  if (out.length === 0) throw new Error('no data files given');
  return out;
}

/** Scan one label plane: each non-zero label's bounding box [x0, y0, x1, y1] (inclusive), labels ascending. */
export function labelBoxesOf(labels: LabelArray, start: number, width: number, height: number): Map<number, LabelBox> {
  const boxes = new Map<number, LabelBox>();
  for (let y = 0; y < height; y++) {
    const row = start + y * width;
    let prev = 0;
    let box: LabelBox | undefined;
    for (let x = 0; x < width; x++) {
      const v = labels[row + x];
      if (v === 0) continue;
      if (v !== prev || !box) {
        box = boxes.get(v);
        if (!box) {
          box = [x, y, x, y];
          boxes.set(v, box);
        }
        prev = v;
      }
      if (x < box[0]) box[0] = x;
      if (x > box[2]) box[2] = x;
      if (y > box[3]) box[3] = y;
    }
  }
  return new Map([...boxes].sort((a, b) => a[0] - b[0]));
}

function npyLabelBoxes(entry: NpyPairEntry, labels: LabelArray, width: number, height: number): Map<number, LabelBox> {
  const boxes = labelBoxesOf(labels, 0, width, height);
  if (boxes.size === 0) throw new Error(`${entry.gtPath}: empty label map (all zero, nothing to train on)`);
  return boxes;
}

/**
 * What indexing needs of an entry: its label planes by slice. An npz volume is loaded whole (it has
 * to be decompressed anyway) and stays in the store; of an npy pair only the small label map and the
 * image's header are read, so indexing a large npy folder does not read every image.
 */
function scanEntry(store: SliceStore, f: number): Map<number, LabelPlane> {
  const entry = store.entries[f];
  if (entry.kind === 'npz') return store.file(f).slices;
  const { labels, width, height } = loadNpyLabels(entry);
  checkNpyImageHeader(readNpyHeader(entry.path), entry.path);
  return new Map([[0, { labels, labelWidth: width, labelHeight: height, labelBoxes: npyLabelBoxes(entry, labels, width, height) }]]);
}

/** Slice z of an npz volume: its own copy of the arrays (`copy`, so the volume can be freed) or views. */
export function npzSlice(v: Volume, z: number, copy: boolean, labelBoxes?: Map<number, LabelBox>): SliceData {
  const plane = v.height * v.width;
  const imgPlane = plane * v.channels;
  const take = <A extends Uint8Array | LabelArray>(a: A, n: number) => (copy ? a.slice(z * n, (z + 1) * n) : a.subarray(z * n, (z + 1) * n)) as A;
  const labels = take(v.gts, plane);
  return {
    image: take(v.imgs, imgPlane),
    imageScale: 1 / 255,
    width: v.width,
    height: v.height,
    channels: v.channels,
    labels,
    labelWidth: v.width,
    labelHeight: v.height,
    labelBoxes: labelBoxes ?? labelBoxesOf(labels, 0, v.width, v.height),
  };
}

/** Load one entry, keeping only slices that hold a label (copied out, so the full volume can be freed). */
export function loadFileData(entry: DataEntry): FileData {
  const slices = new Map<number, SliceData>();
  let bytes = 0;
  if (entry.kind === 'npy') {
    const p = loadNpyPair(entry);
    const labelBoxes = npyLabelBoxes(entry, p.labels, p.labelWidth, p.labelHeight);
    slices.set(0, {
      image: p.image,
      imageScale: p.image instanceof Uint8Array ? 1 / 255 : 1,
      width: p.width,
      height: p.height,
      channels: p.channels,
      labels: p.labels,
      labelWidth: p.labelWidth,
      labelHeight: p.labelHeight,
      labelBoxes,
    });
    bytes = p.image.byteLength + p.labels.byteLength;
    return { slices, bytes };
  }
  const v = loadNpzVolume(entry.path);
  const plane = v.height * v.width;
  for (let z = 0; z < v.depth; z++) {
    const labelBoxes = labelBoxesOf(v.gts, z * plane, v.width, v.height);
    if (labelBoxes.size === 0) continue;
    const slice = npzSlice(v, z, v.depth > 1, labelBoxes);
    bytes += slice.image.byteLength + slice.labels.byteLength;
    slices.set(z, slice);
  }
  return { slices, bytes };
}

/** An LRU cache of loaded files, bounded in bytes. */
export class SliceStore {
  private cache = new Map<number, FileData>();
  private bytes = 0;

  constructor(
    readonly entries: DataEntry[],
    readonly cacheBytes = 1 << 30,
  ) {}

  file(fileIdx: number): FileData {
    let data = this.cache.get(fileIdx);
    if (data) {
      this.cache.delete(fileIdx);
      this.cache.set(fileIdx, data);
      return data;
    }
    data = loadFileData(this.entries[fileIdx]);
    this.cache.set(fileIdx, data);
    this.bytes += data.bytes;
    for (const [k, old] of this.cache) {
      if (this.bytes <= this.cacheBytes || k === fileIdx) break;
      this.cache.delete(k);
      this.bytes -= old.bytes;
    }
    return data;
  }

  /** Drop every cached file. */
  clear(): void {
    this.cache.clear();
    this.bytes = 0;
  }

  slice(fileIdx: number, slice: number): SliceData {
    const s = this.file(fileIdx).slices.get(slice);
    if (!s) throw new Error(`${this.entries[fileIdx].path}: slice ${slice} no longer holds a label`);
    return s;
  }
}

export interface IndexOptions {
  /** 'error' (default): throw one error naming every bad file; 'warn': log and leave them out */
  onBadFile?: 'error' | 'warn';
  /** keep only the (slice, label) pairs this accepts (checked while the file is loaded) */
  keep?: (slice: LabelPlane, label: number) => boolean;
  log?: (msg: string) => void;
}

/**
 * Build the sample index, reading (and so validating) every file once; loaded npz volumes stay in
 * `store`. npy pairs are checked by their label map and image header.
 */
export function buildSampleIndex(store: SliceStore, opts: IndexOptions = {}): SampleIndex {
  const file: number[] = [];
  const slice: number[] = [];
  const label: number[] = [];
  const errors: string[] = [];
  let dropped = 0;
  store.entries.forEach((_, f) => {
    let planes: Map<number, LabelPlane>;
    try {
      planes = scanEntry(store, f);
    } catch (err) {
      errors.push((err as Error).message);
      return;
    }
    const zs = [...planes.keys()].sort((a, b) => a - b);
    for (const z of zs) {
      const sd = planes.get(z)!;
      for (const l of sd.labelBoxes.keys()) {
        if (opts.keep && !opts.keep(sd, l)) {
          dropped++;
          continue;
        }
        file.push(f);
        slice.push(z);
        label.push(l);
      }
    }
  });
  if (errors.length > 0) {
    const msg = `${errors.length} bad data file(s):\n  ${errors.join('\n  ')}`;
    if ((opts.onBadFile ?? 'error') === 'error') throw new Error(msg);
    (opts.log ?? console.warn)(`warning: ${msg}\n  (left out)`);
  }
  if (file.length === 0) throw new Error('no training samples: no file holds a (large enough) labelled slice');
  return {
    entries: store.entries,
    file: Int32Array.from(file),
    slice: Int32Array.from(slice),
    label: Int32Array.from(label),
    length: file.length,
    tooSmall: dropped,
  };
}

/** "file.npz#slice=12,label=1" (npy pairs: "name.npy#label=1"). */
export function sampleSource(index: SampleIndex, i: number): string {
  const e = index.entries[index.file[i]];
  return e.kind === 'npy'
    ? `${basename(e.path)}#label=${index.label[i]}`
    : `${basename(e.path)}#slice=${index.slice[i]},label=${index.label[i]}`;
}
