/**
 * `npx tsx scripts/golden-check.ts <fixture-dir>`: checks our SAM2 against a golden fixture made
 * by the official PyTorch code (see test/fixtures/golden-small256):
 *   - every forward tensor of expected.npz   max |ours - ref| <= 1e-4 * max(1, max |ref|)
 *   - every gradient of grads.safetensors    ||ours - ref||_2 <= 1e-3 ||ref||_2 (abs 1e-7 where ~0),
 *     prompt encoder frozen; and no gradient where the reference has none
 *   - the AdamW sample (adamw_step1) from the reference gradients, max abs error <= 1e-6
 *   - weights.pt and weights.safetensors hold the same weights and give the same masks
 *   - 3D propagation (propagation.npz) through the memory path, per slice
 *     max |ours - ref| <= 1e-3 * max(1, max |ref|) and masks > 0 agreeing on >= 99.9% of pixels
 * With `--onnx`, the same forward outputs and propagation are also checked through an ONNX export
 * of the fixture's weights, run in onnxruntime-node. `--backend NAME` runs it on another backend,
 * `--threads N` with N threads (wasm, tensorflow).
 * One line per tensor with its error, then `N passed, M failed`; exit code 1 on any failure.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { BACKEND_NAMES, selectBackend, type BackendName } from '../src/backend.js';
import { readStateDict } from '../src/io/checkpoint-file.js';
import { readNpz, type NpyArray } from '../src/io/npz.js';
import { readSafetensors, type StateDict } from '../src/io/safetensors.js';
import { resolveModelConfig } from '../src/model/config.js';
import { variableGrads } from '../src/model/gradients.js';
import { SAM2Base } from '../src/model/sam2.js';
import { checkGoldenPropagation, FORWARD_TOL, maxRelError, PROPAGATION_AGREEMENT, PROPAGATION_TOL } from '../src/model/reference-compare.js';
import { TfFrameGraphs } from '../src/model/tf-frame-graphs.js';
import { TfOps } from '../src/model/tf-ops.js';
import { onnxGoldenCheck } from '../src/onnx/golden.js';
import { loadStateDict, toTfParams } from '../src/model/weights.js';
import { bceWithLogits, diceLoss } from '../src/train/loss.js';
import { AdamW, buildParamGroups } from '../src/train/optimizer.js';

export const GRAD_REL_TOL = 1e-3;
export const GRAD_ABS_TOL = 1e-7;
export const ADAMW_TOL = 1e-6;

export interface CheckLine {
  name: string;
  ok: boolean;
  /** the measured error (relative max, relative L2 or absolute, see `what`) */
  error: number;
  what: string;
}

export interface GoldenReport {
  lines: CheckLine[];
  passed: number;
  failed: number;
}

const TRAINABLE = ['image_encoder.', 'sam_mask_decoder.'];

export const GOLDEN_SECTIONS = ['weights', 'forward', 'gradients', 'adamw', 'propagation'] as const;
export type GoldenSection = (typeof GOLDEN_SECTIONS)[number];

function nchw(x: tf.Tensor): tf.Tensor {
  return x.rank === 4 ? tf.transpose(x, [0, 3, 1, 2]) : x;
}

