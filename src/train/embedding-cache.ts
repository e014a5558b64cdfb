/**
 * The embedding cache. With the image encoder frozen and no augmentation that changes pixels, a
 * slice's encoder outputs (the FPN levels the mask decoder reads) are the same every epoch: they are
 * computed once, kept on disk under the run directory and read back, so later epochs run only the
 * prompt encoder and the mask decoder.
 *
 * One entry holds one slice's levels as safetensors, named by a hash of its key: the data file's
 * content hash, the slice index, the image size and a hash of the encoder's config and weights.
 * Entries are written to a temporary file and renamed into place, carry a checksum of their data
 * (a damaged entry is warned about, removed and recomputed), and the least recently used ones are
 * evicted beyond the size cap.
 */
import * as tf from '@tensorflow/tfjs-core';
import { createHash } from 'node:crypto';
import { createReadStream, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Batch, SliceRef } from '../data/types.js';
import { encodeSafetensors, parseSafetensorsWithMetadata, type HostTensor } from '../io/safetensors.js';
import type { SAM2Base } from '../model/sam2.js';
import { ConfigError, type TrainConfig } from './config.js';
import type { ModelSetup } from './setup.js';

/** Bump when what an entry holds changes meaning (the slice rendering, the cached outputs). */
const ENTRY_FORMAT = 1;
const ENTRY_SUFFIX = '.safetensors';
export const EMBEDDING_CACHE_DIR = 'embedding-cache';

/** The frozen encoder: images (B, S, S, 3) -> its outputs, batch first. */
export type EncodeImages = (images: tf.Tensor4D) => tf.Tensor[];

export interface EmbeddingCacheOptions {
  dir: string;
  /** size cap of the entries in bytes */
  maxBytes: number;
  imageSize: number;
  /** identifies the encoder's config and weights (`encoderHash`) */
  encoderHash: string;
  encode: EncodeImages;
  /** warnings go here (default console.warn) */
  log?: (msg: string) => void;
}

export interface EmbeddingCacheStats {
  /** slices read from the cache */
  hits: number;
  /** slices encoded (not in the cache yet, or damaged there) */
  misses: number;
  evicted: number;
  damaged: number;
}

const sha256 = (data: string | Uint8Array) => createHash('sha256').update(data).digest('hex');

function checksum(levels: HostTensor[]): string {
  const h = createHash('sha256');
  for (const l of levels) h.update(new Uint8Array(l.data.buffer, l.data.byteOffset, l.data.byteLength));
  return h.digest('hex');
}

const levelName = (i: number) => `level${i}`;
const entryName = (key: string) => `${sha256(key).slice(0, 40)}${ENTRY_SUFFIX}`;

export class EmbeddingCache {
  readonly stats: EmbeddingCacheStats = { hits: 0, misses: 0, evicted: 0, damaged: 0 };
  /** entry file name -> bytes, least recently used first */
  private entries = new Map<string, number>();
  private bytes = 0;
  private fileHashes = new Map<string, Promise<string>>();
  private warnedTooLarge = false;
  private readonly log: (msg: string) => void;

  constructor(private readonly opts: EmbeddingCacheOptions) {
    this.log = opts.log ?? ((m) => console.warn(m));
    mkdirSync(opts.dir, { recursive: true });
    const found: { name: string; bytes: number; mtime: number }[] = [];
    for (const name of readdirSync(opts.dir)) {
      const path = join(opts.dir, name);
      // a temporary file left by a run that stopped mid-write
      if (name.startsWith('.')) rmSync(path, { force: true });
      else if (name.endsWith(ENTRY_SUFFIX)) {
        const st = statSync(path);
        found.push({ name, bytes: st.size, mtime: st.mtimeMs });
      }
    }
    for (const e of found.sort((a, b) => a.mtime - b.mtime)) this.add(e.name, e.bytes);
    this.evict();
  }

  /** Entries and bytes on disk. */
  get size(): { entries: number; bytes: number } {
    return { entries: this.entries.size, bytes: this.bytes };
  }

  /** The key of a slice's entry, as JSON. */
  async keyOf(ref: SliceRef): Promise<string> {
    let file = this.fileHashes.get(ref.path);
    if (!file) {
      file = hashFile(ref.path);
      this.fileHashes.set(ref.path, file);
    }
    return JSON.stringify({ format: ENTRY_FORMAT, file: await file, slice: ref.slice, imageSize: this.opts.imageSize, encoder: this.opts.encoderHash });
  }

  /** The file an entry with this key is kept in. */
  entryPath(key: string): string {
    return join(this.opts.dir, entryName(key));
  }

