/**
 * `medtune eval --per-slice` end to end on an export of the golden fixture's model: the JSON's
 * shape, rows that are exactly one prediction each, determinism per seed, shards merged into
 * exactly the unsharded result; and the export's single-mask stability output on the official
 * decoder outputs.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { diceCoefficient } from '../src/eval/metrics.js';
import { encodeNpz, readNpz } from '../src/io/npz.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { resolveModelConfig } from '../src/model/config.js';
import { exportGraphs } from '../src/onnx/export.js';
import { relativeError } from '../src/onnx/parity.js';
import { segmentImage } from '../src/onnx/predict.js';
import { OnnxModel, runSession } from '../src/onnx/runtime.js';
import { runEval } from './helpers/eval-cli.js';

const golden = join(import.meta.dirname, 'fixtures', 'golden-small256');
const root = mkdtempSync(join(tmpdir(), 'medtune-prompt-eval-onnx-'));
const exportDir = join(root, 'export');
const gtDir = join(root, 'gt');
const [D, H, W] = [2, 24, 28];

/** Two adjacent bright blocks (labels 1 and 2) that move a little from case to case and slice to slice. */
function writeCase(name: string, offset: number): void {
  const imgs = new Uint8Array(D * H * W).fill(30);
  const gts = new Uint8Array(D * H * W);
  for (let z = 0; z < D; z++) {
    for (let y = 6 + offset; y < 16 + offset; y++) {
      for (let x = 5 + z; x < 22; x++) {
        const label = x < 13 ? 1 : 2;
        imgs[(z * H + y) * W + x] = label === 1 ? 200 : 140;
        gts[(z * H + y) * W + x] = label;
      }
    }
  }
  writeFileSync(join(gtDir, name), encodeNpz({ imgs: { data: imgs, shape: [D, H, W] }, gts: { data: gts, shape: [D, H, W] }, spacing: { data: Float64Array.from([1, 1, 2]), shape: [3] } }));
}

