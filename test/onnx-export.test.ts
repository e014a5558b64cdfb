/**
 * The ONNX export of the golden fixture's weights: parity with the TypeScript model, the official
 * reference outputs through onnxruntime-node, a dynamic batch, 3D propagation through the exported
 * graphs against propagation.npz, the predict command, and clear errors on bad input.
 */
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { dump } from 'npyjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeNpz, readNpz, type NpyArray } from '../src/io/npz.js';
import { readSafetensors, type StateDict } from '../src/io/safetensors.js';
import { resolveModelConfig, type Sam2Config } from '../src/model/config.js';
import { runExport } from '../src/commands/export.js';
import { loadInput, runPredict } from '../src/commands/predict.js';
import { exportGraphs, MANIFEST_FILE } from '../src/onnx/export.js';
import { GRAPH_FILES } from '../src/onnx/graphs.js';
import { relativeError, runParity, type ParityReport } from '../src/onnx/parity.js';
import { boxesFromLabels, predictCase } from '../src/onnx/predict.js';
import { onnxGoldenCheck } from '../src/onnx/golden.js';
import { OnnxModel, runSession } from '../src/onnx/runtime.js';

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

  it('onnxruntime reproduces the official outputs (expected.npz) and 3D propagation (propagation.npz)', async () => {
    const lines: string[] = [];
    const report = await onnxGoldenCheck(GOLDEN, { exportDir: join(dir, 'golden-check'), threads: 2, log: (l) => lines.push(l) });
    console.log(lines.join('\n'));
    expect(report.lines.filter((l) => l.name.startsWith('propagation/')).length).toBe(12);
    expect(report.failed).toBe(0);
  });

  it('dynamic batch: two images and two prompts in one run give the single-image results', async () => {
    const inputs = readNpz(join(GOLDEN, 'inputs.npz'));
    const expected = readNpz(join(GOLDEN, 'expected.npz'));
    const model = OnnxModel.open(out, { threads: 2 });
    const twice = (a: Float32Array) => new Float32Array([...a, ...a]);
    const enc = await runSession(await model.session('imageEncoder'), { image: { data: twice(f32(inputs.image)), shape: [2, 3, 256, 256] } });
    const dec = await runSession(await model.session('maskDecoder'), {
      image_embed: enc.image_embed,
      high_res_0: enc.high_res_0,
      high_res_1: enc.high_res_1,
      point_coords: { data: twice(f32(inputs.box)), shape: [2, 2, 2] },
      point_labels: { data: Float32Array.from([2, 3, 2, 3]), shape: [2, 2] },
      mask_input: { data: new Float32Array(2 * 64 * 64), shape: [2, 1, 64, 64] },
      has_mask_input: { data: new Float32Array(2), shape: [2] },
    });
    await model.release();
    for (const [ours, ref] of [['image_embed', 'image_embed'], ['low_res_masks', 'single.masks'], ['iou_predictions_multi', 'multi.iou']] as const) {
      const src = ours === 'image_embed' ? enc : dec;
      expect(src[ours].shape[0]).toBe(2);
      const per = src[ours].data.length / 2;
      for (let b = 0; b < 2; b++) expect(relativeError(src[ours].data.subarray(b * per, (b + 1) * per), f32(expected[ref])).relError, `${ours}[${b}]`).toBeLessThan(1e-4);
    }
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

  it('3D NIfTI in, NIfTI out with the input geometry', async () => {
    const { readNifti, writeNifti } = await import('../src/data/nifti.js');
    const vol = readNpz(volumeFile);
    const nii = join(dir, 'volume.nii.gz');
    const geometry = { spacing: [0.8, 0.8, 2.5] as [number, number, number], origin: [10, -20, 30] as [number, number, number], direction: [1, 0, 0, 0, 1, 0, 0, 0, 1] };
    // CT-like intensities: the uint8 slices as Hounsfield units
    const hu = Int16Array.from(vol.imgs.data as Uint8Array, (v) => v * 4 - 500);
    writeNifti(nii, hu, [5, 256, 256], { geometry });
    const outFile = join(dir, 'pred3d.nii.gz');
    await runPredict({ onnx: out, input: nii, out: outFile, box: ['2:80,100,1,149,159,3'], window: '0,1000', label: 1 }, quiet);
    const pred = readNifti(outFile);
    expect(pred.shape).toEqual([5, 256, 256]);
    expect(pred.geometry.spacing.map((v) => Math.round(v * 1000) / 1000)).toEqual([0.8, 0.8, 2.5]);
    expect(pred.geometry.origin.map((v) => Math.round(v))).toEqual([10, -20, 30]);
    expect([...new Set(pred.data)].every((l) => l === 0 || l === 2)).toBe(true);
  });

  it('predictCase (eval from an export): 3D and 2D cases prompted from their gts', async () => {
    const model = OnnxModel.open(out, { threads: 2 });
    const vol = readNpz(volumeFile);
    const three = await predictCase(model, vol, volumeFile);
    expect(three.shape).toEqual([5, 256, 256]);
    const slice = (a: NpyArray) => ({ ...a, data: (a.data as Uint8Array).slice(2 * 256 * 256, 3 * 256 * 256), shape: [256, 256] });
    const two = await predictCase(model, { imgs: slice(vol.imgs), gts: slice(vol.gts) }, 'slice');
    await model.release();
    expect(two.shape).toEqual([256, 256]);
    expect([...new Set(two.data)].every((l) => l === 0 || l === 2)).toBe(true);
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

  it('an input image holding NaN', async () => {
    const img = new Float32Array(32 * 32).fill(0.5);
    img[33] = NaN;
    const path = join(dir, 'nan.npy');
    writeFileSync(path, new Uint8Array(dump(img, [32, 32])));
    await expect(loadInput(path, undefined)).rejects.toThrow(`${path}: the image holds NaN values (first at flat index 33)`);
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