  /**
   * The encoder outputs of the batch's samples, batch first: read from the cache where it holds
   * the slice, encoded from `batch.images` (and stored) where not. Each slice is encoded once
   * however many of the batch's samples (labels) come from it.
   */
  async features(batch: Batch): Promise<tf.Tensor[]> {
    if (batch.slices.length !== batch.batchSize) throw new Error(`embedding cache: the batch names the slices of ${batch.slices.length} of its ${batch.batchSize} samples`);
    const keys = await Promise.all(batch.slices.map((r) => this.keyOf(r)));
    const levels = new Map<string, HostTensor[]>();
    const toEncode = new Map<string, number>(); // key -> the first sample showing that slice
    for (const [i, key] of keys.entries()) {
      if (levels.has(key) || toEncode.has(key)) continue;
      const cached = await this.read(key);
      if (cached) {
        levels.set(key, cached);
        this.stats.hits++;
      } else toEncode.set(key, i);
    }
    if (toEncode.size > 0) {
      const encoded = await this.encode(batch, [...toEncode.values()]);
      let j = 0;
      for (const key of toEncode.keys()) {
        levels.set(key, encoded[j++]);
        await this.write(key, levels.get(key)!);
        this.stats.misses++;
      }
    }
    return stackSamples(keys.map((k) => levels.get(k)!));
  }

  /** Encode the images of the given samples; per sample its levels without the batch axis. */
  private async encode(batch: Batch, samples: number[]): Promise<HostTensor[][]> {
    const S = batch.imageSize;
    const pixels = S * S * 3;
    const images = new Float32Array(samples.length * pixels);
    samples.forEach((s, j) => images.set(batch.images.subarray(s * pixels, (s + 1) * pixels), j * pixels));
    const input = tf.tensor4d(images, [samples.length, S, S, 3]);
    const outs = this.opts.encode(input);
    try {
      const data = await Promise.all(outs.map((t) => t.data<'float32'>()));
      return samples.map((_, j) =>
        outs.map((t, l) => {
          const per = t.size / samples.length;
          return { data: data[l].slice(j * per, (j + 1) * per), shape: t.shape.slice(1) };
        }),
      );
    } finally {
      tf.dispose([input, ...outs]);
    }
  }

  /** An entry's levels, or null when absent or damaged (a damaged one is removed). */
  private async read(key: string): Promise<HostTensor[] | null> {
    const name = entryName(key);
    const path = join(this.opts.dir, name);
    const bytes = this.entries.get(name);
    if (bytes === undefined) return null;
    let levels: HostTensor[];
    try {
      const { tensors, metadata } = parseSafetensorsWithMetadata(await readFile(path), path);
      levels = [...tensors.keys()].map((_, i) => tensors.get(levelName(i))!);
      if (metadata.key !== key) throw new Error(`${path}: holds another key (${metadata.key})`);
      if (levels.length === 0 || levels.some((l) => l === undefined)) throw new Error(`${path}: levels missing (${[...tensors.keys()].join(', ')})`);
      if (metadata.checksum !== checksum(levels)) throw new Error(`${path}: data does not match its checksum`);
    } catch (err) {
      this.stats.damaged++;
      this.log(`warning: embedding cache: ${(err as Error).message}; removing the entry and encoding the slice again`);
      this.remove(name);
      return null;
    }
    // least recently used first, on disk too (mtime), so a later run evicts in the same order
    this.entries.delete(name);
    this.entries.set(name, bytes);
    const now = new Date();
    await utimes(path, now, now);
    return levels;
  }

  /**
   * Store an entry: written beside its place and renamed there, so a reader never sees half an
   * entry. Not fsynced: a power loss may leave a damaged entry, which its checksum catches.
   */
  private async write(key: string, levels: HostTensor[]): Promise<void> {
    const tensors = new Map(levels.map((l, i) => [levelName(i), l]));
    const bytes = encodeSafetensors(tensors, { key, checksum: checksum(levels) });
    if (bytes.byteLength > this.opts.maxBytes) {
      if (!this.warnedTooLarge) {
        this.log(`warning: embedding cache: one slice's embeddings take ${(bytes.byteLength / 1e6).toFixed(1)} MB, more than train.embedding_cache.max_gb; nothing is cached`);
        this.warnedTooLarge = true;
      }
      return;
    }
    const name = entryName(key);
    const path = join(this.opts.dir, name);
    const tmp = join(this.opts.dir, `.${name}.tmp-${process.pid}`);
    try {
      await writeFile(tmp, bytes);
      await rename(tmp, path);
    } catch (err) {
      await rm(tmp, { force: true });
      throw new Error(`${path}: cannot write the embedding cache entry (${(err as Error).message})`);
    }
    this.remove(name, false);
    this.add(name, bytes.byteLength);
    this.evict();
  }