beforeAll(() => {
  const config = resolveModelConfig(JSON.parse(readFileSync(join(golden, 'meta.json'), 'utf8')).model_config);
  exportGraphs(config, readSafetensors(join(golden, 'weights.safetensors')), exportDir);
  mkdirSync(gtDir, { recursive: true });
  ['c.npz', 'a.npz', 'b.npz'].forEach((n, i) => writeCase(n, i));
  writeFileSync(join(gtDir, 'labels.json'), '{"1": "Anterior", "2": "Posterior"}');
}, 120_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

const run = runEval;

interface Row { case: string; slice: number; label: number; name: string; box: [number, number, number, number]; dsc: number; ellipse_dsc: number; click_dsc: number[]; click_iou: number[] }

describe('eval --per-slice from an export', () => {
  const args = (o: { seed?: number; clicks?: number } = {}) => ['--onnx', exportDir, '--gt', gtDir, '--per-slice', '--box-shift', '2', '--seed', String(o.seed ?? 5), '--clicks', String(o.clicks ?? 2), '--threads', '1'];
  const base = args();
  let whole: string;

  it('JSON: mean, per label by name, the ellipse baseline, the click curve and one row per (slice, label)', async () => {
    whole = await run([...base, '--json']);
    const r = JSON.parse(whole);
    const rows = r.cases as Row[];
    expect(rows.map((x) => [x.case, x.slice, x.name])).toEqual(
      ['a.npz', 'b.npz', 'c.npz'].flatMap((c) => [0, 1].flatMap((z) => [[c, z, 'Anterior'], [c, z, 'Posterior']])),
    );
    const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
    expect(r.mean.dsc).toBe(mean(rows.map((x) => x.dsc)));
    expect(r.baseline.ellipse_dsc).toBe(mean(rows.map((x) => x.ellipse_dsc)));
    expect(Object.keys(r.per_label)).toEqual(['Anterior', 'Posterior']);
    expect(r.per_label.Posterior.n).toBe(6);
    expect(r.per_label.Anterior.dsc).toBe(mean(rows.filter((x) => x.label === 1).map((x) => x.dsc)));
    expect(r.clicks.dsc).toHaveLength(3);
    expect(r.clicks.dsc[0]).toBe(r.mean.dsc);
    expect(r.clicks.noc85).toBeGreaterThanOrEqual(0);
    expect(r.clicks.noc90).toBeLessThanOrEqual(20);
    for (const x of rows) {
      expect(x.click_dsc[0]).toBe(x.dsc);
      expect(x.click_iou).toHaveLength(3);
      expect(x.ellipse_dsc).toBeGreaterThan(0.5); // blocks: an ellipse in a tight-ish box covers most of them
    }
    expect(r.settings).toEqual({ boxShift: 2, seed: '5', clicks: 2, stability: true });
    // a row is one prediction of the exported model on that slice and box
    const row = rows[3];
    const { imgs, gts } = readNpz(join(gtDir, row.case));
    const plane = H * W;
    const slice = Float32Array.from((imgs.data as Uint8Array).subarray(row.slice * plane, (row.slice + 1) * plane), (v) => v / 255);
    const model = OnnxModel.open(exportDir, { threads: 1 });
    const { mask } = await segmentImage(model, { data: slice, depth: 1, height: H, width: W, channels: 1 }, row.box);
    await model.release();
    const gt = (gts.data as Uint8Array).subarray(row.slice * plane, (row.slice + 1) * plane).map((v) => (v === row.label ? 1 : 0));
    expect(row.dsc).toBe(diceCoefficient(gt, mask));
  }, 300_000);

  it('deterministic per seed; another seed shifts the boxes differently', async () => {
    expect(await run([...base, '--json'])).toBe(whole);
    const other = JSON.parse(await run([...args({ seed: 6, clicks: 0 }), '--json']));
    const boxes = (r: { cases: Row[] }) => r.cases.map((x) => x.box.join());
    expect(boxes(other)).not.toEqual(boxes(JSON.parse(whole)));
    expect(other.clicks).toBeNull();
  }, 300_000);

  it('shards merge into exactly the unsharded result (JSON and table)', async () => {
    const shardDir = join(root, 'shards');
    for (const i of [1, 0]) await run([...base, '--shard', `${i}/2`, '--shard-out', shardDir]);
    expect(await run(['--merge', shardDir, '--json'])).toBe(whole);
    const table = await run(['--merge', shardDir]);
    expect(table).toBe(await run(base));
    expect(table).toMatch(/^Anterior\s+6\s/m);
    // a shard made with other settings is refused
    await run([...args({ clicks: 1 }), '--shard', '1/2', '--shard-out', join(root, 'other')]);
    rmSync(join(shardDir, 'prompt-eval-shard-1-of-2.json'));
    await expect(run(['--merge', shardDir])).rejects.toThrow(/missing shard\(s\) 1\/2/);
    await expect(run(['--merge', shardDir, join(root, 'other')])).rejects.toThrow(/1 click\(s\).*2 click\(s\)|2 click\(s\).*1 click\(s\)/);
  }, 300_000);

  it('2D cases: one slice; bad input is named', async () => {
    const dir2d = join(root, 'gt2d');
    mkdirSync(dir2d, { recursive: true });
    const imgs = new Uint8Array(H * W).fill(20);
    const gts = new Uint8Array(H * W);
    for (let y = 4; y < 12; y++) for (let x = 6; x < 20; x++) [imgs[y * W + x], gts[y * W + x]] = [220, 3];
    writeFileSync(join(dir2d, 'img.npz'), encodeNpz({ imgs: { data: imgs, shape: [H, W] }, gts: { data: gts, shape: [H, W] } }));
    const r = JSON.parse(await run(['--onnx', exportDir, '--gt', dir2d, '--per-slice', '--threads', '1', '--json']));
    expect(r.cases.map((x: Row) => [x.case, x.slice, x.name, x.box])).toEqual([['img.npz', 0, '3', [6, 4, 19, 11]]]);

    await expect(run(['--gt', gtDir, '--per-slice'])).rejects.toThrow(/--per-slice needs --onnx/);
    await expect(run([...base.slice(0, 4), '--per-slice', '--box-shift', '1.5'])).rejects.toThrow(/--box-shift must be a non-negative integer/);
    writeFileSync(join(dir2d, 'img.npz'), encodeNpz({ imgs: { data: imgs, shape: [H, W] }, gts: { data: gts.subarray(0, H * (W - 1)), shape: [H, W - 1] } }));
    await expect(run(['--onnx', exportDir, '--gt', dir2d, '--per-slice'])).rejects.toThrow(/img\.npz: gts shape \(24,27\) does not match imgs \(24,28\)/);
    writeFileSync(join(dir2d, 'img.npz'), encodeNpz({ imgs: { data: imgs, shape: [H, W] } }));
    await expect(run(['--onnx', exportDir, '--gt', dir2d, '--per-slice'])).rejects.toThrow(/img\.npz: no `gts` array/);
  }, 120_000);
});

describe('the export\'s single-mask output with the stability fallback, on the official decoder outputs', () => {
  it('low_res_masks_stable is the single mask when it is stable, else the best-IoU multimask output', async () => {
    const inputs = readNpz(join(golden, 'inputs.npz'));
    const expected = readNpz(join(golden, 'expected.npz'));
    const f32 = (a: { data: unknown }) => Float32Array.from(a.data as ArrayLike<number>);
    const model = OnnxModel.open(exportDir, { threads: 1 });
    const enc = await runSession(await model.session('imageEncoder'), { image: { data: f32(inputs.image), shape: [1, 3, 256, 256] } });
    const dec = await runSession(await model.session('maskDecoder'), {
      image_embed: enc.image_embed,
      high_res_0: enc.high_res_0,
      high_res_1: enc.high_res_1,
      point_coords: { data: f32(inputs.box), shape: [1, 2, 2] },
      point_labels: { data: Float32Array.from([2, 3]), shape: [1, 2] },
      mask_input: { data: new Float32Array(64 * 64), shape: [1, 1, 64, 64] },
      has_mask_input: { data: new Float32Array(1), shape: [1] },
    });
    await model.release();
    // the official rule on the official tensors, by hand
    const single = f32(expected['single.masks']);
    const above = (d: number) => single.filter((v) => v > d).length;
    const stable = above(-0.05) === 0 || above(0.05) / above(-0.05) >= 0.98;
    const multiIou = Array.from(f32(expected['multi.iou']));
    const best = multiIou.indexOf(Math.max(...multiIou));
    const n = single.length;
    const want = stable ? single : f32(expected['multi.masks']).subarray(best * n, (best + 1) * n);
    console.log(`golden box prompt: single mask ${stable ? 'stable' : `unstable, multimask output ${best} taken`}`);
    expect(relativeError(dec.low_res_masks_stable.data, want).relError).toBeLessThan(1e-4);
    expect(dec.iou_predictions_stable.data[0]).toBeCloseTo(stable ? f32(expected['single.iou'])[0] : multiIou[best], 4);
  });
});
