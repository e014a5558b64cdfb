/**
 * The embedding cache (src/train/embedding-cache.ts): decoder outputs from cached encoder features
 * equal the full forward; the second epoch reads every slice from the cache; the key follows the
 * file content, slice, size and encoder weights; the size cap evicts the least recently used
 * entry; a damaged entry is recomputed; and a decoder-only training run with the cache takes the
 * same steps as without it.
 */
import * as tf from '@tensorflow/tfjs-core';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createTrainLoader } from '../src/data/loader.js';
import type { Batch } from '../src/data/types.js';
import { resolveModelConfig } from '../src/model/config.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { initParams, toTfParams } from '../src/model/weights.js';
import { loadConfig, parseConfig, type TrainConfig } from '../src/train/config.js';
import { EMBEDDING_CACHE_DIR, EmbeddingCache, embeddingCacheBlocker, encoderHash, openEmbeddingCache } from '../src/train/embedding-cache.js';
import { setupModel } from '../src/train/setup.js';
import { train } from '../src/train/train.js';
import { SMALL_MODEL_CONFIG, tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

const S = 64;
const data = tinyData();
const tmp = mkdtempSync(join(tmpdir(), 'medtune-embcache-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function tinyModel(seed = 3) {
  const model = new SAM2Base(resolveModelConfig({ ...SMALL_MODEL_CONFIG, image_size: S }));
  const params = toTfParams(initParams(model.paramSpecs(), seed));
  const ops = new TfOps(params);
  const encode = (images: tf.Tensor4D) => tf.tidy(() => model.imageEncoder.forward(ops, images).backboneFpn);
  return { model, params, ops, encode };
}

const { model, params, ops, encode } = tinyModel();
const hash = await encoderHash(model, params);
const warnings: string[] = [];
const openCache = (dir: string, maxBytes = 1e9) => new EmbeddingCache({ dir, maxBytes, imageSize: S, encoderHash: hash, encode, log: (m) => warnings.push(m) });

/** Every batch of `epochs` epochs of unaugmented samples, `batchSize` at a time (the epoch size must divide). */
async function unaugmentedBatches(batchSize: number, epochs = 1): Promise<{ batches: Batch[]; perEpoch: number }> {
  const loader = createTrainLoader({ files: data.train, imageSize: S, batchSize, bboxShift: 5, seed: 1, augment: false, prefetch: 0, log: () => undefined });
  const perEpoch = loader.size / batchSize;
  if (!Number.isInteger(perEpoch)) throw new Error(`batch ${batchSize} does not divide an epoch of ${loader.size}`);
  const batches: Batch[] = [];
  for (let i = 0; i < perEpoch * epochs; i++) batches.push(await loader.next());
  await loader.close();
  return { batches, perEpoch };
}

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
}

describe('embedding cache', () => {
  it('decoder outputs from cached features equal the full forward, computed and read back', async () => {
    const { batches } = await unaugmentedBatches(1);
    const batch = batches.find((b) => b.batchSize === 1)!;
    // the batch names the slice of each sample, matching its source
    const [ref] = batch.slices;
    expect(`${basename(ref.path)}#slice=${ref.slice}`).toBe(batch.sources[0].split(',')[0]);

    const cache = openCache(join(tmp, 'equal'));
    const images = tf.tensor4d(batch.images, [1, S, S, 3]);
    const boxes = tf.tensor2d(batch.boxes, [1, 4]);
    const full = model.predictFromBoxes(ops, images, boxes);
    for (const expectHit of [false, true]) {
      const features = await cache.features(batch);
      expect(cache.stats).toMatchObject({ hits: expectHit ? 1 : 0, misses: 1 });
      const fromCache = model.predictFromFeatures(ops, features, boxes);
      expect(maxAbsDiff(fromCache.masks, full.masks)).toBeLessThanOrEqual(1e-6);
      expect(maxAbsDiff(fromCache.iouPred, full.iouPred)).toBeLessThanOrEqual(1e-6);
      tf.dispose([...features, ...Object.values(fromCache)]);
    }
    tf.dispose([images, boxes, ...Object.values(full)]);
  });

  it('batches from worker threads name the same slices', async () => {
    const opts = { files: data.train, imageSize: S, batchSize: 4, bboxShift: 5, seed: 1, augment: false, prefetch: 0, log: () => undefined };
    const main = createTrainLoader(opts);
    const threaded = createTrainLoader({ ...opts, workers: 1 });
    const [a, b] = [await main.next(), await threaded.next()];
    await Promise.all([main.close(), threaded.close()]);
    expect(b.slices).toEqual(a.slices);
    expect(b.slices.map((r) => `${basename(r.path)}#slice=${r.slice}`)).toEqual(b.sources.map((src) => src.split(',')[0]));
  });

  it('encodes each slice once in the first epoch and reads every one from the cache in the second', async () => {
    const { batches, perEpoch } = await unaugmentedBatches(2, 2);
    const slicesOf = (bs: Batch[]) => new Set(bs.flatMap((b) => b.slices.map((r) => `${r.path}#${r.slice}`)));
    const uniqueSlices = slicesOf(batches.slice(0, perEpoch)).size;
    const samples = batches.slice(0, perEpoch).reduce((n, b) => n + b.batchSize, 0);
    // several labels share a slice: fewer slices than samples
    expect(uniqueSlices).toBeLessThan(samples);
    const dir = join(tmp, 'epochs');
    const cache = openCache(dir);
    const before = tf.memory().numTensors;
    for (const [i, b] of batches.entries()) {
      tf.dispose(await cache.features(b));
      if (i === perEpoch - 1) {
        expect(cache.stats.misses).toBe(uniqueSlices);
        expect(cache.stats.hits + cache.stats.misses).toBeLessThanOrEqual(samples);
      }
    }
    expect(cache.stats.misses).toBe(uniqueSlices);
    expect(cache.stats.hits).toBeGreaterThanOrEqual(samples);
    expect(tf.memory().numTensors).toBe(before);
    expect(readdirSync(dir).filter((n) => n.endsWith('.safetensors'))).toHaveLength(uniqueSlices);
    // a new process (resume) finds the entries: all hits from the start
    const reopened = openCache(dir);
    expect(reopened.size.entries).toBe(uniqueSlices);
    for (const b of batches.slice(0, perEpoch)) tf.dispose(await reopened.features(b));
    expect(reopened.stats.misses).toBe(0);
  });

  it('keys an entry by file content, slice, image size and encoder weights', async () => {
    const file = join(tmp, 'volume.npz');
    copyFileSync(join(data.train, readdirSync(data.train).find((n) => n.endsWith('.npz'))!), file);
    const cache = openCache(join(tmp, 'keys'));
    const key = await cache.keyOf({ path: file, slice: 1 });
    expect(await cache.keyOf({ path: file, slice: 1 })).toBe(key);
    expect(await cache.keyOf({ path: file, slice: 2 })).not.toBe(key);

    const changed = join(tmp, 'volume-changed.npz');
    const bytes = readFileSync(file);
    bytes[bytes.length - 1] ^= 1;
    writeFileSync(changed, bytes);
    copyFileSync(file, join(tmp, 'volume-copy.npz'));
    // same content under another name: the same entry; changed content: another
    expect(await cache.keyOf({ path: join(tmp, 'volume-copy.npz'), slice: 1 })).toBe(key);
    expect(await cache.keyOf({ path: changed, slice: 1 })).not.toBe(key);

    const otherSize = new EmbeddingCache({ dir: join(tmp, 'keys'), maxBytes: 1e9, imageSize: 2 * S, encoderHash: hash, encode });
    expect(await otherSize.keyOf({ path: file, slice: 1 })).not.toBe(key);

    const same = tinyModel(3);
    const other = tinyModel(4);
    expect(await encoderHash(same.model, same.params)).toBe(hash);
    const otherHash = await encoderHash(other.model, other.params);
    expect(otherHash).not.toBe(hash);
    const otherWeights = new EmbeddingCache({ dir: join(tmp, 'keys'), maxBytes: 1e9, imageSize: S, encoderHash: otherHash, encode });
    expect(await otherWeights.keyOf({ path: file, slice: 1 })).not.toBe(key);
    // a decoder weight does not move the encoder's hash
    const decoderMoved = tinyModel(3);
    decoderMoved.params.get('sam_mask_decoder.iou_token.weight')!.assign(tf.onesLike(decoderMoved.params.get('sam_mask_decoder.iou_token.weight')!));
    expect(await encoderHash(decoderMoved.model, decoderMoved.params)).toBe(hash);
    tf.dispose([...same.params.values(), ...other.params.values(), ...decoderMoved.params.values()]);
  });

  it('evicts the least recently used entries beyond the size cap', async () => {
    const { batches } = await unaugmentedBatches(1);
    // three samples from three different slices
    const bySlice = new Map(batches.map((b) => [`${b.slices[0].path}#${b.slices[0].slice}`, b]));
    const [a, b, c] = [...bySlice.values()];
    const probe = openCache(join(tmp, 'probe'));
    tf.dispose(await probe.features(a));
    const entryBytes = probe.size.bytes;

    const dir = join(tmp, 'cap');
    const cache = openCache(dir, 2.5 * entryBytes);
    const pathOf = async (x: Batch) => cache.entryPath(await cache.keyOf(x.slices[0]));
    tf.dispose(await cache.features(a));
    tf.dispose(await cache.features(b));
    tf.dispose(await cache.features(a)); // a is now the more recently used
    tf.dispose(await cache.features(c));
    expect(cache.stats).toMatchObject({ misses: 3, hits: 1, evicted: 1 });
    expect(cache.size.entries).toBe(2);
    expect(cache.size.bytes).toBeLessThanOrEqual(2.5 * entryBytes);
    expect(existsSync(await pathOf(b))).toBe(false);
    expect(existsSync(await pathOf(a))).toBe(true);
    expect(existsSync(await pathOf(c))).toBe(true);
    // a lower cap on reopening evicts down to it, oldest first
    const smaller = openCache(dir, 1.5 * entryBytes);
    expect(smaller.size.entries).toBe(1);
    expect(existsSync(await pathOf(c))).toBe(true);
  });

  it('detects a damaged entry, warns, and encodes the slice again', async () => {
    const { batches } = await unaugmentedBatches(1);
    const batch = batches[0];
    const dir = join(tmp, 'damaged');
    const reference = await openCache(dir).features(batch);
    const path = openCache(dir).entryPath(await openCache(dir).keyOf(batch.slices[0]));
    const good = readFileSync(path);
    const damages: Array<[string, (buf: Buffer) => Buffer]> = [
      ['a flipped bit in the data', (buf) => {
        const out = Buffer.from(buf);
        out[out.length - 5] ^= 0x10;
        return out;
      }],
      ['cut short', (buf) => buf.subarray(0, buf.length - 100)],
      ['garbage', () => Buffer.from('not an entry')],
    ];
    for (const [what, damage] of damages) {
      writeFileSync(path, damage(good));
      warnings.length = 0;
      const cache = openCache(dir);
      const features = await cache.features(batch);
      expect(cache.stats, what).toMatchObject({ damaged: 1, misses: 1, hits: 0 });
      expect(warnings.join('\n'), what).toMatch(new RegExp(`embedding cache: ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
      features.forEach((f, i) => expect(maxAbsDiff(f, reference[i]), what).toBe(0));
      tf.dispose(features);
      // rewritten whole
      expect(Buffer.compare(readFileSync(path), good), what).toBe(0);
    }
    tf.dispose(reference);
  });
});

describe('embedding cache in training', () => {
  const decoderOnly = (enabled: 'auto' | boolean): TrainConfig => {
    const c = tinyConfig(data, { max_steps: 8, val_every: 0, save_every: 0, embedding_cache: { enabled } });
    return parseConfig({ ...c, model: { ...c.model, trainable: ['sam_mask_decoder'] }, data: { ...c.data, augment: { flip_h: false } } });
  };

  it('says why it cannot be on, and refuses `enabled: true` then', async () => {
    const base = tinyConfig(data); // trains the encoder, flips
    expect(embeddingCacheBlocker(base, ['image_encoder.trunk.pos_embed', 'sam_mask_decoder.iou_token.weight'])?.why).toMatch(/image encoder trains.*image_encoder\.trunk\.pos_embed/);
    expect(embeddingCacheBlocker(base, ['sam_mask_decoder.iou_token.weight'])?.why).toMatch(/data\.augment changes the pixels \(flip_h\)/);
    expect(embeddingCacheBlocker(decoderOnly('auto'), ['sam_mask_decoder.iou_token.weight'])).toBeNull();

    const said: string[] = [];
    const runDir = tmpRunDir('cache-refused');
    const strict = parseConfig({ ...base, train: { ...base.train, embedding_cache: { enabled: true } } });
    const run = setupModel(strict, runDir, undefined, () => undefined);
    await expect(openEmbeddingCache(strict, run, runDir, (m) => said.push(m))).rejects.toThrow(/enabled is true.*image encoder trains.*To cache them leave image_encoder out of model\.trainable/);
    expect(await openEmbeddingCache(base, run, runDir, (m) => said.push(m))).toBeUndefined();
    expect(said).toEqual([expect.stringMatching(/^embedding cache: off \(the image encoder trains/)]);
    tf.dispose([...run.params.values()]);
    run.optimizer.dispose();
  });

  it('configs/demo-decoder-only.yaml can cache; a wrong setting names its key', () => {
    const config = loadConfig(join(import.meta.dirname, '..', 'configs', 'demo-decoder-only.yaml'), { overrides: ['model.checkpoint=null'] });
    expect(config.train.embedding_cache).toEqual({ enabled: true, max_gb: 2 });
    const run = setupModel(config, tmpRunDir('demo-decoder-only'), undefined, () => undefined);
    expect(embeddingCacheBlocker(config, run.trainable.keys())).toBeNull();
    tf.dispose([...run.params.values()]);
    run.optimizer.dispose();
    const base = tinyConfig(data);
    expect(() => parseConfig({ ...base, train: { ...base.train, embedding_cache: { enabled: 'sometimes' } } })).toThrow(/train\.embedding_cache\.enabled/);
  });

  it('a decoder-only run with the cache takes the same steps as without it', async () => {
    const runs: Record<string, { losses: number[]; valDice: number[]; lines: string[]; tensors: number[] }> = {};
    for (const enabled of ['auto', false] as const) {
      const lines: string[] = [];
      const tensors: number[] = [];
      const runDir = tmpRunDir(`cache-${enabled}`);
      const log = console.log;
      console.log = (m: string) => lines.push(String(m));
      try {
        const r = await train({ config: decoderOnly(enabled), runDir, handleSignals: false, progress: false, onStep: (s) => tensors.push(s.numTensors) });
        runs[String(enabled)] = { losses: r.losses, valDice: r.valDice.map((v) => v.dice), lines, tensors };
      } finally {
        console.log = log;
      }
      const entries = existsSync(join(runDir, EMBEDDING_CACHE_DIR)) ? readdirSync(join(runDir, EMBEDDING_CACHE_DIR)) : [];
      expect(entries.length > 0).toBe(enabled === 'auto');
    }
    const on = runs.auto;
    const off = runs.false;
    expect(on.lines).toContainEqual(expect.stringMatching(/^embedding cache: on, .*embedding-cache \(0 entries/));
    expect(off.lines).toContain('embedding cache: off (train.embedding_cache.enabled: false)');
    expect(on.losses).toHaveLength(8);
    on.losses.forEach((l, i) => expect(Math.abs(l - off.losses[i]) / Math.abs(off.losses[i])).toBeLessThanOrEqual(1e-6));
    // validation (before training and at the end) decodes from the cache too
    expect(on.valDice).toHaveLength(2);
    on.valDice.forEach((d, i) => expect(Math.abs(d - off.valDice[i])).toBeLessThanOrEqual(1e-6));
    expect(new Set(on.tensors).size).toBe(1);
  });
});