  private add(name: string, bytes: number): void {
    this.entries.set(name, bytes);
    this.bytes += bytes;
  }

  private remove(name: string, fromDisk = true): void {
    const bytes = this.entries.get(name);
    if (bytes === undefined) return;
    this.entries.delete(name);
    this.bytes -= bytes;
    if (fromDisk) rmSync(join(this.opts.dir, name), { force: true });
  }

  /** Remove the least recently used entries until the cache fits its cap. */
  private evict(): void {
    for (const name of this.entries.keys()) {
      if (this.bytes <= this.opts.maxBytes) break;
      this.remove(name);
      this.stats.evicted++;
    }
  }
}

async function hashFile(path: string): Promise<string> {
  const h = createHash('sha256');
  try {
    for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  } catch (err) {
    throw new Error(`${path}: cannot read the data file to key the embedding cache (${(err as Error).message})`);
  }
  return h.digest('hex');
}

/** Per-sample levels -> one batch-first tensor per level. */
function stackSamples(samples: HostTensor[][]): tf.Tensor[] {
  return samples[0].map((first, l) => {
    const per = first.data.length;
    const data = new Float32Array(samples.length * per);
    samples.forEach((levels, i) => data.set(levels[l].data, i * per));
    return tf.tensor(data, [samples.length, ...first.shape]);
  });
}

/** A hash of the image encoder's config and weights: entries made by another encoder never match. */
export async function encoderHash(model: SAM2Base, params: Map<string, tf.Variable>): Promise<string> {
  const h = createHash('sha256').update(JSON.stringify(model.config.image_encoder));
  const names = [...params.keys()].filter((k) => k.startsWith('image_encoder.')).sort();
  for (const name of names) {
    const v = params.get(name)!;
    const data = await v.data<'float32'>();
    h.update(`${name}:${v.shape.join('x')}:`).update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  return h.digest('hex');
}

/** Why a run cannot reuse embeddings across epochs and what would let it, or null when it can. */
export function embeddingCacheBlocker(config: TrainConfig, trainable: Iterable<string>): { why: string; fix: string } | null {
  const encoderParam = [...trainable].find((k) => k.startsWith('image_encoder.'));
  if (encoderParam) return { why: `the image encoder trains (model.trainable includes ${encoderParam})`, fix: 'leave image_encoder out of model.trainable' };
  const a = config.data.augment;
  const pixelAugment = [a.flip_h && 'flip_h', a.flip_v && 'flip_v', a.max_rotation > 0 && 'max_rotation'].filter(Boolean);
  if (pixelAugment.length > 0) return { why: `data.augment changes the pixels (${pixelAugment.join(', ')})`, fix: 'turn off data.augment flip_h, flip_v and max_rotation' };
  return null;
}

/**
 * The run's embedding cache per train.embedding_cache, or undefined when it is off; says which on
 * the console. `enabled: true` where the cache cannot work is an error saying why.
 */
export async function openEmbeddingCache(config: TrainConfig, run: ModelSetup, runDir: string, say: (msg: string) => void): Promise<EmbeddingCache | undefined> {
  const { enabled, max_gb } = config.train.embedding_cache;
  if (enabled === false) {
    say('embedding cache: off (train.embedding_cache.enabled: false)');
    return undefined;
  }
  const blocker = embeddingCacheBlocker(config, run.trainable.keys());
  if (blocker) {
    if (enabled === true) {
      throw new ConfigError(
        `train.embedding_cache.enabled is true, but image embeddings cannot be reused across epochs: ${blocker.why}. ` +
          `To cache them ${blocker.fix}; or set train.embedding_cache.enabled: auto.`,
      );
    }
    say(`embedding cache: off (${blocker.why})`);
    return undefined;
  }
  const { model, ops } = run;
  const cache = new EmbeddingCache({
    dir: join(runDir, EMBEDDING_CACHE_DIR),
    maxBytes: max_gb * 1e9,
    imageSize: run.modelConfig.image_size,
    encoderHash: await encoderHash(model, run.params),
    encode: (images) => tf.tidy(() => model.imageEncoder.forward(ops, images).backboneFpn),
  });
  const { entries, bytes } = cache.size;
  say(`embedding cache: on, ${join(runDir, EMBEDDING_CACHE_DIR)} (${entries} entries, ${(bytes / 1e9).toFixed(2)} of ${max_gb} GB)`);
  return cache;
}
