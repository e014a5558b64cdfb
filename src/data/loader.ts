/**
 * The training data loader: a deterministic, resumable, prefetching stream of batches.
 *
 * Order: epoch e visits every sample once in a permutation drawn from seedrandom(`${seed}/shuffle/${e}`).
 * Per-sample randomness (box shifts, flips, rotation) comes from one seedrandom stream (`state: true`).
 * The cursor {epoch, position, rng state} is snapshotted after each batch is planned, so `state()`
 * describes exactly the batches handed out so far, however far prefetching has run ahead; a loader
 * restored from it continues the same sequence bit for bit.
 *
 * A sample that fails later (file gone or corrupt, label lost by resizing) is warned about, counted,
 * and replaced by a sample drawn from a generator derived from (seed, epoch, position, attempt), so
 * a failure changes nothing else in the stream. Prompts beyond boxes (clicks) are drawn the same
 * way, from (seed, epoch, position, attempt): the box-only stream stays what it was.
 */
import { Worker } from 'node:worker_threads';
import seedrandom from 'seedrandom';
import {
  SliceStore,
  buildSampleIndex,
  resolveDataEntries,
  sampleSource,
  type DataEntry,
  type SampleIndex,
  type LabelPlane,
} from './sampling.js';
import {
  DEFAULT_AUGMENT,
  IDENTITY,
  UNPERTURBED,
  drawParams,
  pixelMap,
  renderSample,
  scaledBoxShift,
  warpLabel,
  type AugmentOptions,
  type SampleParams,
} from './transforms.js';
import { drawPrompt, pointSlots, type PromptSampling } from './prompts.js';
import type { Batch, LoaderState } from './types.js';

export interface TrainLoaderOptions {
  /** a data directory (npz files or an npy folder), an .npz file, or a list of them */
  files: string | string[];
  /** model input resolution S (a multiple of 4) */
  imageSize: number;
  batchSize: number;
  /** maximum outward box shift at 256 scale (MedSAM's bbox_shift); scaled to imageSize */
  bboxShift: number;
  seed: number | string;
  /** true: DEFAULT_AUGMENT; false/undefined: none; or the options */
  augment?: boolean | Partial<AugmentOptions>;
  /** which prompts samples get; given, batches carry `points` and `fullMasks` (absent: the box alone) */
  prompts?: PromptSampling;
  /** each epoch's order balanced across labels (balancedEpochOrder) instead of a plain permutation */
  balanceLabels?: boolean;
  /** batches prepared ahead of the consumer (default max(2, workers); 0 = on demand) */
  prefetch?: number;
  /** worker threads preparing batches (default 0: on the main thread, in setImmediate-sized chunks) */
  workers?: number;
  /** a state() saved earlier: continue from there */
  state?: LoaderState;
  /** bytes of decoded slices kept in memory (default 1 GiB, per thread) */
  cacheBytes?: number;
  /** bad files at indexing time: 'error' (default) or 'warn' (left out) */
  onBadFile?: 'error' | 'warn';
  /** warnings go here (default console.warn) */
  log?: (msg: string) => void;
}

export interface TrainLoader {
  next(): Promise<Batch>;
  /** the cursor after the last batch handed out by next(); JSON-serializable */
  state(): LoaderState;
  /** samples skipped (and replaced) so far */
  skipped(): number;
  /** batches already prepared and waiting for next() */
  prefetched(): number;
  close(): Promise<void>;
  /** samples per epoch */
  readonly size: number;
  readonly index: SampleIndex;
}

interface PlannedItem {
  sample: number;
  params: SampleParams;
  epoch: number;
  position: number;
}

interface CursorState {
  version: 1;
  seed: string;
  samples: number;
  epoch: number;
  position: number;
  rng: seedrandom.State.Arc4;
  skipped: number;
}

interface Produced {
  batch: Batch;
  skipped: number;
}

const MAX_REPLACEMENTS = 50;

export function resolveAugment(a: TrainLoaderOptions['augment']): AugmentOptions | null {
  if (!a) return null;
  return a === true ? { ...DEFAULT_AUGMENT } : { ...DEFAULT_AUGMENT, ...a };
}

