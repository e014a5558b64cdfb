/**
 * Scaled dot-product attention as one op, for backends that register fused kernels for it
 * (src/backends/webgpu-attention.ts). Built from products and a softmax, attention keeps the
 * (queries x keys) probabilities for its backward pass: at 1024 a global Hiera block at batch 16
 * holds 4 GiB of them. The fused op keeps each query row's log-sum-exp instead and recomputes the
 * probabilities in its gradient, for ~1.8x the multiply-adds. The model stays backend-blind:
 * TfOps.attention uses this for scores over its budget where the active backend has the kernels,
 * and products and a softmax (in query chunks) elsewhere.
 */
import * as tf from '@tensorflow/tfjs-core';

/** softmax(q k^T * scale) v over (batch, keys, d); inputs q, k, v; attr scale; outputs [out, lse] (lse: (batch, queries)). */
export const FUSED_ATTENTION = 'MedtuneAttention';
/** The gradients of FUSED_ATTENTION; inputs q, k, v, out, lse, dy; attr scale; outputs [dq, dk, dv]. */
export const FUSED_ATTENTION_GRAD = 'MedtuneAttentionGrad';

/** Whether the active backend runs attention over heads of `headDim` channels (q, k and v alike) fused. */
export function hasFusedAttention(headDim: number): boolean {
  return headDim % 4 === 0 && tf.getKernel(FUSED_ATTENTION, tf.getBackend()) !== undefined;
}

/** q (B, H, Nq, d), k and v (B, H, Nk, d) -> (B, H, Nq, d). */
export function fusedAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor): tf.Tensor {
  const [b, h, nq, d] = q.shape as number[];
  const nk = k.shape[2] as number;
  const scale = 1 / Math.sqrt(d);
  const run = (name: string, inputs: tf.NamedTensorMap) => tf.engine().runKernel(name, inputs, { scale }) as unknown as tf.Tensor[];
  const op = tf.customGrad((...args: unknown[]) => {
    const [qi, ki, vi, save] = args as [tf.Tensor, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const [out, lse] = run(FUSED_ATTENTION, { q: qi, k: ki, v: vi });
    save([qi, ki, vi, out, lse]);
    return {
      value: out,
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
        const [qs, ks, vs, outs, lses] = saved;
        return run(FUSED_ATTENTION_GRAD, { q: qs, k: ks, v: vs, out: outs, lse: lses, dy: dy as tf.Tensor });
      },
    };
  });
  return tf.tidy(() => {
    const rows = (x: tf.Tensor, n: number) => tf.reshape(x, [b * h, n, d]);
    return tf.reshape(op(rows(q, nq), rows(k, nk), rows(v, nk)), [b, h, nq, d]);
  });
}
