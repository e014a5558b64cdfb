/** The data pipeline's throughput, for `npm run bench`. */
import { createTrainLoader } from './loader.js';

export interface ThroughputOptions {
  files: string | string[];
  imageSize: number;
  batchSize?: number;
  /** batches to time (default 10), after a warm-up epoch (at most 20 batches) that fills the caches */
  batches?: number;
  augment?: boolean;
  workers?: number;
  prefetch?: number;
  bboxShift?: number;
  seed?: number;
}

export interface ThroughputResult {
  samplesPerSec: number;
  msPerSample: number;
  /** time to index (load and validate) the data */
  indexMs: number;
  samples: number;
}

/** Samples/s the loader delivers to a consumer that does nothing else (for `npm run bench`). */
export async function measureLoaderThroughput(opts: ThroughputOptions): Promise<ThroughputResult> {
  const batchSize = opts.batchSize ?? 8;
  const batches = opts.batches ?? 10;
  const t0 = performance.now();
  const loader = createTrainLoader({
    files: opts.files,
    imageSize: opts.imageSize,
    batchSize,
    bboxShift: opts.bboxShift ?? 5,
    seed: opts.seed ?? 0,
    augment: opts.augment ?? true,
    workers: opts.workers ?? 0,
    prefetch: opts.prefetch,
    log: () => undefined,
  });
  const indexMs = performance.now() - t0;
  try {
    const warmup = Math.min(20, Math.max(1, Math.ceil(loader.size / batchSize)));
    for (let i = 0; i < warmup; i++) await loader.next(); // caches, JIT, workers starting
    const t1 = performance.now();
    let samples = 0;
    for (let i = 0; i < batches; i++) samples += (await loader.next()).batchSize;
    const ms = performance.now() - t1;
    return { samplesPerSec: (samples * 1000) / ms, msPerSample: ms / samples, indexMs, samples };
  } finally {
    await loader.close();
  }
}