/** Runs every check of the fixture in `dir`; `log` gets one line per tensor as it goes. */
export async function runGoldenCheck(
  dir: string,
  log: (line: string) => void = console.log,
  opts: { onnx?: boolean; backend?: BackendName; threads?: number; sections?: GoldenSection[] } = {},
): Promise<GoldenReport> {
  const run = new Set(opts.sections ?? GOLDEN_SECTIONS);
  const { device } = await selectBackend(opts.backend ?? 'cpu', { quiet: true, threads: opts.threads });
  log(`backend ${tf.getBackend()} (${device})`);
  const lines: CheckLine[] = [];
  const record = (name: string, error: number, limit: number, what: string, note = '') => {
    const ok = Number.isFinite(error) && error <= limit;
    lines.push({ name, ok, error, what });
    log(`${ok ? 'ok  ' : 'FAIL'} ${name.padEnd(72)} ${what} ${error.toExponential(2)} (limit ${limit.toExponential(0)})${note}`);
  };
  const fail = (name: string, why: string) => {
    lines.push({ name, ok: false, error: NaN, what: why });
    log(`FAIL ${name.padEnd(72)} ${why}`);
  };

  const meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8'));
  const model = new SAM2Base(resolveModelConfig(meta.model_config));
  const specs = model.paramSpecs();
  const inputs = readNpz(join(dir, 'inputs.npz'));
  const expected = readNpz(join(dir, 'expected.npz'));

  // --- weights: .pt and .safetensors must agree --------------------------------------------
  const fromSafetensors = loadStateDict(specs, readSafetensors(join(dir, 'weights.safetensors')), { source: 'weights.safetensors' }).params;
  let fromPt: StateDict | undefined;
  if (run.has('weights') && existsSync(join(dir, 'weights.pt'))) {
    try {
      fromPt = loadStateDict(specs, readStateDict(join(dir, 'weights.pt')), { source: 'weights.pt' }).params;
      let diff = 0;
      for (const [k, t] of fromSafetensors) {
        const p = fromPt.get(k)!;
        for (let i = 0; i < t.data.length; i++) diff = Math.max(diff, Math.abs(t.data[i] - p.data[i]));
      }
      record('weights.pt == weights.safetensors (every tensor)', diff, 0, 'max abs diff');
    } catch (err) {
      fail('weights.pt', (err as Error).message.split('\n')[0]);
    }
  }

  const isTrainable = (k: string) => TRAINABLE.some((p) => k.startsWith(p));
  const params = toTfParams(fromSafetensors, { trainable: isTrainable });
  const ops = new TfOps(params);
  const image = tf.tidy(() => tf.transpose(tf.tensor(inputs.image.data as Float32Array, inputs.image.shape), [0, 2, 3, 1]));
  const box = inputs.box;
  // a fresh tensor per use: predictFromBoxes validates the box values, which a backend that keeps
  // tensors on the GPU (webgpu) has only until the tensor's first upload
  const boxTensor = () => tf.tensor(box.data as Float32Array, box.shape);
  const gt = tf.tidy(() => tf.transpose(tf.tensor(inputs.gt.data as Float32Array, inputs.gt.shape), [0, 2, 3, 1]));
  const checkForward = async (name: string, ours: tf.Tensor) => {
    const ref: NpyArray | undefined = expected[name];
    if (!ref) return;
    if (ours.shape.join() !== ref.shape.join()) fail(name, `shape [${ours.shape}] vs reference [${ref.shape}]`);
    else record(name, maxRelError((await ours.data()) as Float32Array, ref.data as Float32Array), FORWARD_TOL, 'rel max err');
  };

  // --- forward -------------------------------------------------------------------------------
  // computed in one tidy, read back afterwards (readback is asynchronous on WebGPU)
  const forward = new Map<string, tf.Tensor>();
  // feature maps are channels-last here, NCHW in the reference; mask logits are (B, M, H, W) in both
  const check = (name: string, t: tf.Tensor, channelsLast = true) => {
    forward.set(name, tf.keep(channelsLast ? nchw(t) : t));
  };
  if (run.has('forward')) tf.tidy(() => {
    const trunk = model.imageEncoder.trunk.forward(ops, image);
    trunk.forEach((t, i) => check(`trunk.${i}`, t));
    const kept = trunk.length - model.imageEncoder.cfg.scalp;
    const neck = model.imageEncoder.neck.forward(ops, trunk, kept);
    const fpn = neck.features.slice(0, kept);
    if (model.config.use_high_res_features_in_sam) {
      fpn[0] = model.maskDecoder.convS0(ops, fpn[0]);
      fpn[1] = model.maskDecoder.convS1(ops, fpn[1]);
    }
    fpn.forEach((t, i) => check(`fpn.${i}`, t));
    neck.pos.forEach((t, i) => check(`pos.${i}`, t));
    const { imageEmbed, highRes } = model.imageEmbeddings(ops, image);
    check('image_embed', imageEmbed);
    highRes.forEach((t, i) => check(`high_res.${i}`, t));
    const b = box.shape[0];
    const coords = tf.reshape(boxTensor(), [b, 2, 2]);
    const labels = tf.tensor(Array.from({ length: b }, () => [2, 3]).flat(), [b, 2]);
    const { sparse, dense } = model.promptEncoder.forward(ops, { points: { coords, labels } });
    const densePe = model.promptEncoder.densePe(ops);
    check('sparse', sparse);
    check('dense', dense);
    check('dense_pe', densePe);
    for (const [prefix, multimaskOutput] of [['single', false], ['multi', true]] as const) {
      const out = model.maskDecoder.forward(ops, { imageEmbeddings: imageEmbed, imagePe: densePe, sparse, dense, multimaskOutput, highResFeatures: highRes });
      check(`${prefix}.masks`, out.masks, false);
      check(`${prefix}.iou`, out.iouPred);
      check(`${prefix}.tokens`, out.samTokensOut);
      check(`${prefix}.obj`, out.objectScoreLogits);
    }
    const logits = tf.reshape(model.predictFromBoxes(ops, image, boxTensor()).masks, gt.shape);
    check('loss.dice', diceLoss(logits, gt));
    check('loss.bce', bceWithLogits(logits, gt));
  });
  for (const [name, t] of forward) await checkForward(name, t);
  tf.dispose([...forward.values()]);
  if (run.has('forward')) for (const name of Object.keys(expected)) if (!forward.has(name)) fail(name, 'reference tensor this check does not compute');

  // the .pt weights give the same masks
  if (fromPt) {
    const ptParams = toTfParams(fromPt, { trainable: () => false });
    const masks = tf.tidy(() => model.predictFromBoxes(new TfOps(ptParams), image, boxTensor()).masks);
    const ref = expected['single.masks'];
    record('single.masks with weights.pt', maxRelError((await masks.data()) as Float32Array, ref.data as Float32Array), FORWARD_TOL, 'rel max err');
    tf.dispose([masks, ...ptParams.values()]);
  }

  // --- gradients -----------------------------------------------------------------------------
  const refGrads = readSafetensors(join(dir, 'grads.safetensors'));
  const trainable = [...params].filter(([, v]) => v.trainable);
  const keyOf = new Map(trainable.map(([k, v]) => [v.name, k]));
  if (run.has('gradients')) {
    const { value, grads } = variableGrads(() => {
      const logits = tf.reshape(model.predictFromBoxes(ops, image, boxTensor()).masks, gt.shape);
      return tf.add(diceLoss(logits, gt), bceWithLogits(logits, gt)) as tf.Scalar;
    }, trainable.map(([, v]) => v));
    value.dispose();
    const ours = new Map(Object.entries(grads).map(([name, g]) => [keyOf.get(name)!, g]));
    for (const [k, ref] of [...refGrads].sort(([a], [b]) => a.localeCompare(b))) {
      const g = ours.get(k);
      if (!g) {
        fail(`grad ${k}`, 'no gradient here, the reference has one');
        continue;
      }
      const o = await g.data();
      let diff = 0;
      let norm = 0;
      for (let i = 0; i < ref.data.length; i++) {
        diff += (o[i] - ref.data[i]) ** 2;
        norm += ref.data[i] ** 2;
      }
      diff = Math.sqrt(diff);
      norm = Math.sqrt(norm);
      if (norm <= GRAD_ABS_TOL / GRAD_REL_TOL) record(`grad ${k}`, diff, GRAD_ABS_TOL, 'abs L2 err', ' (reference ~0)');
      else record(`grad ${k}`, diff / norm, GRAD_REL_TOL, 'rel L2 err');
    }
    for (const k of ours.keys()) if (!refGrads.has(k)) fail(`grad ${k}`, 'gradient here, the reference has none');
    for (const [k, v] of params) if (!v.trainable && refGrads.has(k)) fail(`grad ${k}`, 'frozen here, the reference trains it');
    tf.dispose([...ours.values()]);
  }

  // --- AdamW from the reference gradients ----------------------------------------------------
  const adamPath = join(dir, 'adamw_step1.safetensors');
  if (run.has('adamw') && existsSync(adamPath)) {
    const step = meta.train_step ?? { lr: 1e-3, weight_decay: 0.01 };
    const vars = new Map(trainable.map(([k, v]) => [k, tf.variable(v.clone(), true)]));
    const opt = new AdamW(vars, buildParamGroups(vars, { lr: step.lr, weightDecay: step.weight_decay }), step.betas ?? [0.9, 0.999], step.eps ?? 1e-8);
    const g = new Map([...refGrads].map(([k, t]) => [k, tf.tensor(t.data, t.shape)]));
    opt.step(g);
    for (const [k, ref] of readSafetensors(adamPath)) {
      const v = vars.get(k);
      if (!v) {
        fail(`adamw ${k}`, 'not a trainable parameter here');
        continue;
      }
      const o = await v.data();
      let err = 0;
      for (let i = 0; i < ref.data.length; i++) err = Math.max(err, Math.abs(o[i] - ref.data[i]));
      record(`adamw ${k}`, err, ADAMW_TOL, 'max abs err');
    }
    opt.dispose();
    tf.dispose([...g.values(), ...vars.values()]);
  }

  const propPath = join(dir, 'propagation.npz');
  if (run.has('propagation') && existsSync(propPath)) {
    const graphs = new TfFrameGraphs(model, params);
    for (const line of await checkGoldenPropagation(graphs, readNpz(propPath))) {
      record(`propagation ${line.name}`, line.error, PROPAGATION_TOL, 'rel max err');
      record(`propagation ${line.name} masks>0 disagreement`, 1 - line.agreement, 1 - PROPAGATION_AGREEMENT, 'fraction');
    }
  }

  if (opts.onnx) {
    const onnx = await onnxGoldenCheck(dir);
    for (const l of onnx.lines) {
      if (l.what === 'mask agreement') record(`onnx ${l.name} masks>0 disagreement`, 1 - l.value, 1 - l.tolerance, 'fraction');
      else record(`onnx ${l.name}`, l.value, l.tolerance, l.what);
    }
  }

  tf.dispose([image, gt, ...params.values()]);
  const passed = lines.filter((l) => l.ok).length;
  const failed = lines.length - passed;
  log(`${passed} passed, ${failed} failed`);
  return { lines, passed, failed };
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { onnx: { type: 'boolean' }, backend: { type: 'string', default: 'cpu' }, threads: { type: 'string' } },
  });
  const backend = values.backend as BackendName;
  const threads = values.threads === undefined ? undefined : Number(values.threads);
  if (positionals.length !== 1 || !BACKEND_NAMES.includes(backend) || (threads !== undefined && !(Number.isInteger(threads) && threads > 0))) {
    console.error(`usage: npx tsx scripts/golden-check.ts <fixture-dir> [--onnx] [--backend ${BACKEND_NAMES.join('|')}] [--threads N]`);
    process.exit(2);
  }
  const report = await runGoldenCheck(positionals[0], console.log, { onnx: values.onnx, backend, threads });
  process.exit(report.failed > 0 ? 1 : 0);
}