function checkSize(imageSize: number, batchSize: number): void {
  if (!Number.isInteger(imageSize) || imageSize < 8 || imageSize % 4 !== 0) {
    throw new Error(`imageSize must be a multiple of 4 (got ${imageSize})`);
  }
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer (got ${batchSize})`);
}

/** The permutation of samples for one epoch (Fisher–Yates), a pure function of (seed, epoch). */
export function epochPermutation(seed: string, epoch: number, n: number): Int32Array {
  const rng = seedrandom(`${seed}/shuffle/${epoch}`);
  const perm = new Int32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm;
}

/**
 * An epoch of `labels.length` samples balanced across label values, a pure function of (seed,
 * epoch): positions go in blocks of one draw per label (in a shuffled order); each label draws
 * from its own shuffled samples, reshuffled when used up, so rare labels repeat within an epoch.
 */
export function balancedEpochOrder(seed: string, epoch: number, labels: Int32Array): Int32Array {
  const rng = seedrandom(`${seed}/balance/${epoch}`);
  const shuffle = (a: number[]) => {
    for (let i = a.length - 1; i > 0; i--) {
      const j = Math.floor(rng() * (i + 1));
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  };
  const groups = new Map<number, number[]>();
  labels.forEach((l, i) => (groups.get(l) ?? groups.set(l, []).get(l)!).push(i));
  const pools = [...groups.keys()].sort((a, b) => a - b).map((l) => ({ samples: groups.get(l)!, order: [] as number[], at: 0 }));
  const out = new Int32Array(labels.length);
  let block: number[] = [];
  for (let i = 0; i < out.length; i++) {
    if (i % pools.length === 0) block = shuffle(pools.map((_, k) => k));
    const pool = pools[block[i % pools.length]];
    if (pool.at === pool.order.length) {
      pool.order = shuffle(pool.samples.slice());
      pool.at = 0;
    }
    out[i] = pool.order[pool.at++];
  }
  return out;
}

/** Everything needed to turn planned items into a batch; lives on the main thread or in a worker. */
export interface ProducerConfig {
  entries: DataEntry[];
  file: Int32Array;
  slice: Int32Array;
  label: Int32Array;
  imageSize: number;
  maxShift: number;
  seed: string;
  augment: AugmentOptions | null;
  /** null: the box is the prompt */
  prompts: PromptSampling | null;
  /** validation scored at the label's native resolution: batches carry `native`, and labels need only show at the input size */
  native: boolean;
  /** samples the index left out */
  tooSmall: number;
  cacheBytes: number;
}

export class BatchProducer {
  readonly store: SliceStore;
  readonly index: SampleIndex;
  private badFiles = new Map<number, string>();
  private warned = new Set<string>();

  constructor(
    readonly cfg: ProducerConfig,
    private readonly warn: (msg: string) => void,
    store?: SliceStore,
  ) {
    this.store = store ?? new SliceStore(cfg.entries, cfg.cacheBytes);
    this.index = { entries: cfg.entries, file: cfg.file, slice: cfg.slice, label: cfg.label, length: cfg.file.length, tooSmall: cfg.tooSmall };
  }

  /** Render sample `s`, or say why not (never throws); `file`: the whole file is unusable. */
  private tryRender(s: number, params: SampleParams, buf: Batch, slot: number): { why: string; file: boolean } | null {
    const f = this.index.file[s];
    const known = this.badFiles.get(f);
    if (known) return { why: known, file: true };
    try {
      const src = this.store.slice(f, this.index.slice[s]);
      if (renderSample(src, this.index.label[s], this.cfg.imageSize, this.cfg.maxShift, params, buf, slot, !this.cfg.native)) {
        if (buf.native) {
          const label = this.index.label[s];
          buf.native.push({ width: src.labelWidth, height: src.labelHeight, mask: Uint8Array.from(src.labels, (v) => (v === label ? 1 : 0)) });
        }
        return null;
      }
      return { why: `label ${this.index.label[s]} not visible at ${this.cfg.imageSize}px after resizing/augmentation`, file: false };
    } catch (err) {
      const why = (err as Error).message;
      this.badFiles.set(f, why);
      return { why, file: true };
    }
  }

  private warnOnce(key: string, msg: string): void {
    if (this.warned.has(key)) return;
    this.warned.add(key);
    this.warn(msg);
  }

  /**
   * Produce a batch from planned items. `replace`: draw a replacement for a failed sample (training);
   * otherwise it is just left out (validation). Yields to the event loop between samples when `yieldFn`.
   */
  async produce(items: PlannedItem[], replace: boolean, yieldFn?: () => Promise<void>): Promise<Produced> {
    const S = this.cfg.imageSize;
    const low = S / 4;
    const B = items.length;
    const batch: Batch = {
      batchSize: B,
      imageSize: S,
      maskSize: low,
      images: new Float32Array(B * S * S * 3),
      boxes: new Float32Array(B * 4),
      masks: new Float32Array(B * low * low),
      labelValues: new Int32Array(B),
      sources: [],
      slices: [],
    };
    if (this.cfg.native) batch.native = [];
    const prompts = this.cfg.prompts;
    const slots = prompts ? pointSlots(prompts) : 0;
    if (prompts) {
      batch.points = { slots, coords: new Float32Array(B * slots * 2), labels: new Float32Array(B * slots) };
      batch.fullMasks = new Float32Array(B * S * S);
    }
    let skipped = 0;
    let slot = 0;
    for (const item of items) {
      if (yieldFn) await yieldFn();
      let sample = item.sample;
      let params = item.params;
      for (let attempt = 0; ; attempt++) {
        const failed = this.tryRender(sample, params, batch, slot);
        const src = sampleSource(this.index, sample);
        if (failed === null) {
          if (prompts) {
            const rng = seedrandom(`${this.cfg.seed}/prompt/${item.epoch}/${item.position}/${attempt}`);
            const gt = batch.fullMasks!.subarray(slot * S * S, (slot + 1) * S * S);
            drawPrompt(rng, prompts, batch.boxes.subarray(slot * 4, slot * 4 + 4), gt, S, batch.points!.coords, batch.points!.labels, slot * slots);
          }
          batch.labelValues[slot] = this.index.label[sample];
          batch.sources.push(src);
          batch.slices.push({ path: this.index.entries[this.index.file[sample]].path, slice: this.index.slice[sample] });
          slot++;
          break;
        }
        skipped++;
        // one warning per bad file, or per sample whose label got lost
        this.warnOnce(failed.file ? failed.why : src, `warning: skipping sample ${src}: ${failed.why}`);
        if (!replace || attempt >= MAX_REPLACEMENTS) break;
        const rng = seedrandom(`${this.cfg.seed}/replace/${item.epoch}/${item.position}/${attempt}`);
        sample = Math.floor(rng() * this.index.length);
        params = drawParams(rng, this.cfg.augment);
      }
    }
    if (slot === 0) throw new Error(`no loadable sample among ${B} planned ones (and their replacements); see the warnings above`);
    if (slot < B) {
      batch.batchSize = slot;
      batch.images = batch.images.slice(0, slot * S * S * 3);
      batch.boxes = batch.boxes.slice(0, slot * 4);
      batch.masks = batch.masks.slice(0, slot * low * low);
      batch.labelValues = batch.labelValues.slice(0, slot);
      if (batch.points) {
        batch.points = { slots, coords: batch.points.coords.slice(0, slot * slots * 2), labels: batch.points.labels.slice(0, slot * slots) };
        batch.fullMasks = batch.fullMasks!.slice(0, slot * S * S);
      }
    }
    return { batch, skipped };
  }
}

const setImmediateP = () => new Promise<void>((r) => setImmediate(r));

/** Runs a BatchProducer in a worker thread (src/data/loader-worker.ts, started by loader-worker-entry.mjs). */
class ProducerWorker {
  private worker: Worker;
  private pending = new Map<number, { resolve: (p: Produced) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private failed: Error | null = null;

  constructor(cfg: ProducerConfig, warn: (msg: string) => void) {
    this.worker = new Worker(new URL('./loader-worker-entry.mjs', import.meta.url), { workerData: cfg });
    // Keeps the process alive only while a batch is in flight, so a forgotten close() cannot hang exit.
    this.worker.unref();
    this.worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'warn') {
        warn(m.message);
        return;
      }
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (this.pending.size === 0) this.worker.unref();
      if (m.type === 'error') p.reject(new Error(m.message));
      else p.resolve({ batch: m.batch, skipped: m.skipped });
    });
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => this.fail(new Error(`data loader worker exited (code ${code})`)));
  }

  private fail(err: Error): void {
    this.failed ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  produce(items: PlannedItem[]): Promise<Produced> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.ref();
      this.worker.postMessage({ type: 'batch', id, items });
    });
  }

  /**
   * Stop the thread. Not awaited: awaiting terminate() of an idle (unref'd) worker was seen to let
   * the process exit early with the await unsettled; the thread ends on its own time.
   */
  close(): void {
    this.fail(new Error('data loader closed'));
    void this.worker.terminate().catch(() => undefined);
  }
}

export type WorkerMessage =
  | { type: 'warn'; message: string }
  | { type: 'batch'; id: number; batch: Batch; skipped: number }
  | { type: 'error'; id: number; message: string };

/** Build the index (validating every file) and the main-thread producer. */
function prepare(opts: {
  files: string | string[];
  imageSize: number;
  maxShift: number;
  seed: string;
  augment: AugmentOptions | null;
  prompts?: PromptSampling;
  native?: boolean;
  cacheBytes?: number;
  onBadFile?: 'error' | 'warn';
  log: (msg: string) => void;
}): BatchProducer {
  const entries = resolveDataEntries(opts.files);
  const cacheBytes = opts.cacheBytes ?? 1 << 30;
  const store = new SliceStore(entries, cacheBytes);
  // Leave out labels that the low-res ground truth cannot show even unaugmented (a few pixels at the
  // ends of an organ): they would only be skipped again every epoch. Scored at native resolution,
  // a label only has to show at the input size (its box).
  const visibleAt = opts.native ? opts.imageSize : opts.imageSize / 4;
  const keep = (slice: LabelPlane, label: number) =>
    warpLabel(slice, label, visibleAt, pixelMap(slice.labelWidth, slice.labelHeight, visibleAt, IDENTITY)) !== null;
  const index = buildSampleIndex(store, { onBadFile: opts.onBadFile, log: opts.log, keep });
  const cfg: ProducerConfig = {
    entries,
    file: index.file,
    slice: index.slice,
    label: index.label,
    imageSize: opts.imageSize,
    maxShift: opts.maxShift,
    seed: opts.seed,
    augment: opts.augment,
    prompts: opts.prompts ?? null,
    native: opts.native ?? false,
    tooSmall: index.tooSmall,
    cacheBytes,
  };
  return new BatchProducer(cfg, opts.log, store);
}

/**
 * Create the training loader. Indexes (and so validates) every file first: bad files throw here,
 * before training starts, with one line per file.
 */
export function createTrainLoader(opts: TrainLoaderOptions): TrainLoader {
  checkSize(opts.imageSize, opts.batchSize);
  const log = opts.log ?? ((m: string) => console.warn(m));
  const seed = String(opts.seed);
  const augment = resolveAugment(opts.augment);
  const producer = prepare({
    files: opts.files,
    imageSize: opts.imageSize,
    maxShift: scaledBoxShift(opts.bboxShift, opts.imageSize),
    seed,
    augment,
    prompts: opts.prompts,
    cacheBytes: opts.cacheBytes,
    onBadFile: opts.onBadFile,
    log,
  });
  const index = producer.index;
  const n = index.length;
  const B = opts.batchSize;
  const prefetch = Math.max(0, Math.floor(opts.prefetch ?? Math.max(2, opts.workers ?? 0)));

  // Planning cursor (runs ahead with prefetch).
  let epoch = 0;
  let position = 0;
  let rng: seedrandom.StatefulPRNG<seedrandom.State.Arc4>;
  let delivered: CursorState;
  if (opts.state) {
    const s = opts.state as unknown as CursorState;
    if (s.version !== 1 || typeof s.epoch !== 'number' || typeof s.position !== 'number' || !s.rng) {
      throw new Error('loader state: not a state saved by this loader version');
    }
    if (s.samples !== n) {
      throw new Error(`loader state: saved with ${s.samples} samples, the data now has ${n}; resume needs the same data`);
    }
    if (s.seed !== seed) throw new Error(`loader state: saved with seed '${s.seed}', this run uses '${seed}'`);
    epoch = s.epoch;
    position = s.position;
    rng = seedrandom('', { state: s.rng });
    delivered = structuredClone(s);
  } else {
    rng = seedrandom(`${seed}/augment`, { state: true });
    delivered = { version: 1, seed, samples: n, epoch, position, rng: rng.state(), skipped: 0 };
  }
  const epochOrder = (e: number) => (opts.balanceLabels ? balancedEpochOrder(seed, e, index.label) : epochPermutation(seed, e, n));
  let perm = epochOrder(epoch);

  const plan = (): { items: PlannedItem[]; cursor: Omit<CursorState, 'skipped'> } => {
    const items: PlannedItem[] = [];
    for (let b = 0; b < B; b++) {
      if (position >= n) {
        epoch++;
        position = 0;
        perm = epochOrder(epoch);
      }
      items.push({ sample: perm[position], params: drawParams(rng, augment), epoch, position });
      position++;
    }
    return { items, cursor: { version: 1, seed, samples: n, epoch, position, rng: rng.state() } };
  };

  const workers: ProducerWorker[] = [];
  for (let w = 0; w < (opts.workers ?? 0); w++) workers.push(new ProducerWorker(producer.cfg, log));
  if (workers.length > 0) producer.store.clear(); // the workers load (and cache) on their own
  let planned = 0;
  let chain: Promise<unknown> = Promise.resolve();
  let closed = false;
  const queue: { result: Promise<Produced>; cursor: Omit<CursorState, 'skipped'>; done: boolean }[] = [];

  const schedule = () => {
    const { items, cursor } = plan();
    let result: Promise<Produced>;
    if (workers.length > 0) {
      result = workers[planned % workers.length].produce(items);
    } else {
      // Main thread: one batch after another, yielding between samples so the caller keeps running.
      result = chain.then(() => producer.produce(items, true, setImmediateP));
      chain = result.catch(() => undefined);
    }
    const entry = { result, cursor, done: false };
    result.then(
      () => (entry.done = true),
      () => undefined, // observed in next()
    );
    planned++;
    queue.push(entry);
  };

  return {
    size: n,
    index,
    async next() {
      if (closed) throw new Error('data loader is closed');
      if (queue.length === 0) schedule();
      const head = queue.shift()!;
      while (queue.length < prefetch) schedule();
      const { batch, skipped } = await head.result;
      delivered = { ...head.cursor, skipped: delivered.skipped + skipped };
      return batch;
    },
    state() {
      return structuredClone(delivered) as unknown as LoaderState;
    },
    skipped() {
      return delivered.skipped;
    },
    prefetched() {
      return queue.filter((q) => q.done).length;
    },
    async close() {
      closed = true;
      queue.length = 0;
      for (const w of workers) w.close();
    },
  };
}

export interface ValSetOptions {
  files: string | string[];
  imageSize: number;
  /** at most this many samples (a seeded choice, in index order); all when the data has fewer */
  maxSamples: number;
  seed: number | string;
  /** samples per batch of the returned list (default 8) */
  batchSize?: number;
  /** score at the label's native resolution: batches carry `native`; labels need only show at the input size */
  native?: boolean;
  cacheBytes?: number;
  onBadFile?: 'error' | 'warn';
  log?: (msg: string) => void;
}

export interface ValSet {
  batches: Batch[];
  /** (slice, label) pairs left out: too small to see at the scored resolution, or failing to load */
  tooSmall: number;
  unloadable: number;
}

/** A fixed validation set: unperturbed boxes (no shift), no augmentation, the same every call. */
export async function buildValSet(opts: ValSetOptions): Promise<ValSet> {
  const batchSize = opts.batchSize ?? 8;
  checkSize(opts.imageSize, batchSize);
  const log = opts.log ?? ((m: string) => console.warn(m));
  const seed = String(opts.seed);
  const producer = prepare({ ...opts, maxShift: 0, seed, augment: null, log });
  const n = producer.index.length;
  let chosen: number[];
  if (n <= opts.maxSamples) chosen = Array.from({ length: n }, (_, i) => i);
  else {
    chosen = Array.from(epochPermutation(`${seed}/val`, 0, n).subarray(0, opts.maxSamples)).sort((a, b) => a - b);
  }
  const batches: Batch[] = [];
  let unloadable = 0;
  for (let i = 0; i < chosen.length; i += batchSize) {
    const items = chosen.slice(i, i + batchSize).map((sample) => ({ sample, params: UNPERTURBED, epoch: 0, position: 0 }));
    try {
      const produced = await producer.produce(items, false);
      batches.push(produced.batch);
      unloadable += produced.skipped;
    } catch {
      // every sample of this group failed; each was warned about
      unloadable += items.length;
    }
  }
  if (batches.length === 0) throw new Error('validation set: no loadable sample');
  return { batches, tooSmall: producer.index.tooSmall, unloadable };
}
