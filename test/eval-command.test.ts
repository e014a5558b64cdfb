import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import yargs from 'yargs';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { evalCommand } from '../src/commands/eval.js';
import { evaluateCase, evaluateDirs, evaluateWithPredictor, mergeShardReports, reportCsv, reportJson, reportTable, shardReport } from '../src/eval/evaluate.js';
import { normalizedSurfaceDice, scoreBinary } from '../src/eval/metrics.js';
import { encodeNpz, readNpz, type TypedArray } from '../src/io/npz.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { resolveModelConfig } from '../src/model/config.js';
import { exportGraphs } from '../src/onnx/export.js';
import { predictCase } from '../src/onnx/predict.js';
import { OnnxModel } from '../src/onnx/runtime.js';
import { runEval } from './helpers/eval-cli.js';

const root = mkdtempSync(join(tmpdir(), 'medtune-eval-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function writeNpz(path: string, arrays: Record<string, { data: TypedArray; shape: number[] }>) {
  writeFileSync(path, encodeNpz(arrays, true));
}

function dirs(name: string) {
  const pred = join(root, name, 'pred');
  const gt = join(root, name, 'gt');
  mkdirSync(pred, { recursive: true });
  mkdirSync(gt, { recursive: true });
  return { pred, gt };
}

/** shift a (D, H, W) label map by (dz, dy, dx), zero fill */
function shift3(src: ArrayLike<number>, shape: number[], by: number[]): Uint8Array {
  const [D, H, W] = shape;
  const out = new Uint8Array(D * H * W);
  for (let z = 0; z < D; z++)
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) {
        const v = src[(z * H + y) * W + x];
        if (!v) continue;
        const [a, b, c] = [z + by[0], y + by[1], x + by[2]];
        if (a < 0 || a >= D || b < 0 || b >= H || c < 0 || c >= W) continue;
        out[(a * H + b) * W + c] = v;
      }
  return out;
}

function ellipsoidLabels(shape: number[], parts: Array<{ c: number[]; r: number[]; label: number }>): Uint8Array {
  const [D, H, W] = shape;
  const out = new Uint8Array(D * H * W);
  for (let z = 0; z < D; z++)
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++)
        for (const p of parts) {
          const s = ((z - p.c[0]) / p.r[0]) ** 2 + ((y - p.c[1]) / p.r[1]) ** 2 + ((x - p.c[2]) / p.r[2]) ** 2;
          if (s <= 1) out[(z * H + y) * W + x] = p.label;
        }
  return out;
}

describe('evaluate: real CT lesion volumes against the reference', () => {
  const fixture = JSON.parse(readFileSync(new URL('./fixtures/surface-distance/reference.json', import.meta.url), 'utf8')) as {
    ct_lesion: Array<{ file: string; label: number; spacing_order: string; tolerances: number[]; dsc: number; nsd: number[] }>;
  };
  const shared = fileURLToPath(new URL('../../shared/data/ct-lesion-npz', import.meta.url));
  const local = fileURLToPath(new URL('./fixtures/ct-lesion', import.meta.url));
  const gtDir = existsSync(shared) ? shared : local;
  const files = existsSync(gtDir) ? readdirSync(gtDir).filter((f) => f.endsWith('.npz')) : [];

  it.skipIf(files.length === 0)('shifted lesion masks: DSC equal, NSD within 1e-3 (both spacing orders)', () => {
    const { pred } = dirs('lesion');
    const loaded = files.map((f) => {
      const a = readNpz(join(gtDir, f));
      const gts = { data: a.gts.data as Uint8Array, shape: a.gts.shape };
      const segs = { data: shift3(gts.data, gts.shape, [1, 2, -1]), shape: gts.shape };
      writeNpz(join(pred, f), { segs });
      return { name: f, gt: gts, pred: segs, spacing: Array.from(a.spacing.data as Float64Array) };
    });
    const refOf = (file: string, label: number, order: string) =>
      fixture.ct_lesion.find((r) => r.file === file && r.label === label && r.spacing_order === order)!;
    let maxErr = 0;
    let checked = 0;
    for (const c of loaded) {
      for (const [order, refOrder] of [
        ['xyz', 'reversed'],
        ['zyx', 'as-stored'],
      ] as const) {
        for (const row of evaluateCase(c, { toleranceMm: 2, spacingOrder: order }).rows) {
          const ref = refOf(row.case, row.label, refOrder);
          expect(ref, row.case).toBeDefined();
          expect(row.dsc).toBe(ref.dsc);
          const err = Math.abs(row.nsd - ref.nsd[1]);
          maxErr = Math.max(maxErr, err);
          expect(err).toBeLessThanOrEqual(1e-3);
          checked++;
        }
      }
      // tolerances 1 and 5 mm as well (spacing reversed to the array axes)
      const ref = refOf(c.name, 1, 'reversed');
      const s = scoreBinary(c.gt.data, c.pred.data, c.gt.shape, c.spacing.slice().reverse(), [1, 2, 5]);
      s.nsd.forEach((v, i) => {
        const err = Math.abs(v - ref.nsd[i]);
        maxErr = Math.max(maxErr, err);
        expect(err).toBeLessThanOrEqual(1e-3);
        checked++;
      });
    }
    expect(checked).toBe(files.length * 5);
    // and once through the files, as `medtune eval --pred --gt` reads them
    const report = evaluateDirs(pred, gtDir);
    for (const row of report.cases) expect(Math.abs(row.nsd - refOf(row.case, row.label, 'reversed').nsd[1])).toBeLessThanOrEqual(1e-3);
    console.log(`real CT lesions: ${checked} NSD values, max |NSD - reference| = ${maxErr.toExponential(2)}`);
  });
});

