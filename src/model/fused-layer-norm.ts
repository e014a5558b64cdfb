/**
 * LayerNorm over the last axis as one op, for backends that register a fused kernel for it
 * (src/backends/webgpu-layer-norm.ts); the model stays backend-blind: TfOps.layerNorm uses this
 * where the active backend has the kernel, and `moments` elsewhere.
 */
import * as tf from '@tensorflow/tfjs-core';

/** y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis; inputs x, weight, bias; attr eps. */
export const FUSED_LAYER_NORM = 'MedtuneLayerNorm';
/** dL/dx of FUSED_LAYER_NORM; inputs dy, x, weight; attr eps. */
export const FUSED_LAYER_NORM_GRAD = 'MedtuneLayerNormGrad';

export function hasFusedLayerNorm(): boolean {
  return tf.getKernel(FUSED_LAYER_NORM, tf.getBackend()) !== undefined;
}

export function fusedLayerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
  const run = (name: string, inputs: tf.NamedTensorMap) => tf.engine().runKernel(name, inputs, { eps }) as tf.Tensor;
  const op = tf.customGrad((...args: unknown[]) => {
    const [xi, w, b, save] = args as [tf.Tensor, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    save([xi, w]);
    return {
      value: run(FUSED_LAYER_NORM, { x: xi, weight: w, bias: b }),
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
        const [xs, ws] = saved;
        const g = dy as tf.Tensor;
        const rows = Array.from({ length: xs.rank - 1 }, (_, i) => i);
        // weight and bias gradients sum over rows: the normalised input, then two reductions
        const xhat = run(FUSED_LAYER_NORM, { x: xs, weight: tf.onesLike(ws), bias: tf.zerosLike(ws) });
        return [run(FUSED_LAYER_NORM_GRAD, { dy: g, x: xs, weight: ws }), tf.sum(tf.mul(g, xhat), rows), tf.sum(g, rows)];
      },
    };
  });
  return op(x, weight, bias);
}
