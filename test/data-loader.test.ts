import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump } from 'npyjs';
import { afterAll, describe, expect, it } from 'vitest';
import { buildValSet, createTrainLoader, type TrainLoaderOptions } from '../src/data/loader.js';
import { measureLoaderThroughput } from '../src/data/loader-bench.js';
import { SliceStore, resolveDataEntries } from '../src/data/sampling.js';
import { generateSyntheticVolumes } from '../src/data/synthetic.js';
import { IDENTITY, pixelMap, warpLabel } from '../src/data/transforms.js';
import type { Batch } from '../src/data/types.js';

const tmp = mkdtempSync(join(tmpdir(), 'medtune-loader-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const dataDir = join(tmp, 'data');
const files = generateSyntheticVolumes(dataDir, { count: 3, depth: 6, size: 48, seed: 7 });

const base: TrainLoaderOptions = { files: dataDir, imageSize: 32, batchSize: 5, bboxShift: 20, seed: 42, augment: true, log: () => undefined };

async function take(loader: { next(): Promise<Batch> }, n: number): Promise<Batch[]> {
  const out: Batch[] = [];
  for (let i = 0; i < n; i++) out.push(await loader.next());
  return out;
}

/** Bitwise equality of two batch lists. */
function expectSameBatches(a: Batch[], b: Batch[]): void {
  expect(a.length).toBe(b.length);
  a.forEach((x, i) => {
    const y = b[i];
    expect(y.sources).toEqual(x.sources);
    expect(y.batchSize).toBe(x.batchSize);
    for (const k of ['images', 'boxes', 'masks'] as const) {
      expect(Buffer.compare(new Uint8Array(x[k].buffer), new Uint8Array(y[k].buffer)), `${k} of batch ${i}`).toBe(0);
    }
  });
}

describe('train loader', () => {
  it('batches have the contract shapes and content', async () => {
    const loader = createTrainLoader(base);
    const [b] = await take(loader, 1);
    await loader.close();
    expect(b.batchSize).toBe(5);
    expect(b.imageSize).toBe(32);
    expect(b.maskSize).toBe(8);
    expect(b.images.length).toBe(5 * 32 * 32 * 3);
    expect(b.masks.length).toBe(5 * 8 * 8);
    expect(b.boxes.length).toBe(20);
    expect(b.sources[0]).toMatch(/^synthetic_00\d\.npz#slice=\d+,label=[123]$/);
    for (let i = 0; i < 5; i++) {
      const m = b.masks.subarray(i * 64, (i + 1) * 64);
      expect(m.some((v) => v === 1)).toBe(true);
      expect(m.every((v) => v === 0 || v === 1)).toBe(true);
      const [x0, y0, x1, y1] = b.boxes.subarray(i * 4, i * 4 + 4);
      expect(0 <= x0 && x0 <= x1 && x1 <= 32 && 0 <= y0 && y0 <= y1 && y1 <= 32).toBe(true);
    }
  });

  it('same seed → same order and boxes; another seed differs', async () => {
    const a = createTrainLoader(base);
    const b = createTrainLoader(base);
    const c = createTrainLoader({ ...base, seed: 43 });
    const [ba, bb, bc] = await Promise.all([take(a, 4), take(b, 4), take(c, 4)]);
    await Promise.all([a.close(), b.close(), c.close()]);
    expectSameBatches(ba, bb);
    expect(bc.flatMap((x) => x.sources)).not.toEqual(ba.flatMap((x) => x.sources));
  });

  it('every epoch visits every sample once, reshuffled per epoch', async () => {
    const probe = createTrainLoader({ ...base, batchSize: 1 });
    const n = probe.size;
    await probe.close();
    const loader = createTrainLoader({ ...base, batchSize: n, augment: false, prefetch: 0 });
    const [e0, e1] = (await take(loader, 2)).map((b) => b.sources);
    await loader.close();
    expect(new Set(e0).size).toBe(n);
    expect([...e1].sort()).toEqual([...e0].sort());
    expect(e1).not.toEqual(e0);
    expect(loader.state()).toMatchObject({ epoch: 1, position: n });
  });

  it('restoring a saved state continues the exact same sequence (bitwise), whatever ran ahead', async () => {
    const first = createTrainLoader({ ...base, prefetch: 3 });
    await take(first, 5);
    const saved = JSON.parse(JSON.stringify(first.state()));
    const continued = await take(first, 3);
    await first.close();

    const resumed = createTrainLoader({ ...base, prefetch: 1, state: saved });
    const again = await take(resumed, 3);
    await resumed.close();
    expectSameBatches(continued, again);
    expect(saved).toMatchObject({ epoch: 0, position: 25, skipped: 0 });

    expect(() => createTrainLoader({ ...base, state: { ...saved, samples: 3 } })).toThrow(/saved with 3 samples/);
    expect(() => createTrainLoader({ ...base, seed: 1, state: saved })).toThrow(/saved with seed '42'/);
  });

  it('worker threads produce the same batches as the main thread', async () => {
    const main = createTrainLoader({ ...base, workers: 0 });
    const threaded = createTrainLoader({ ...base, workers: 2, prefetch: 3 });
    const [a, b] = [await take(main, 4), await take(threaded, 4)];
    const state = threaded.state();
    await Promise.all([main.close(), threaded.close()]);
    expectSameBatches(a, b);
    expect(state).toEqual(main.state());
  });

  it('prefetch prepares batches ahead without blocking the event loop', async () => {
    const loader = createTrainLoader({ ...base, prefetch: 2 });
    await loader.next();
    expect(loader.prefetched()).toBe(0);
    // Timers keep firing while the next batches are prepared in setImmediate-sized chunks.
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const t0 = Date.now();
    while (loader.prefetched() < 2 && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 1));
    clearInterval(timer);
    expect(loader.prefetched()).toBe(2);
    expect(ticks).toBeGreaterThan(0);
    const t1 = performance.now();
    await loader.next();
    expect(performance.now() - t1).toBeLessThan(50); // ready: no work left for this call
    await loader.close();
  });

  it('a sample that fails later is warned about, skipped, counted and replaced, without throwing', async () => {
    const dir = join(tmp, 'breaks');
    mkdirSync(dir, { recursive: true });
    const copies = files.map((_, i) => join(dir, `v${i}.npz`));
    const run = async () => {
      const warnings: string[] = [];
      for (const [i, f] of files.entries()) copyFileSync(f, copies[i]);
      // cacheBytes 1: nothing stays cached, so the corrupted file is read again mid-run
      const loader = createTrainLoader({ ...base, files: dir, cacheBytes: 1, log: (m) => warnings.push(m) });
      writeFileSync(copies[1], 'garbage');
      const batches = await take(loader, 6);
      await loader.close();
      return { batches, warnings, skipped: loader.skipped(), state: loader.state() };
    };
    const r1 = await run();
    expect(r1.skipped).toBeGreaterThan(0);
    expect(r1.state).toMatchObject({ skipped: r1.skipped });
    expect(r1.warnings.length).toBeGreaterThan(0);
    const fileWarnings = r1.warnings.filter((w) => w.startsWith('warning: skipping'));
    expect(fileWarnings).toHaveLength(1); // once per bad file, however many of its samples come up
    expect(fileWarnings[0]).toMatch(/warning: skipping sample v1\.npz#slice=\d+,label=\d: .*v1\.npz: not a readable npz/);
    for (const b of r1.batches) {
      expect(b.batchSize).toBe(5);
      expect(b.sources.every((s) => !s.startsWith('v1.npz'))).toBe(true);
    }
    // replacements are deterministic too
    const r2 = await run();
    expectSameBatches(r1.batches, r2.batches);
    expect(r2.skipped).toBe(r1.skipped);
  });

  it('bad files stop the loader before training, naming each', () => {
    expect(() => createTrainLoader({ ...base, files: [files[0], join(tmp, 'missing.npz')] })).toThrow(/missing\.npz: file not found/);
    expect(() => createTrainLoader({ ...base, imageSize: 30 })).toThrow(/multiple of 4/);
  });
});

describe('npy folder through the loader', () => {
  it('indexes from label maps and headers, loads images on demand', async () => {
    const dir = join(tmp, 'npy');
    mkdirSync(join(dir, 'imgs'), { recursive: true });
    mkdirSync(join(dir, 'gts'), { recursive: true });
    for (const name of ['a', 'b']) {
      // 64x64x3 image in [0,1]: bright square where the 16x16 label map has label 1
      const img = new Float32Array(64 * 64 * 3);
      const gt = new Uint8Array(16 * 16);
      const off = name === 'a' ? 2 : 8;
      for (let y = off; y < off + 6; y++) {
        for (let x = off; x < off + 5; x++) {
          gt[y * 16 + x] = 1;
          for (let yy = y * 4; yy < y * 4 + 4; yy++) for (let xx = x * 4; xx < x * 4 + 4; xx++) img.fill(1, (yy * 64 + xx) * 3, (yy * 64 + xx) * 3 + 3);
        }
      }
      writeFileSync(join(dir, 'imgs', `${name}.npy`), new Uint8Array(dump(img, [64, 64, 3])));
      writeFileSync(join(dir, 'gts', `${name}.npy`), new Uint8Array(dump(gt, [16, 16])));
    }
    const loader = createTrainLoader({ ...base, files: dir, imageSize: 64, batchSize: 2, bboxShift: 0, augment: false });
    expect(loader.size).toBe(2);
    const [b] = await take(loader, 1);
    await loader.close();
    expect([...b.sources].sort()).toEqual(['a.npy#label=1', 'b.npy#label=1']);
    const i = b.sources.indexOf('a.npy#label=1');
    expect(Array.from(b.boxes.subarray(i * 4, i * 4 + 4))).toEqual([8, 8, 27, 31]);
    // the low-res mask (16x16) equals the label map; the image is bright inside the box
    expect(b.masks[i * 256 + 2 * 16 + 2]).toBe(1);
    expect(b.masks[i * 256 + 8 * 16 + 2]).toBe(0);
    expect(b.images[(i * 64 * 64 + 10 * 64 + 10) * 3]).toBeCloseTo((1 - 0.485) / 0.229, 5);
  });
});

describe('validation set', () => {
  it('is fixed, unperturbed and the same every time', async () => {
    const opts = { files: dataDir, imageSize: 32, maxSamples: 7, seed: 42, batchSize: 3, log: () => undefined };
    const a = (await buildValSet(opts)).batches;
    const b = (await buildValSet(opts)).batches;
    expectSameBatches(a, b);
    expect(a.map((x) => x.batchSize)).toEqual([3, 3, 1]);
    const all = (await buildValSet({ ...opts, maxSamples: 1000 })).batches;
    const allSources = all.flatMap((x) => x.sources);
    expect(allSources).toEqual([...allSources].sort((p, q) => p.localeCompare(q, 'en', { numeric: true })));
    // unperturbed: each box is exactly the label's bounding box at S (no shift)
    const store = new SliceStore(resolveDataEntries(dataDir));
    for (const batch of all) {
      batch.sources.forEach((src, i) => {
        const [, f, z, l] = /^synthetic_(\d+)\.npz#slice=(\d+),label=(\d+)$/.exec(src)!.map(Number);
        const sd = store.slice(f, z);
        const tight = warpLabel(sd, l, 32, pixelMap(sd.labelWidth, sd.labelHeight, 32, IDENTITY))!.box;
        expect(Array.from(batch.boxes.subarray(i * 4, i * 4 + 4))).toEqual(tight);
      });
    }
  });
});

describe('throughput', () => {
  it('measures samples/s', async () => {
    const r = await measureLoaderThroughput({ files: dataDir, imageSize: 64, batchSize: 4, batches: 3 });
    expect(r.samples).toBe(12);
    expect(r.samplesPerSec).toBeGreaterThan(0);
  });
});
