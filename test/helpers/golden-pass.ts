/**
 * One training pass of the golden small256 model, for tests that compare ways of taking its
 * gradients (checkpointing, the freeing backward pass).
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { SAM2Base } from '../../src/model/sam2.js';
import { TfOps } from '../../src/model/tf-ops.js';
import { loadGolden, nchwToNhwc } from './golden.js';

type VariableGrads = (f: () => tf.Scalar, vars: tf.Variable[]) => { value: tf.Scalar; grads: tf.NamedTensorMap };

const golden = loadGolden();
const model = new SAM2Base(golden.config);
const size = golden.config.image_size;
const isTrained = (name: string) => name.startsWith('image_encoder.') || name.startsWith('sam_mask_decoder.');

export interface Pass {
  loss: number;
  grads: Map<string, Float32Array>;
  /** tfjs's peak of allocated tensor bytes during the forward + backward */
  peakBytes: number;
}

/**
 * One forward + backward of predictFromBoxes on the golden model and inputs (trained: the image
 * encoder and the mask decoder), its gradients taken by `differentiate`.
 */
export async function goldenPass(checkpointActivations: boolean, differentiate: VariableGrads = tf.variableGrads): Promise<Pass> {
  const params = new Map(golden.params);
  const nameOf = new Map<string, string>();
  const vars: tf.Variable[] = [];
  for (const [name, t] of golden.params) {
    if (!isTrained(name)) continue;
    const v = tf.variable(t, true);
    params.set(name, v);
    vars.push(v);
    nameOf.set(v.name, name);
  }
  const ops = new TfOps(params, { checkpointActivations });
  const image = nchwToNhwc(golden.inputs.image);
  const boxes = tf.tensor(golden.inputs.box.data as Float32Array, [1, 4]);
  const m = size / 4;
  const target = tf.tensor(Array.from({ length: m * m }, (_, i) => (i % 7 < 3 ? 1 : 0)), [1, 1, m, m]);
  let result: { value: tf.Scalar; grads: tf.NamedTensorMap } | undefined;
  const profile = await tf.profile(() => {
    result = differentiate(() => {
      const out = model.predictFromBoxes(ops, image, boxes);
      return tf.add(tf.mean(tf.square(tf.sub(tf.sigmoid(out.masks), target))), tf.mean(out.iouPred)) as tf.Scalar;
    }, vars);
  });
  const { value, grads } = result!;
  const out: Pass = { loss: (await value.data())[0], grads: new Map(), peakBytes: profile.peakBytes };
  for (const [vname, g] of Object.entries(grads)) out.grads.set(nameOf.get(vname)!, (await g.data()) as Float32Array);
  tf.dispose([value, ...Object.values(grads), image, boxes, target, ...vars]);
  return out;
}

/** max |a - b| over the largest |b| of each gradient (floored): the worst gradient's figure. */
export function worstRelative(ours: Map<string, Float32Array>, ref: Map<string, Float32Array>): { name: string; error: number } {
  let worst = { name: '', error: 0 };
  for (const [name, r] of ref) {
    const o = ours.get(name)!;
    let diff = 0;
    let scale = 1e-12;
    for (let i = 0; i < r.length; i++) {
      diff = Math.max(diff, Math.abs(o[i] - r[i]));
      scale = Math.max(scale, Math.abs(r[i]));
    }
    if (diff / scale >= worst.error) worst = { name, error: diff / scale };
  }
  return worst;
}
