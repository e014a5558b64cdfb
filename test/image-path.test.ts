/**
 * Image path parity with the official SAM2 (golden small256 fixture): prompt encoder,
 * two-way transformer + mask decoder, and SAM2Base end to end (image -> box -> masks).
 */
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SAM2_1_TINY, SAM2_TINY, type Sam2Config } from '../src/model/config.js';
import { MaskDecoder, type MaskDecoderOutput } from '../src/model/mask-decoder.js';
import type { NpyArray } from '../src/io/npz.js';
import { readSafetensors } from '../src/io/safetensors.js';
import type { ParamSpec } from '../src/model/ops.js';
import { PromptEncoder } from '../src/model/prompt-encoder.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { segmentationLoss } from '../src/train/loss.js';
import { GOLDEN_DIR, loadGolden, nchwToNhwc, relMaxError } from './helpers/golden.js';

const TOL = 1e-4;
const golden = loadGolden();
const ops = new TfOps(golden.params);
const toNchw = (x: tf.Tensor) => tf.transpose(x, [0, 3, 1, 2]);

/** The image-path heads exactly as SAM2Base builds them. */
function buildHeads(config: Sam2Config): { pe: PromptEncoder; md: MaskDecoder } {
  const m = new SAM2Base(config);
  return { pe: m.promptEncoder, md: m.maskDecoder };
}

function check(name: string, ours: tf.Tensor, nchw = false): number {
  const ref = golden.expected[name];
  if (!ref) throw new Error(`no expected '${name}' in the fixture`);
  const t = nchw ? toNchw(ours) : ours;
  expect(t.shape).toEqual(ref.shape);
  const err = relMaxError(t, ref);
  console.log(`${name.padEnd(14)} (${ref.shape.join('x')}) rel max error ${err.toExponential(2)}`);
  if (t !== ours) t.dispose();
  expect(err).toBeLessThanOrEqual(TOL);
  return err;
}

function boxAsPoints(box: tf.Tensor): { coords: tf.Tensor; labels: tf.Tensor } {
  const b = box.shape[0];
  return {
    coords: tf.reshape(box, [b, 2, 2]),
    labels: tf.tensor(Array.from({ length: b }, () => [2, 3]).flat(), [b, 2]),
  };
}

function specMap(specs: ParamSpec[]): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const s of specs) {
    expect(out[s.name], `duplicate spec ${s.name}`).toBeUndefined();
    out[s.name] = s.shape;
  }
  return out;
}

const boxInput = () => tf.tensor(golden.inputs.box.data as Float32Array, golden.inputs.box.shape);

describe('parameter specs', () => {
  it('match the fixture state dict for the prompt encoder and mask decoder', () => {
    const { pe, md } = buildHeads(golden.config);
    for (const [mod, prefix] of [
      [pe, 'sam_prompt_encoder.'],
      [md, 'sam_mask_decoder.'],
    ] as const) {
      const want: Record<string, number[]> = {};
      for (const [name, t] of golden.params) if (name.startsWith(prefix)) want[name] = t.shape;
      expect(specMap(mod.paramSpecs())).toEqual(want);
    }
  });

  it('match the official sam2.1 / sam2 tiny state dicts, in state-dict order', () => {
    const shapes = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'sam2_tiny_state_dict_shapes.json'), 'utf8'));
    for (const [cfgName, config] of [
      ['sam2.1/sam2.1_hiera_t', SAM2_1_TINY],
      ['sam2/sam2_hiera_t', SAM2_TINY],
    ] as const) {
      const keys: Record<string, number[]> = shapes[cfgName].keys;
      const { pe, md } = buildHeads(config);
      for (const [mod, prefix] of [
        [pe, 'sam_prompt_encoder.'],
        [md, 'sam_mask_decoder.'],
      ] as const) {
        const want = Object.entries(keys).filter(([k]) => k.startsWith(prefix));
        const got = mod.paramSpecs().map((s) => [s.name, s.shape]);
        expect(got).toEqual(want);
        const count = got.reduce((n, [, s]) => n + (s as number[]).reduce((a, b) => a * b, 1), 0);
        expect(count).toBe(shapes[cfgName].by_module[prefix.slice(0, -1)]);
      }
    }
  });
});

