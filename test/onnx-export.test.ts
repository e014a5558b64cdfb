/**
 * The ONNX export of the golden fixture's weights: parity with the TypeScript model, the official
 * reference outputs through onnxruntime-node, a dynamic batch, 3D propagation through the exported
 * graphs against propagation.npz, the predict command, and clear errors on bad input.
 */
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeNpz, readNpz, type NpyArray } from '../src/io/npz.js';
import { readSafetensors, type StateDict } from '../src/io/safetensors.js';
import { resolveModelConfig, type Sam2Config } from '../src/model/config.js';
import { grayToModelInput, VolumePropagator } from '../src/model/video-predictor.js';
import { runExport } from '../src/commands/export.js';
import { loadInput, runPredict } from '../src/commands/predict.js';
import { exportGraphs, MANIFEST_FILE } from '../src/onnx/export.js';
import { GRAPH_FILES } from '../src/onnx/graphs.js';
import { relativeError, runParity, type ParityReport } from '../src/onnx/parity.js';
import { boxesFromLabels } from '../src/onnx/predict.js';
import { OnnxModel, OrtFrameGraphs, runSession } from '../src/onnx/runtime.js';

const GOLDEN = join(import.meta.dirname, 'fixtures', 'golden-small256');
const META = join(GOLDEN, 'meta.json');

let dir: string;
let out: string;
let config: Sam2Config;
let params: StateDict;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'medtune-onnx-'));
  out = join(dir, 'export');
  config = resolveModelConfig(JSON.parse(readFileSync(META, 'utf8')).model_config);
  params = readSafetensors(join(GOLDEN, 'weights.safetensors'));
  exportGraphs(config, params, out);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function f32(a: NpyArray): Float32Array {
  return a.data as Float32Array;
}