describe('evaluate: directories, conventions and output', () => {
  const shape = [6, 20, 18];
  const gt = ellipsoidLabels(shape, [
    { c: [3, 6, 6], r: [2.5, 4, 4], label: 1 },
    { c: [3, 13, 12], r: [2, 4, 4.5], label: 4 },
  ]);
  const pred = shift3(gt, shape, [0, 1, 0]);
  const spacingXyz = [0.8, 0.6, 3.0];

  it('per case and label DSC/NSD, means, JSON and CSV', () => {
    const d = dirs('basic');
    writeNpz(join(d.gt, 'a.npz'), { gts: { data: gt, shape }, spacing: { data: Float64Array.from(spacingXyz), shape: [3] } });
    writeNpz(join(d.pred, 'a.npz'), { segs: { data: pred, shape } });
    // a second, perfect case with int64 labels (numpy's default integer type)
    writeNpz(join(d.gt, 'b.npz'), {
      gts: { data: BigInt64Array.from(gt, (v) => BigInt(v)), shape },
      spacing: { data: Float64Array.from(spacingXyz), shape: [3] },
    });
    writeNpz(join(d.pred, 'b.npz'), { segs: { data: BigInt64Array.from(gt, (v) => BigInt(v)), shape } });
    const report = evaluateDirs(d.pred, d.gt, { toleranceMm: 0.5 });
    expect(report.cases.map((r) => [r.case, r.label])).toEqual([
      ['a.npz', 1],
      ['a.npz', 4],
      ['b.npz', 1],
      ['b.npz', 4],
    ]);
    // spacing (x, y, z) is paired with the (z, y, x) axes reversed
    for (const label of [1, 4]) {
      const g = gt.map((v) => (v === label ? 1 : 0));
      const p = pred.map((v) => (v === label ? 1 : 0));
      const row = report.cases.find((r) => r.case === 'a.npz' && r.label === label)!;
      expect(row.nsd).toBe(normalizedSurfaceDice(g, p, shape, [3.0, 0.6, 0.8], 0.5));
      expect(row.nsd).toBeGreaterThan(0.5);
      expect(row.nsd).toBeLessThan(1);
    }
    expect(report.cases.filter((r) => r.case === 'b.npz').every((r) => r.dsc === 1 && r.nsd === 1)).toBe(true);
    const caseMean = (c: string, k: 'dsc' | 'nsd') => report.cases.filter((r) => r.case === c).reduce((a, r) => a + r[k], 0) / 2;
    expect(report.mean.dsc).toBeCloseTo((caseMean('a.npz', 'dsc') + 1) / 2, 12);
    expect(report.mean.nsd).toBeCloseTo((caseMean('a.npz', 'nsd') + 1) / 2, 12);

    const json = JSON.parse(reportJson(report));
    expect(Object.keys(json)).toEqual(['cases', 'mean', 'per_label']);
    // per label: the mean over the cases that score it, named by number when the folder names none
    expect(Object.keys(json.per_label)).toEqual(['1', '4']);
    expect(json.per_label['4'].dsc).toBeCloseTo((report.cases[1].dsc + 1) / 2, 12);
    expect(json.per_label['4'].n).toBe(2);
    expect(Object.keys(json.cases[0])).toEqual(['case', 'label', 'dsc', 'nsd']);
    expect(Object.keys(json.mean)).toEqual(['dsc', 'nsd']);
    const csv = reportCsv(report).trim().split('\n');
    expect(csv[0]).toBe('case,label,dsc,nsd');
    expect(csv).toHaveLength(6);
    expect(csv[5].startsWith('mean,,')).toBe(true);

    // the challenge scripts' literal use of the stored spacing
    const asStored = evaluateDirs(d.pred, d.gt, { toleranceMm: 1, spacingOrder: 'zyx' });
    const g1 = gt.map((v) => (v === 1 ? 1 : 0));
    const p1 = pred.map((v) => (v === 1 ? 1 : 0));
    expect(asStored.cases[0].nsd).toBe(normalizedSurfaceDice(g1, p1, shape, spacingXyz, 1));
  });

  it('label names from the ground-truth folder (labels.json) in the table and the JSON, kept through shards', () => {
    const d = dirs('names');
    writeNpz(join(d.gt, 'a.npz'), { gts: { data: gt, shape }, spacing: { data: Float64Array.from(spacingXyz), shape: [3] } });
    writeNpz(join(d.pred, 'a.npz'), { segs: { data: pred, shape } });
    writeFileSync(join(d.gt, 'labels.json'), '{"1": "Anterior", "4": "Posterior"}');
    const report = evaluateDirs(d.pred, d.gt);
    expect(report.perLabel.map((l) => [l.label, l.name, l.n])).toEqual([[1, 'Anterior', 1], [4, 'Posterior', 1]]);
    expect(Object.keys(JSON.parse(reportJson(report)).per_label)).toEqual(['Anterior', 'Posterior']);
    const table = reportTable(report);
    expect(table).toMatch(/^a\.npz\s+Anterior\s+0\.\d{4}/m);
    expect(table).toMatch(new RegExp(`^mean of 1\\s+Posterior\\s+${report.cases[1].dsc.toFixed(4)}`, 'm'));
    const shardDir = join(root, 'names', 'shards');
    mkdirSync(shardDir, { recursive: true });
    writeFileSync(join(shardDir, 'eval-shard-0-of-1.json'), JSON.stringify(shardReport(report, { index: 0, count: 1, source: 'test' })));
    expect(reportTable(mergeShardReports([shardDir]))).toBe(table);
  });

  it('2D cases: challenge slab by default, contour on request', () => {
    const g2 = ellipsoidLabels([1, 30, 28], [{ c: [0, 15, 14], r: [1, 9, 7], label: 2 }]);
    const p2 = shift3(g2, [1, 30, 28], [0, 1, 1]);
    const c = { name: 'slice.npz', gt: { data: g2, shape: [30, 28] }, pred: { data: p2, shape: [30, 28] }, spacing: [0.5, 0.5] };
    const slab = evaluateCase(c, { toleranceMm: 1 }).rows[0];
    expect(slab.nsd).toBe(normalizedSurfaceDice(g2, p2, [30, 28, 1], [1, 1, 1], 1));
    const contour = evaluateCase(c, { toleranceMm: 1, nsd2d: 'contour' }).rows[0];
    expect(contour.nsd).toBe(normalizedSurfaceDice(g2, p2, [30, 28], [0.5, 0.5], 1));
    expect(contour.nsd).not.toBe(slab.nsd);
  });

  it('label sets and empty volumes', () => {
    const base = { name: 'c.npz', spacing: [1, 1, 1] };
    const empty = new Uint8Array(gt.length);
    const extra = gt.slice();
    extra[0] = 9; // a label only in the prediction
    const r1 = evaluateCase({ ...base, gt: { data: gt, shape }, pred: { data: extra, shape } });
    expect(r1.rows.map((r) => r.label)).toEqual([1, 4]);
    expect(r1.warnings[0]).toMatch(/labels only in the prediction, not scored: 9/);
    const r2 = evaluateCase({ ...base, gt: { data: gt, shape }, pred: { data: extra, shape } }, { labels: 'union' });
    expect(r2.rows.map((r) => [r.label, r.dsc, r.nsd])).toEqual([
      [1, 1, 1],
      [4, 1, 1],
      [9, 0, 0],
    ]);
    const missing = evaluateCase({ ...base, gt: { data: gt, shape }, pred: { data: empty, shape } });
    expect(missing.rows.every((r) => r.dsc === 0 && r.nsd === 0)).toBe(true);
    const fp = evaluateCase({ ...base, gt: { data: empty, shape }, pred: { data: gt, shape } });
    expect(fp.rows.map((r) => [r.label, r.dsc, r.nsd])).toEqual([
      [1, 0, 0],
      [4, 0, 0],
    ]);
    const none = evaluateCase({ ...base, gt: { data: empty, shape }, pred: { data: empty, shape } });
    expect(none.rows).toEqual([{ case: 'c.npz', label: 0, dsc: 1, nsd: 1 }]);
    expect(none.warnings[0]).toMatch(/both empty/);
  });

  it('bad input: clear errors naming the file', () => {
    const d = dirs('bad');
    const sp = { data: Float64Array.from(spacingXyz), shape: [3] };
    writeNpz(join(d.gt, 'a.npz'), { gts: { data: gt, shape }, spacing: sp });
    expect(() => evaluateDirs(d.pred, d.gt)).toThrow(/missing prediction for 1 ground-truth file\(s\): .*pred\/a\.npz/);
    writeNpz(join(d.pred, 'a.npz'), { masks: { data: pred, shape } });
    expect(() => evaluateDirs(d.pred, d.gt)).toThrow(/pred\/a\.npz: no `segs` array \(has: masks\)/);
    writeNpz(join(d.pred, 'a.npz'), { segs: { data: pred.subarray(0, 5 * 20 * 18), shape: [5, 20, 18] } });
    expect(() => evaluateDirs(d.pred, d.gt)).toThrow(/pred\/a\.npz: `segs` shape \(5, 20, 18\) does not match `gts` shape \(6, 20, 18\) in .*gt\/a\.npz/);
    writeNpz(join(d.pred, 'a.npz'), { segs: { data: pred, shape } });
    writeNpz(join(d.gt, 'a.npz'), { imgs: { data: gt, shape }, spacing: sp });
    expect(() => evaluateDirs(d.pred, d.gt)).toThrow(/gt\/a\.npz: no `gts` array \(has: imgs, spacing\)/);
    writeNpz(join(d.gt, 'a.npz'), { gts: { data: gt, shape } });
    expect(() => evaluateDirs(d.pred, d.gt)).toThrow(/gt\/a\.npz: .*3D ground truth needs a 3-value `spacing`/);
    writeFileSync(join(d.gt, 'a.npz'), 'not a zip');
    expect(() => evaluateDirs(d.pred, d.gt)).toThrow(/gt\/a\.npz: not a readable npz/);
    expect(() => evaluateDirs(join(root, 'nowhere'), d.gt)).toThrow(/prediction directory not found/);
    const empty = join(root, 'bad', 'empty');
    mkdirSync(empty, { recursive: true });
    expect(() => evaluateDirs(d.pred, empty)).toThrow(/no \.npz files in the ground-truth directory/);
    expect(() => evaluateDirs(d.pred, d.gt, { toleranceMm: -1 })).toThrow(/tolerance/);
  });

  it('prediction-first hook scores what the predictor returns', async () => {
    const d = dirs('hook');
    writeNpz(join(d.gt, 'v.npz'), { gts: { data: gt, shape }, spacing: { data: Float64Array.from(spacingXyz), shape: [3] } });
    const report = await evaluateWithPredictor(d.gt, async (_file, arrays) => ({ data: arrays.gts.data as Uint8Array, shape: arrays.gts.shape }));
    expect(report.mean).toEqual({ dsc: 1, nsd: 1 });
  });

  it('sharded eval (--shard i/n per task) merges into exactly the unsharded table', async () => {
    const d = dirs('shards');
    const parts = [{ c: [4, 5, 6], r: [3, 3, 4], label: 1 }, { c: [5, 9, 4], r: [2, 2, 2], label: 2 }];
    for (const [i, name] of ['e', 'a', 'd', 'b', 'c'].entries()) {
      const g = ellipsoidLabels(shape, parts);
      writeNpz(join(d.gt, `${name}.npz`), { gts: { data: g, shape }, spacing: { data: Float64Array.from(spacingXyz), shape: [3] } });
      writeNpz(join(d.pred, `${name}.npz`), { segs: { data: shift3(g, shape, [0, i % 3, (i * 2) % 3]), shape } });
    }
    const run = runEval;
    const whole = await run(['--pred', d.pred, '--gt', d.gt]);
    const shardDir = join(root, 'shards', 'out');
    for (const i of [2, 0, 1]) await run(['--pred', d.pred, '--gt', d.gt, '--shard', `${i}/3`, '--shard-out', shardDir]);
    expect(readdirSync(shardDir).sort()).toEqual(['eval-shard-0-of-3.json', 'eval-shard-1-of-3.json', 'eval-shard-2-of-3.json']);
    expect(await run(['--merge', shardDir])).toBe(whole);
    expect(whole).toMatch(/mean over 5 case\(s\)/);
    // a lost shard is named, not silently averaged without
    rmSync(join(shardDir, 'eval-shard-1-of-3.json'));
    await expect(run(['--merge', shardDir])).rejects.toThrow(/missing shard\(s\) 1\/3/);
  });

  it('the eval command prints JSON and writes CSV', async () => {
    const d = dirs('cli');
    writeNpz(join(d.gt, 'a.npz'), { gts: { data: gt, shape }, spacing: { data: Float64Array.from(spacingXyz), shape: [3] } });
    writeNpz(join(d.pred, 'a.npz'), { segs: { data: pred, shape } });
    const csvPath = join(root, 'cli', 'metrics.csv');
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      out.push(String(chunk));
      return true;
    });
    try {
      await yargs()
        .command(evalCommand)
        .strict()
        .parseAsync(['eval', '--pred', d.pred, '--gt', d.gt, '--tolerance-mm', '1', '--json', '--csv', csvPath]);
    } finally {
      spy.mockRestore();
    }
    const printed = JSON.parse(out.join(''));
    const direct = evaluateDirs(d.pred, d.gt, { toleranceMm: 1 });
    expect(printed).toEqual(JSON.parse(reportJson(direct)));
    expect(readFileSync(csvPath, 'utf8')).toBe(reportCsv(direct));
  });
});