describe('prompt encoder', () => {
  const { pe } = buildHeads(golden.config);

  it('box as two points (labels 2, 3) + padding point matches sparse, dense, dense_pe', () => {
    tf.tidy(() => {
      const { sparse, dense } = pe.forward(ops, { points: boxAsPoints(boxInput()) });
      expect(sparse.shape).toEqual([1, 3, 32]);
      check('sparse', sparse);
      check('dense', dense, true);
      check('dense_pe', pe.densePe(ops), true);
    });
  });

  it('labels are selected arithmetically: every label value, a batch, boxes and masks', () => {
    tf.tidy(() => {
      const p = (n: string) => golden.params.get(`sam_prompt_encoder.${n}`)!;
      const coords = tf.tensor([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [2, 5, 2]);
      const labels = tf.tensor([-1, 0, 1, 2, 3, 3, 2, 1, 0, -1], [2, 5]);
      const { sparse } = pe.forward(ops, { points: { coords, labels } });
      expect(sparse.shape).toEqual([2, 6, 32]);
      const posEnc = pe.peLayer.forwardWithCoords(ops, tf.add(coords, 0.5), [256, 256]);
      const lab = labels.arraySync() as number[][];
      for (let b = 0; b < 2; b++) {
        for (let n = 0; n < 6; n++) {
          const l = n < 5 ? lab[b][n] : -1;
          const got = tf.reshape(tf.slice(sparse, [b, n, 0], [1, 1, 32]), [32]);
          const want =
            l === -1
              ? tf.reshape(p('not_a_point_embed.weight'), [32])
              : tf.add(tf.reshape(tf.slice(posEnc, [b, n, 0], [1, 1, 32]), [32]), tf.reshape(p(`point_embeddings.${l}.weight`), [32]));
          expect(tf.max(tf.abs(tf.sub(got, want))).dataSync()[0]).toBe(0);
        }
      }
      // boxes=(B,4) gives the same tokens as the two corner points, without a padding point
      const box = boxInput();
      const viaBox = pe.forward(ops, { boxes: box });
      const viaPts = pe.forward(ops, { points: boxAsPoints(box) });
      expect(viaBox.sparse.shape).toEqual([1, 2, 32]);
      expect(tf.max(tf.abs(tf.sub(viaBox.sparse, tf.slice(viaPts.sparse, [0, 0, 0], [1, 2, 32])))).dataSync()[0]).toBe(0);
      // points + boxes: no padding point
      expect(pe.forward(ops, { points: boxAsPoints(box), boxes: box }).sparse.shape).toEqual([1, 4, 32]);
      // mask input: (B, 4h, 4w, 1) and (B, 1, 4h, 4w) both give (B, h, w, C)
      const mask = tf.randomNormal([2, 64, 64, 1], 0, 1, 'float32', 7);
      const d1 = pe.forward(ops, { masks: mask }).dense;
      const d2 = pe.forward(ops, { masks: tf.reshape(mask, [2, 1, 64, 64]) }).dense;
      expect(d1.shape).toEqual([2, 16, 16, 32]);
      expect(tf.max(tf.abs(tf.sub(d1, d2))).dataSync()[0]).toBe(0);
    });
  });

  it('mask input path matches a plain-JS transcription of the official mask_downscaling', () => {
    const [S, C] = [64, 32];
    const w = (n: string) => golden.params.get(`sam_prompt_encoder.mask_downscaling.${n}`)!.dataSync();
    const maskT = tf.randomNormal([1, S, S, 1], 0, 3, 'float32', 11);
    const mask = maskT.dataSync();
    const ours = tf.tidy(() => toNchw(pe.forward(ops, { masks: maskT }).dense));
    // NCHW float64 reference: Conv2d(k=s), LayerNorm2d(eps 1e-6), exact GELU
    type Map3 = { c: number; h: number; w: number; v: Float64Array };
    const conv = (x: Map3, wt: ArrayLike<number>, bias: ArrayLike<number>, cout: number, k: number): Map3 => {
      const h = x.h / k;
      const ww = x.w / k;
      const v = new Float64Array(cout * h * ww);
      for (let o = 0; o < cout; o++)
        for (let y = 0; y < h; y++)
          for (let xx = 0; xx < ww; xx++) {
            let acc = bias[o];
            for (let i = 0; i < x.c; i++)
              for (let ky = 0; ky < k; ky++)
                for (let kx = 0; kx < k; kx++) acc += wt[((o * x.c + i) * k + ky) * k + kx] * x.v[(i * x.h + y * k + ky) * x.w + xx * k + kx];
            v[(o * h + y) * ww + xx] = acc;
          }
      return { c: cout, h, w: ww, v };
    };
    const erf = (z: number) => {
      // Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)
      const t = 1 / (1 + 0.3275911 * Math.abs(z));
      const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-z * z);
      return z >= 0 ? y : -y;
    };
    const lnGelu = (x: Map3, g: ArrayLike<number>, b: ArrayLike<number>): Map3 => {
      const n = x.h * x.w;
      const v = new Float64Array(x.v.length);
      for (let p = 0; p < n; p++) {
        let mean = 0;
        for (let i = 0; i < x.c; i++) mean += x.v[i * n + p] / x.c;
        let vr = 0;
        for (let i = 0; i < x.c; i++) vr += (x.v[i * n + p] - mean) ** 2 / x.c;
        for (let i = 0; i < x.c; i++) {
          const u = ((x.v[i * n + p] - mean) / Math.sqrt(vr + 1e-6)) * g[i] + b[i];
          v[i * n + p] = 0.5 * u * (1 + erf(u / Math.SQRT2));
        }
      }
      return { ...x, v };
    };
    let x: Map3 = { c: 1, h: S, w: S, v: Float64Array.from(mask) };
    x = lnGelu(conv(x, w('0.weight'), w('0.bias'), 4, 2), w('1.weight'), w('1.bias'));
    x = lnGelu(conv(x, w('3.weight'), w('3.bias'), 16, 2), w('4.weight'), w('4.bias'));
    x = conv(x, w('6.weight'), w('6.bias'), C, 1);
    const err = relMaxError(ours, { shape: [1, C, 16, 16], data: Float32Array.from(x.v) } as unknown as NpyArray);
    console.log(`mask path (1x32x16x16) rel max error vs JS transcription ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(TOL);
    tf.dispose([maskT, ours]);
  });

  it('rejects malformed prompts with clear errors', () => {
    tf.tidy(() => {
      const labels = tf.tensor([[2, 3]]);
      expect(() => pe.forward(ops, { points: { coords: tf.zeros([2, 2]), labels } })).toThrow(/point coords must be \(B, N, 2\)/);
      expect(() => pe.forward(ops, { points: { coords: tf.zeros([1, 2, 3]), labels } })).toThrow(/point coords must be \(B, N, 2\)/);
      expect(() => pe.forward(ops, { points: { coords: tf.zeros([1, 3, 2]), labels } })).toThrow(/point labels must be \(1, 3\)/);
      expect(() => pe.forward(ops, { boxes: tf.zeros([1, 2, 2]) })).toThrow(/boxes must be \(B, 4\)/);
      expect(() => pe.forward(ops, { masks: tf.zeros([1, 32, 32, 1]) })).toThrow(/masks must be/);
      expect(() => pe.forward(ops, { points: { coords: tf.zeros([1, 2, 2]), labels }, boxes: tf.zeros([2, 4]) })).toThrow(/batch/);
    });
  });
});

describe('mask decoder on the reference image features', () => {
  const { pe, md } = buildHeads(golden.config);
  const run = (multimaskOutput: boolean) => {
    const { sparse, dense } = pe.forward(ops, { points: boxAsPoints(boxInput()) });
    return md.forward(ops, {
      imageEmbeddings: nchwToNhwc(golden.expected.image_embed),
      imagePe: pe.densePe(ops),
      sparse,
      dense,
      multimaskOutput,
      highResFeatures: [nchwToNhwc(golden.expected['high_res.0']), nchwToNhwc(golden.expected['high_res.1'])],
    });
  };

  for (const [mode, multi] of [
    ['single', false],
    ['multi', true],
  ] as const) {
    it(`${mode}-mask output matches masks, iou, tokens, obj`, () => {
      tf.tidy(() => {
        const out = run(multi);
        check(`${mode}.masks`, out.masks);
        check(`${mode}.iou`, out.iouPred);
        check(`${mode}.tokens`, out.samTokensOut);
        check(`${mode}.obj`, out.objectScoreLogits);
      });
    });
  }

  it('decoder gradients of dice + bce on single.masks match the reference grads', () => {
    // conv_s0 / conv_s1 act on backbone maps the fixture does not hold: they are checked end to end elsewhere
    const refGrads = readSafetensors(join(GOLDEN_DIR, 'grads.safetensors'));
    const names = [...golden.params.keys()].filter((n) => n.startsWith('sam_mask_decoder.') && !/\.conv_s[01]\./.test(n));
    const vars = new Map<string, tf.Tensor>(golden.params);
    const trainable = names.map((n) => {
      const v = tf.variable(golden.params.get(n)!, true, `image-path-grad/${n}`);
      vars.set(n, v);
      return v;
    });
    const trainOps = new TfOps(vars);
    const inputs = tf.tidy(() => {
      const { sparse, dense } = pe.forward(ops, { points: boxAsPoints(boxInput()) });
      const hr: [tf.Tensor, tf.Tensor] = [nchwToNhwc(golden.expected['high_res.0']), nchwToNhwc(golden.expected['high_res.1'])];
      return { sparse, dense, imagePe: pe.densePe(ops), imageEmbeddings: nchwToNhwc(golden.expected.image_embed), hr };
    });
    const gt = tf.tensor(golden.inputs.gt.data as Float32Array, [1, 64, 64, 1]);
    const { value, grads } = tf.variableGrads(() => {
      const out = md.forward(trainOps, { ...inputs, highResFeatures: inputs.hr, multimaskOutput: false });
      return segmentationLoss(tf.reshape(out.masks, [1, 64, 64, 1]), gt).loss;
    }, trainable);
    const refLoss = (golden.expected['loss.dice'].data as Float32Array)[0] + (golden.expected['loss.bce'].data as Float32Array)[0];
    expect(Math.abs(value.dataSync()[0] - refLoss)).toBeLessThan(1e-5);
    let worst = 0;
    let checked = 0;
    for (let i = 0; i < names.length; i++) {
      const ref = refGrads.get(names[i]);
      const g = grads[trainable[i].name];
      if (!ref) {
        // no reference gradient: the loss does not reach it (IoU and object-score heads)
        expect(names[i]).toMatch(/iou_prediction_head|pred_obj_score_head/);
        if (g) expect(tf.max(tf.abs(g)).dataSync()[0]).toBe(0);
        continue;
      }
      expect(g, names[i]).toBeDefined();
      const o = g.dataSync();
      let d2 = 0;
      let r2 = 0;
      for (let j = 0; j < o.length; j++) {
        d2 += (o[j] - ref.data[j]) ** 2;
        r2 += ref.data[j] ** 2;
      }
      const [diff, norm] = [Math.sqrt(d2), Math.sqrt(r2)];
      const rel = norm < 1e-7 ? diff : diff / norm;
      expect(rel, names[i]).toBeLessThanOrEqual(norm < 1e-7 ? 1e-7 : 1e-3);
      worst = Math.max(worst, rel);
      checked++;
    }
    console.log(`decoder grads: ${checked} tensors, worst relative L2 error ${worst.toExponential(2)}`);
    tf.dispose([value, gt, ...Object.values(grads), ...trainable, inputs.sparse, inputs.dense, inputs.imagePe, inputs.imageEmbeddings, ...inputs.hr]);
  });

  it('rejects high-res features of the wrong size', () => {
    tf.tidy(() => {
      const { sparse, dense } = pe.forward(ops, { points: boxAsPoints(boxInput()) });
      const hr0 = nchwToNhwc(golden.expected['high_res.0']);
      expect(() =>
        md.forward(ops, {
          imageEmbeddings: nchwToNhwc(golden.expected.image_embed),
          imagePe: pe.densePe(ops),
          sparse,
          dense,
          multimaskOutput: false,
          highResFeatures: [hr0, hr0],
        }),
      ).toThrow(/highResFeatures\[1\]/);
    });
  });
});

describe('SAM2Base image path end to end', () => {
  const model = new SAM2Base(golden.config);
  const image = () => nchwToNhwc(golden.inputs.image);

  it('image -> embeddings -> prompt encoder -> decoder matches every reference tensor; predictFromBoxes end to end', () => {
    tf.tidy(() => {
      const img = image();
      const { imageEmbed, highRes } = model.imageEmbeddings(ops, img);
      check('image_embed', imageEmbed, true);
      check('high_res.0', highRes[0], true);
      check('high_res.1', highRes[1], true);
      const { sparse, dense } = model.promptEncoder.forward(ops, { points: boxAsPoints(boxInput()) });
      check('sparse', sparse);
      check('dense', dense, true);
      const imagePe = model.promptEncoder.densePe(ops);
      check('dense_pe', imagePe, true);
      for (const [mode, multi] of [
        ['single', false],
        ['multi', true],
      ] as const) {
        const out = model.maskDecoder.forward(ops, { imageEmbeddings: imageEmbed, imagePe, sparse, dense, multimaskOutput: multi, highResFeatures: highRes });
        check(`${mode}.masks`, out.masks);
        check(`${mode}.iou`, out.iouPred);
        check(`${mode}.tokens`, out.samTokensOut);
        check(`${mode}.obj`, out.objectScoreLogits);
      }

      // the whole fine-tuning forward in one call (timed: one forward at 256 on this backend)
      const box = boxInput();
      const t0 = performance.now();
      const out: MaskDecoderOutput<tf.Tensor> = model.predictFromBoxes(ops, img, box, false);
      out.masks.dataSync();
      const ms = performance.now() - t0;
      console.log(`predictFromBoxes forward at ${golden.config.image_size} (${tf.getBackend()} backend): ${ms.toFixed(0)} ms`);
      check('single.masks', out.masks);
      check('single.iou', out.iouPred);
      check('single.tokens', out.samTokensOut);
      check('single.obj', out.objectScoreLogits);
    });
  });

  it('keeps the live tensor count flat over repeated forward + backward passes', () => {
    const vars = new Map<string, tf.Tensor>(golden.params);
    const trainable: tf.Variable[] = [];
    for (const [name, t] of golden.params) {
      if (!name.startsWith('sam_mask_decoder.')) continue;
      const v = tf.variable(t, true, `image-path-test/${name}`);
      vars.set(name, v);
      trainable.push(v);
    }
    const trainOps = new TfOps(vars);
    const img = image();
    const box = boxInput();
    const counts: number[] = [tf.memory().numTensors];
    for (let i = 0; i < 3; i++) {
      const { value, grads } = tf.variableGrads(() => {
        const out = model.predictFromBoxes(trainOps, img, box, false);
        return tf.addN([tf.mean(tf.square(out.masks)), tf.mean(out.iouPred), tf.mean(out.objectScoreLogits)]) as tf.Scalar;
      }, trainable);
      // every decoder parameter is reached (the object-score head through objectScoreLogits)
      expect(Object.keys(grads).length).toBe(trainable.length);
      expect(Number.isFinite(value.dataSync()[0])).toBe(true);
      value.dispose();
      tf.dispose(Object.values(grads));
      counts.push(tf.memory().numTensors);
    }
    console.log(`live tensors after each pass: ${counts.join(', ')}`);
    expect(counts).toEqual([counts[0], counts[0], counts[0], counts[0]]);
    img.dispose();
    box.dispose();
    for (const v of trainable) v.dispose();
  });

  it('rejects malformed boxes (box values are checked where they enter: predict, test/onnx-export.test.ts)', () => {
    tf.tidy(() => {
      const img = image();
      expect(() => model.predictFromBoxes(ops, img, tf.tensor([[10, 10, 30]]))).toThrow(/boxes must be \(B, 4\)/);
      expect(() => model.predictFromBoxes(ops, img, tf.tensor([[10, 10, 30, 40], [1, 2, 3, 4]]))).toThrow(/batch/);
    });
  });
});
