/**
 * Clips for training the memory path (`train.clip_length` N > 1): N consecutive slices of one label
 * of one volume, starting on a slice that holds the label and running up or down the volume, so
 * both propagation directions are trained (a reversed clip is what reverse propagation sees). One
 * augmentation and box shift per clip; the box comes from the first slice, the ground truth from
 * every slice (all zero where the label is absent: that trains the object-score head).
 *
 * Order and resume follow the slice loader (loader.ts): epoch permutations seeded by (seed, epoch),
 * per-clip draws from one seeded stream whose state the cursor carries, and a clip that cannot be
 * rendered replaced by one drawn from (seed, epoch, position, attempt). Clips are rendered on
 * demand on the main thread: a clip costs a few image resamplings, the model step far more.
 */
import { basename } from 'node:path';
import seedrandom from 'seedrandom';
import { epochPermutation, resolveAugment, type TrainLoaderOptions } from './loader.js';
import { npzSlice, resolveDataEntries, type DataEntry, type SliceData } from './sampling.js';
import { drawParams, IDENTITY, pixelMap, scaledBoxShift, shiftBox, warpImage, warpLabel, type AugmentOptions, type SampleParams } from './transforms.js';
import type { LoaderState } from './types.js';
import { loadNpzVolume } from './volume.js';

/** A batch of clips, flat row-major like `Batch`. */
export interface ClipBatch {
  batchSize: number;
  /** slices per clip, N */
  clipLength: number;
  /** model input resolution S */
  imageSize: number;
  /** low-res mask resolution, S / 4 */
  maskSize: number;
  /** (B, N, S, S, 3) ImageNet-normalized, channels-last, in clip order */
  images: Float32Array;
  /** (B, 4) x0, y0, x1, y1 in input pixels: the prompt on each clip's first slice */
  boxes: Float32Array;
  /** (B, N, S/4, S/4) binary ground truth of the clip's label on each slice */
  masks: Float32Array;
  /** "file.npz#slices=12..15,label=1" */
  sources: string[];
}

/** Every clip of an epoch: volume, first slice, direction (+1 up, -1 down) and label. */
export interface ClipIndex {
  entries: DataEntry[];
  file: Int32Array;
  start: Int32Array;
  step: Int8Array;
  label: Int32Array;
  length: number;
}

export interface ClipLoaderOptions extends Pick<TrainLoaderOptions, 'files' | 'imageSize' | 'batchSize' | 'bboxShift' | 'seed' | 'augment' | 'state' | 'log'> {
  clipLength: number;
  /** bytes of decoded volumes kept in memory (default 1 GiB) */
  cacheBytes?: number;
}

export interface ClipLoader {
  /** slices per clip; also what tells a clip loader from the slice loader */
  readonly clipLength: number;
  /** clips per epoch */
  readonly size: number;
  readonly index: ClipIndex;
  next(): Promise<ClipBatch>;
  /** the cursor after the last batch handed out; JSON-serializable */
  state(): LoaderState;
  /** clips skipped (and replaced) so far */
  skipped(): number;
  close(): Promise<void>;
}

interface ClipCursor {
  version: 1;
  kind: 'clips';
  seed: string;
  clipLength: number;
  samples: number;
  epoch: number;
  position: number;
  rng: seedrandom.State.Arc4;
  skipped: number;
}

const MAX_REPLACEMENTS = 50;

/** A whole volume's slices (labelled or not: clips run past the object's ends). */
type VolumeSlices = SliceData[];

/** An LRU cache of whole volumes, bounded in bytes. */
class VolumeStore {
  private cache = new Map<number, { slices: VolumeSlices; bytes: number }>();
  private bytes = 0;

  constructor(
    readonly entries: DataEntry[],
    readonly cacheBytes: number,
  ) {}

