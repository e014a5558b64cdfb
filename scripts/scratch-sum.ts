import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../src/backend.js';
import { resolveModelConfig } from '../src/model/config.js';
import { variableGrads } from '../src/model/gradients.js';
import { SAM2Base } from '../src/model/sam2.js';
import { TfOps } from '../src/model/tf-ops.js';
import { initParams, toTfParams } from '../src/model/weights.js';
import { segmentationLoss } from '../src/train/loss.js';
const S = 256;
await selectBackend('wasm', { quiet: true, threads: 2 });
const model = new SAM2Base(resolveModelConfig({ image_size: S }));
const params = toTfParams(initParams(model.paramSpecs(), 0), { trainable: (n) => n.startsWith('image_encoder.') || n.startsWith('sam_mask_decoder.') });
const trainable = [...params.values()].filter((v) => v.trainable) as tf.Variable[];
const ops = new TfOps(params);
const image = tf.randomNormal([1, S, S, 3], 0, 1, 'float32', 1);
const boxes = tf.tensor2d([[S * 0.2, S * 0.3, S * 0.6, S * 0.7]]);
const target = tf.tidy(() => tf.cast(tf.greater(tf.randomUniform([1, S / 4, S / 4, 1], 0, 1, 'float32', 2), 0.5), 'float32'));
function step() {
  const { value, grads } = variableGrads(() => {
    const masks = model.predictFromBoxes(ops, image, boxes).masks;
    const l = segmentationLoss(tf.transpose(masks, [0, 2, 3, 1]), target);
    tf.dispose([l.dice, l.bce]);
    return l.loss;
  }, trainable);
  value.dataSync();
  tf.dispose([value, ...Object.values(grads)]);
}
const rec = new Map<string, number[]>();
let on = false;
const k = tf.getKernel('Sum', 'wasm')!;
const f = k.kernelFunc;
(k as { kernelFunc: tf.KernelFunc }).kernelFunc = (args) => {
  const s = performance.now(); const out = f(args);
  if (on) { const x = (args.inputs as { x: tf.TensorInfo }).x; const key = `[${x.shape}] axis ${JSON.stringify((args.attrs as { axis: unknown }).axis)}`; const e = rec.get(key) ?? []; e.push(performance.now() - s); rec.set(key, e); }
  return out;
};
step(); on = true; step();
let tot = 0;
for (const [key, e] of [...rec].sort((a, b) => b[1].reduce((p, q) => p + q) - a[1].reduce((p, q) => p + q)).slice(0, 25)) { const sum = e.reduce((p, q) => p + q); tot += sum; console.log(sum.toFixed(1).padStart(7), `x${e.length}`, key); }
console.log('total', [...rec.values()].flat().reduce((p, q) => p + q).toFixed(0));