describe('eval --onnx: predict first from an export, then score', () => {
  it('writes each prediction to --pred and scores exactly what predictCase segments', async () => {
    const golden = join(import.meta.dirname, 'fixtures', 'golden-small256');
    const config = resolveModelConfig(JSON.parse(readFileSync(join(golden, 'meta.json'), 'utf8')).model_config);
    const exportDir = join(root, 'onnx', 'export');
    exportGraphs(config, readSafetensors(join(golden, 'weights.safetensors')), exportDir);
    const d = dirs('onnx');
    // a small 3-slice volume with one bright block labelled 1
    const [D, H, W] = [3, 64, 64];
    const imgs = new Uint8Array(D * H * W).fill(40);
    const gts = new Uint8Array(D * H * W);
    for (let z = 0; z < D; z++)
      for (let y = 20; y < 40; y++)
        for (let x = 16; x < 44; x++) {
          imgs[(z * H + y) * W + x] = 200;
          gts[(z * H + y) * W + x] = 1;
        }
    const arrays = { imgs: { data: imgs, shape: [D, H, W] }, gts: { data: gts, shape: [D, H, W] }, spacing: { data: Float64Array.from([1, 1, 2]), shape: [3] } };
    writeNpz(join(d.gt, 'case.npz'), arrays);

    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      out.push(String(chunk));
      return true;
    });
    try {
      await yargs().command(evalCommand).strict().parseAsync(['eval', '--onnx', exportDir, '--pred', d.pred, '--gt', d.gt, '--json']);
    } finally {
      spy.mockRestore();
    }
    const printed = JSON.parse(out.join(''));
    expect(printed.cases.map((c: { case: string; label: number }) => [c.case, c.label])).toEqual([['case.npz', 1]]);

    const written = readNpz(join(d.pred, 'case.npz')).segs;
    expect(written.shape).toEqual([D, H, W]);
    const model = OnnxModel.open(exportDir);
    const direct = await predictCase(model, readNpz(join(d.gt, 'case.npz')), 'case.npz');
    await model.release();
    expect(Array.from(written.data as Uint8Array)).toEqual(Array.from(direct.data));
    expect(printed).toEqual(JSON.parse(reportJson(evaluateDirs(d.pred, d.gt))));
  });
});