  slices(f: number): VolumeSlices {
    const hit = this.cache.get(f);
    if (hit) {
      this.cache.delete(f);
      this.cache.set(f, hit);
      return hit.slices;
    }
    const entry = this.entries[f];
    if (entry.kind !== 'npz') throw new Error(`${entry.path}: clips need npz volumes; an npy folder holds single 2D images`);
    const v = loadNpzVolume(entry.path);
    const slices = Array.from({ length: v.depth }, (_, z) => npzSlice(v, z, false));
    const bytes = v.imgs.byteLength + v.gts.byteLength;
    this.cache.set(f, { slices, bytes });
    this.bytes += bytes;
    for (const [k, old] of this.cache) {
      if (this.bytes <= this.cacheBytes || k === f) break;
      this.cache.delete(k);
      this.bytes -= old.bytes;
    }
    return slices;
  }
}

/**
 * Every clip of `clipLength` slices whose first slice shows its label at the model's mask
 * resolution (unaugmented), in both directions where the volume is long enough. Reads (and so
 * checks) every file; bad files are reported together.
 */
function buildClipIndex(store: VolumeStore, clipLength: number, imageSize: number): ClipIndex {
  const low = imageSize / 4;
  const rows: Array<[number, number, number, number]> = [];
  const errors: string[] = [];
  store.entries.forEach((_, f) => {
    let slices: VolumeSlices;
    try {
      slices = store.slices(f);
    } catch (err) {
      errors.push((err as Error).message);
      return;
    }
    slices.forEach((s, z) => {
      for (const label of s.labelBoxes.keys()) {
        if (warpLabel(s, label, low, pixelMap(s.labelWidth, s.labelHeight, low, IDENTITY)) === null) continue;
        if (z + clipLength <= slices.length) rows.push([f, z, 1, label]);
        if (z - clipLength + 1 >= 0) rows.push([f, z, -1, label]);
      }
    });
  });
  if (errors.length > 0) throw new Error(`${errors.length} bad data file(s):\n  ${errors.join('\n  ')}`);
  if (rows.length === 0) throw new Error(`no training clips: no volume has ${clipLength} slices from a slice showing a label (lower train.clip_length)`);
  return {
    entries: store.entries,
    file: Int32Array.from(rows, (r) => r[0]),
    start: Int32Array.from(rows, (r) => r[1]),
    step: Int8Array.from(rows, (r) => r[2]),
    label: Int32Array.from(rows, (r) => r[3]),
    length: rows.length,
  };
}

/** "file.npz#slices=12..15,label=1" (a reversed clip: slices=15..12). */
export function clipSource(index: ClipIndex, i: number, clipLength: number): string {
  const z0 = index.start[i];
  return `${basename(index.entries[index.file[i]].path)}#slices=${z0}..${z0 + index.step[i] * (clipLength - 1)},label=${index.label[i]}`;
}

/**
 * Render clip `i` into slot `slot` of the batch: every slice's image and low-res ground truth under
 * one augmentation, and the first slice's shifted box. False when the label is not visible on the
 * first slice after augmentation (nothing to prompt).
 */
function renderClip(store: VolumeStore, index: ClipIndex, i: number, params: SampleParams, maxShift: number, out: ClipBatch, slot: number): boolean {
  const { clipLength: n, imageSize: S, maskSize: low } = out;
  const slices = store.slices(index.file[i]);
  const label = index.label[i];
  const first = slices[index.start[i]];
  const full = warpLabel(first, label, S, pixelMap(first.labelWidth, first.labelHeight, S, params.aug));
  if (!full) return false;
  for (let k = 0; k < n; k++) {
    const s = slices[index.start[i] + index.step[i] * k];
    const frame = slot * n + k;
    const shown = warpLabel(s, label, low, pixelMap(s.labelWidth, s.labelHeight, low, params.aug), out.masks, frame * low * low);
    if (k === 0 && !shown) return false;
    warpImage(s, S, pixelMap(s.width, s.height, S, params.aug), out.images, frame * S * S * 3);
  }
  out.boxes.set(shiftBox(full.box, maxShift, params.shift, S), slot * 4);
  return true;
}