describe('export of the golden fixture (small256)', () => {
  it('writes every graph with opset 17, dynamic batch and the model facts in metadata_props', async () => {
    const { onnx, readModelMetadata } = await import('../src/onnx/graph-builder.js');
    for (const file of Object.values(GRAPH_FILES)) expect(existsSync(join(out, file)), file).toBe(true);
    const bytes = readFileSync(join(out, GRAPH_FILES.imageEncoder));
    const model = onnx.ModelProto.decode(bytes);
    expect(Number(model.opsetImport[0].version)).toBe(17);
    expect(model.graph!.input![0].type!.tensorType!.shape!.dim!.map((d) => d.dimParam || Number(d.dimValue))).toEqual(['batch', 3, 256, 256]);
    const meta = readModelMetadata(bytes);
    expect(meta['medtune.image_size']).toBe('256');
    expect(JSON.parse(meta['medtune.normalization']).mean).toEqual([0.485, 0.456, 0.406]);
    expect(JSON.parse(meta['medtune.model_config']).image_encoder.trunk.embed_dim).toBe(16);
    const ops = new Set(model.graph!.node!.map((n) => n.opType));
    expect(ops.has('LayerNormalization')).toBe(true);
    expect(ops.has('Shape')).toBe(false); // no shape arithmetic at run time in the image encoder
    expect(JSON.parse(readFileSync(join(out, MANIFEST_FILE), 'utf8')).image_size).toBe(256);
  });

  it('parity: every graph matches the TypeScript model within 1e-4 of the tensor scale', async () => {
    const report: ParityReport = await runParity(config, params, out);
    const worst = report.entries.reduce((a, b) => (b.relError > a.relError ? b : a));
    console.log(`parity: ${report.entries.length} tensors, worst ${worst.graph}/${worst.output} rel ${worst.relError.toExponential(2)}`);
    expect(report.entries.map((e) => e.graph)).toEqual(expect.arrayContaining(['image_encoder', 'mask_decoder', 'memory_attention', 'memory_encoder']));
    expect(report.ok).toBe(true);
    for (const e of report.entries) expect(e.relError, `${e.graph}/${e.output}`).toBeLessThanOrEqual(1e-4);
  });

  it('onnxruntime reproduces the official outputs (expected.npz), at batch 1 and batch 2', async () => {
    const inputs = readNpz(join(GOLDEN, 'inputs.npz'));
    const expected = readNpz(join(GOLDEN, 'expected.npz'));
    const model = OnnxModel.open(out, { threads: 2 });
    const image = { data: f32(inputs.image), shape: inputs.image.shape };
    const twice = { data: new Float32Array([...f32(inputs.image), ...f32(inputs.image)]), shape: [2, ...inputs.image.shape.slice(1)] };
    const errors: Record<string, number> = {};
    for (const [batch, feed] of [[1, image], [2, twice]] as const) {
      const enc = await runSession(await model.session('imageEncoder'), { image: feed });
      for (const [ours, ref] of [['image_embed', 'image_embed'], ['high_res_0', 'high_res.0'], ['high_res_1', 'high_res.1']]) {
        expect(enc[ours].shape[0]).toBe(batch);
        const per = enc[ours].data.length / batch;
        for (let b = 0; b < batch; b++) errors[`${ours}@${batch}`] = Math.max(errors[`${ours}@${batch}`] ?? 0, relativeError(enc[ours].data.subarray(b * per, (b + 1) * per), f32(expected[ref])).relError);
      }
      const rep = (a: Float32Array) => new Float32Array(Array.from({ length: batch }, () => [...a]).flat());
      const dec = await runSession(await model.session('maskDecoder'), {
        image_embed: enc.image_embed,
        high_res_0: enc.high_res_0,
        high_res_1: enc.high_res_1,
        point_coords: { data: rep(f32(inputs.box)), shape: [batch, 2, 2] },
        point_labels: { data: rep(Float32Array.from([2, 3])), shape: [batch, 2] },
        mask_input: { data: new Float32Array(batch * 64 * 64), shape: [batch, 1, 64, 64] },
        has_mask_input: { data: new Float32Array(batch), shape: [batch] },
      });
      const pairs: Array<[string, string]> = [
        ['low_res_masks', 'single.masks'],
        ['iou_predictions', 'single.iou'],
        ['sam_tokens', 'single.tokens'],
        ['low_res_masks_multi', 'multi.masks'],
        ['iou_predictions_multi', 'multi.iou'],
        ['sam_tokens_multi', 'multi.tokens'],
        ['object_score_logits', 'single.obj'],
      ];
      for (const [ours, ref] of pairs) {
        const per = dec[ours].data.length / batch;
        for (let b = 0; b < batch; b++) {
          errors[`${ours}@${batch}`] = Math.max(errors[`${ours}@${batch}`] ?? 0, relativeError(dec[ours].data.subarray(b * per, (b + 1) * per), f32(expected[ref])).relError);
        }
      }
    }
    await model.release();
    console.log(Object.entries(errors).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', '));
    for (const [k, v] of Object.entries(errors)) expect(v, k).toBeLessThanOrEqual(1e-4);
  });

  it('3D propagation through the exported graphs matches propagation.npz (README tolerance)', async () => {
    const prop = readNpz(join(GOLDEN, 'propagation.npz'));
    const model = OnnxModel.open(out, { threads: 2 });
    const propagator = new VolumePropagator(new OrtFrameGraphs(model));
    const [d, h, w] = prop.slices.shape;
    const slices = f32(prop.slices);
    const md = prop.mask.data as unknown as ArrayLike<number | boolean>;
    const mask = Float32Array.from({ length: h * w }, (_, i) => (md[i] ? 1 : 0));
    const results = await propagator.propagate(
      { numFrames: d, height: h, width: w, image: (i) => grayToModelInput(slices.subarray(i * h * w, (i + 1) * h * w)) },
      { frameIdx: 2, mask },
    );
    await model.release();
    expect(results.map((r) => `${r.direction === 'forward' ? 'fwd' : 'rev'}.${r.frameIdx}`)).toEqual(['fwd.2', 'fwd.3', 'fwd.4', 'rev.2', 'rev.1', 'rev.0']);
    const rows: string[] = [];
    for (const r of results) {
      const name = `${r.direction === 'forward' ? 'fwd' : 'rev'}.${r.frameIdx}`;
      const ref = f32(prop[name]);
      let maxErr = 0;
      let maxRef = 0;
      let agree = 0;
      for (let i = 0; i < ref.length; i++) {
        maxErr = Math.max(maxErr, Math.abs(r.logits[i] - ref[i]));
        maxRef = Math.max(maxRef, Math.abs(ref[i]));
        if (r.logits[i] > 0 === ref[i] > 0) agree++;
      }
      const rel = maxErr / Math.max(1, maxRef);
      rows.push(`${name} rel ${rel.toExponential(2)} agree ${((100 * agree) / ref.length).toFixed(3)}% ${r.ms.toFixed(0)} ms`);
      expect(rel, name).toBeLessThanOrEqual(1e-3);
      expect(agree / ref.length, name).toBeGreaterThanOrEqual(0.999);
    }
    console.log(`ONNX propagation: ${rows.join('; ')}`);
  });
});