/** The clip loader: indexes (and checks) every volume first, then serves seeded, resumable batches. */
export function createClipLoader(opts: ClipLoaderOptions): ClipLoader {
  const { clipLength: n, imageSize: S, batchSize: B } = opts;
  if (!Number.isInteger(n) || n < 2) throw new Error(`clipLength must be an integer >= 2 (got ${n})`);
  if (!Number.isInteger(S) || S < 8 || S % 4 !== 0) throw new Error(`imageSize must be a multiple of 4 (got ${S})`);
  const log = opts.log ?? ((m: string) => console.warn(m));
  const seed = String(opts.seed);
  const augment: AugmentOptions | null = resolveAugment(opts.augment);
  const maxShift = scaledBoxShift(opts.bboxShift, S);
  const store = new VolumeStore(resolveDataEntries(opts.files), opts.cacheBytes ?? 1 << 30);
  const index = buildClipIndex(store, n, S);
  const size = index.length;

  let cursor: ClipCursor;
  let rng: seedrandom.StatefulPRNG<seedrandom.State.Arc4>;
  if (opts.state) {
    const s = opts.state as unknown as ClipCursor;
    if (s.version !== 1 || s.kind !== 'clips' || !s.rng) throw new Error('loader state: not a clip loader state (was the run trained on single slices?)');
    if (s.clipLength !== n) throw new Error(`loader state: saved with clip_length ${s.clipLength}, this run uses ${n}`);
    if (s.samples !== size) throw new Error(`loader state: saved with ${s.samples} clips, the data now has ${size}; resume needs the same data`);
    if (s.seed !== seed) throw new Error(`loader state: saved with seed '${s.seed}', this run uses '${seed}'`);
    cursor = structuredClone(s);
    rng = seedrandom('', { state: s.rng });
  } else {
    rng = seedrandom(`${seed}/clips`, { state: true });
    cursor = { version: 1, kind: 'clips', seed, clipLength: n, samples: size, epoch: 0, position: 0, rng: rng.state(), skipped: 0 };
  }
  let perm = epochPermutation(seed, cursor.epoch, size);
  const warned = new Set<string>();
  let closed = false;

  const nextBatch = (): ClipBatch => {
    const low = S / 4;
    const batch: ClipBatch = {
      batchSize: B,
      clipLength: n,
      imageSize: S,
      maskSize: low,
      images: new Float32Array(B * n * S * S * 3),
      boxes: new Float32Array(B * 4),
      masks: new Float32Array(B * n * low * low),
      sources: [],
    };
    for (let slot = 0; slot < B; slot++) {
      if (cursor.position >= size) {
        cursor.epoch++;
        cursor.position = 0;
        perm = epochPermutation(seed, cursor.epoch, size);
      }
      let clip = perm[cursor.position];
      let params = drawParams(rng, augment);
      for (let attempt = 0; !renderClip(store, index, clip, params, maxShift, batch, slot); attempt++) {
        const src = clipSource(index, clip, n);
        cursor.skipped++;
        if (!warned.has(src)) {
          warned.add(src);
          log(`warning: skipping clip ${src}: its label is not visible on the first slice at ${S}px after augmentation`);
        }
        if (attempt >= MAX_REPLACEMENTS) throw new Error(`no renderable clip after ${MAX_REPLACEMENTS} replacements; see the warnings above`);
        const r = seedrandom(`${seed}/replace/${cursor.epoch}/${cursor.position}/${attempt}`);
        clip = Math.floor(r() * size);
        params = drawParams(r, augment);
      }
      batch.sources.push(clipSource(index, clip, n));
      cursor.position++;
    }
    cursor.rng = rng.state();
    return batch;
  };

  return {
    clipLength: n,
    size,
    index,
    async next() {
      if (closed) throw new Error('data loader is closed');
      return nextBatch();
    },
    state: () => structuredClone(cursor) as unknown as LoaderState,
    skipped: () => cursor.skipped,
    async close() {
      closed = true;
    },
  };
}