describe('predict with the exported folder', () => {
  let volumeFile: string;
  let gts: Uint8Array;
  const quiet = () => {};

  beforeAll(() => {
    // the propagation slices as a challenge-format volume: uint8 imgs, a box-shaped label 2
    const prop = readNpz(join(GOLDEN, 'propagation.npz'));
    const [d, h, w] = prop.slices.shape;
    const imgs = Uint8Array.from(f32(prop.slices), (v) => Math.round(v * 255));
    gts = new Uint8Array(d * h * w);
    for (let z = 1; z <= 3; z++) for (let y = 100; y < 160; y++) for (let x = 80; x < 150; x++) gts[(z * h + y) * w + x] = 2;
    volumeFile = join(dir, 'volume.npz');
    writeFileSync(volumeFile, encodeNpz({ imgs: { data: imgs, shape: [d, h, w] }, gts: { data: gts, shape: [d, h, w] }, spacing: { data: Float64Array.from([0.8, 0.8, 2.5]), shape: [3] } }));
  });

  it('3D: boxes from gts -> a label map with the input geometry', async () => {
    expect(boxesFromLabels(gts, 5, 256, 256)).toEqual([{ label: 2, box: [80, 100, 1, 149, 159, 3] }]);
    const file = join(dir, 'pred3d.npz');
    await runPredict({ onnx: out, input: volumeFile, out: file, 'boxes-from-gts': true, label: 1 }, quiet);
    const pred = readNpz(file);
    expect(pred.segs.shape).toEqual([5, 256, 256]);
    expect(Array.from(pred.spacing.data as Float64Array)).toEqual([0.8, 0.8, 2.5]);
    const labels = new Set(pred.segs.data as Uint8Array);
    expect([...labels].every((l) => l === 0 || l === 2)).toBe(true);
  });

  it('2D: a slice and a box -> a PNG mask and an npz mask', async () => {
    const png = join(dir, 'pred2d.png');
    await runPredict({ onnx: out, input: volumeFile, out: png, slice: 2, box: ['60,70,180,200'], label: 1 }, quiet);
    const img = await loadInput(png);
    expect([img.pixels.height, img.pixels.width, img.pixels.channels]).toEqual([256, 256, 1]);
    expect(img.pixels.data.every((v) => v === 0 || v === 1)).toBe(true);
    const npz = join(dir, 'pred2d.npz');
    await runPredict({ onnx: out, input: png, out: npz, box: ['60,70,180,200'], label: 3 }, quiet);
    expect(readNpz(npz).segs.shape).toEqual([256, 256]);
  });

  it('the predict path imports no TensorFlow.js', () => {
    const root = resolve(import.meta.dirname, '..');
    const seen = new Set<string>();
    const tfjs: string[] = [];
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      const src = readFileSync(file, 'utf8');
      for (const m of src.matchAll(/(?:import|export)\s[^'"]*?from\s+'([^']+)'|import\(\s*'([^']+)'\s*\)/g)) {
        const spec = m[1] ?? m[2];
        if (m[0].startsWith('import type') || m[0].startsWith('export type')) continue;
        if (spec.startsWith('@tensorflow/')) tfjs.push(`${relative(root, file)} -> ${spec}`);
        if (spec.startsWith('.')) visit(resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
      }
    };
    visit(join(root, 'src', 'commands', 'predict.ts'));
    expect(seen.size).toBeGreaterThan(5);
    expect(tfjs).toEqual([]);
  });
});

describe('bad input', () => {
  it('a checkpoint whose config does not match names the keys and suggests --model', async () => {
    await expect(
      runExport({ checkpoint: join(GOLDEN, 'weights.safetensors'), model: 'sam2.1-tiny', out: join(dir, 'bad'), parity: false, tolerance: 1e-4, backend: 'cpu' }),
    ).rejects.toThrow(/does not match the model's parameters[\s\S]*shape mismatches[\s\S]*--model/);
  });

  it('an export folder missing a graph', async () => {
    const moved = join(dir, 'moved.onnx');
    renameSync(join(out, GRAPH_FILES.memoryAttention), moved);
    try {
      expect(() => OnnxModel.open(out)).toThrow(/missing graph memory_attention\.onnx/);
      // 2D prediction needs only the image encoder and the decoder
      expect(() => OnnxModel.open(out, { needed: ['imageEncoder', 'maskDecoder'] })).not.toThrow();
    } finally {
      renameSync(moved, join(out, GRAPH_FILES.memoryAttention));
    }
    expect(() => OnnxModel.open(join(dir, 'nowhere'))).toThrow(/no such ONNX export folder/);
    expect(() => OnnxModel.open(dir)).toThrow(/not a medtune ONNX export/);
  });

  it('boxes outside the image or volume', async () => {
    const input = join(dir, 'volume.npz');
    const run = (box: string, extra: object = {}) => runPredict({ onnx: out, input, out: join(dir, 'x.npz'), box: [box], label: 1, ...extra }, () => {});
    await expect(run('0,0,300,100', { slice: 1 })).rejects.toThrow(/lies outside the 256x256 image/);
    await expect(run('10,10,50,50')).rejects.toThrow(/volume of 5 slices: pass --slice/);
    await expect(run('10,10,0,50,50,7')).rejects.toThrow(/slices z0..z1 must be integers within 0..4/);
    await expect(run('10,10,0,500,50,3')).rejects.toThrow(/lies outside/);
    await expect(run('1,2,3')).rejects.toThrow(/expected x0,y0,x1,y1/);
  });
});
