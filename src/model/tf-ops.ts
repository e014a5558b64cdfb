import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's CommonJS build registers no gradients; the union package registers them all.
import '@tensorflow/tfjs';
import type { Conv2dOptions, Ops } from './ops.js';

/** Attention score tensors above this many bytes are computed in query chunks. */
const ATTENTION_CHUNK_BYTES = 256 * 1024 * 1024;

/** Runs model code eagerly on TensorFlow.js; parameters come from a name -> tensor map. */
export class TfOps implements Ops<tf.Tensor> {
  constructor(
    private readonly params: ReadonlyMap<string, tf.Tensor>,
    private readonly attentionChunkBytes = ATTENTION_CHUNK_BYTES,
  ) {}

  param(name: string): tf.Tensor {
    const p = this.params.get(name);
    if (!p) throw new Error(`model parameter '${name}' is not loaded`);
    return p;
  }
  constant(values: Float32Array | number[], shape: number[]): tf.Tensor {
    return tf.tensor(values instanceof Float32Array ? values : Float32Array.from(values), shape, 'float32');
  }
  shape(x: tf.Tensor): number[] {
    return x.shape;
  }

  add(a: tf.Tensor, b: tf.Tensor | number) {
    return tf.add(a, b);
  }
  sub(a: tf.Tensor, b: tf.Tensor | number) {
    return tf.sub(a, b);
  }
  mul(a: tf.Tensor, b: tf.Tensor | number) {
    return tf.mul(a, b);
  }
  div(a: tf.Tensor, b: tf.Tensor | number) {
    return tf.div(a, b);
  }
  neg(x: tf.Tensor) {
    return tf.neg(x);
  }
  sqrt(x: tf.Tensor) {
    return tf.sqrt(x);
  }
  exp(x: tf.Tensor) {
    return tf.exp(x);
  }
  sin(x: tf.Tensor) {
    return tf.sin(x);
  }
  cos(x: tf.Tensor) {
    return tf.cos(x);
  }
  sigmoid(x: tf.Tensor) {
    return tf.sigmoid(x);
  }
  relu(x: tf.Tensor) {
    return tf.relu(x);
  }
  gelu(x: tf.Tensor) {
    return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2)))));
  }
  equal(x: tf.Tensor, value: number) {
    return tf.tidy(() => tf.cast(tf.equal(x, value), 'float32'));
  }

  matMul(a: tf.Tensor, b: tf.Tensor, transposeA = false, transposeB = false) {
    return tf.matMul(a, b, transposeA, transposeB);
  }
  linear(x: tf.Tensor, weight: tf.Tensor, bias?: tf.Tensor) {
    return tf.tidy(() => {
      const inDim = x.shape[x.rank - 1];
      const outDim = weight.shape[0];
      let y = tf.matMul(tf.reshape(x, [-1, inDim]), weight, false, true);
      if (bias) y = tf.add(y, bias);
      return tf.reshape(y, [...x.shape.slice(0, -1), outDim]);
    });
  }
  softmax(x: tf.Tensor) {
    return tf.softmax(x);
  }
  attention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) {
    return tf.tidy(() => {
      const [b, h, nq, d] = q.shape as number[];
      const nk = (k.shape as number[])[2];
      const scale = 1 / Math.sqrt(d);
      const attend = (qc: tf.Tensor) => tf.matMul(tf.softmax(tf.mul(tf.matMul(qc, k, false, true), scale)), v);
      const scoreBytes = b * h * nq * nk * 4;
      if (scoreBytes <= this.attentionChunkBytes) return attend(q);
      const rows = Math.max(1, Math.floor((this.attentionChunkBytes / (b * h * nk * 4))));
      const chunks: tf.Tensor[] = [];
      for (let start = 0; start < nq; start += rows) {
        chunks.push(attend(tf.slice(q, [0, 0, start, 0], [b, h, Math.min(rows, nq - start), d])));
      }
      return tf.concat(chunks, 2);
    });
  }
  layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number) {
    return tf.tidy(() => {
      const { mean, variance } = tf.moments(x, -1, true);
      const normed = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
      return tf.add(tf.mul(normed, weight), bias);
    });
  }

  reshape(x: tf.Tensor, shape: number[]) {
    return tf.reshape(x, shape);
  }
  transpose(x: tf.Tensor, perm: number[]) {
    return tf.transpose(x, perm);
  }
  slice(x: tf.Tensor, begin: number[], size: number[]) {
    return tf.slice(x, begin, size);
  }
  concat(xs: tf.Tensor[], axis: number) {
    return tf.concat(xs, axis);
  }
  pad(x: tf.Tensor, paddings: Array<[number, number]>) {
    return tf.pad(x, paddings);
  }
  tile(x: tf.Tensor, reps: number[]) {
    return tf.tile(x, reps);
  }
  mean(x: tf.Tensor, axes: number[], keepDims = false) {
    return tf.mean(x, axes, keepDims);
  }
  sum(x: tf.Tensor, axes: number[], keepDims = false) {
    return tf.sum(x, axes, keepDims);
  }

  conv2d(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | undefined, opts: Conv2dOptions = {}) {
    return tf.tidy(() => {
      const { stride = 1, pad = 0, groups = 1 } = opts;
      const [outDim, inPerGroup, kh, kw] = weight.shape;
      if (kh === 1 && kw === 1 && groups === 1 && stride === 1 && pad === 0) {
        // a 1x1 conv is a per-pixel linear layer; matMul has fast gradients on every backend
        return this.linear(x, tf.reshape(weight, [outDim, inPerGroup]), bias);
      }
      const input = (pad > 0 ? tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) : x) as tf.Tensor4D;
      let y: tf.Tensor;
      if (groups === 1) {
        y = tf.conv2d(input, tf.transpose(weight, [2, 3, 1, 0]) as tf.Tensor4D, stride, 'valid');
      } else if (groups === outDim && inPerGroup === 1 && x.shape[3] === outDim) {
        y = tf.depthwiseConv2d(input, tf.transpose(weight, [2, 3, 0, 1]) as tf.Tensor4D, stride, 'valid');
      } else {
        throw new Error(`conv2d with groups=${groups} is not supported (only 1 and depthwise)`);
      }
      return bias ? tf.add(y, bias) : y;
    });
  }
  convTranspose2d(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | undefined, stride: number) {
    // kernel == stride: every input pixel writes its own k x k output block, so the op is a
    // matrix product followed by a depth-to-space rearrangement.
    return tf.tidy(() => {
      const [b, h, w, cin] = x.shape;
      const [, cout, k] = weight.shape;
      if (k !== stride) throw new Error(`convTranspose2d needs kernel == stride, got ${k} and ${stride}`);
      const blocks = tf.matMul(tf.reshape(x, [-1, cin]), tf.reshape(weight, [cin, cout * k * k]));
      const y = tf.reshape(
        tf.transpose(tf.reshape(blocks, [b, h, w, cout, k, k]), [0, 1, 4, 2, 5, 3]),
        [b, h * k, w * k, cout],
      );
      return bias ? tf.add(y, bias) : y;
    });
  }
  maxPool2d(x: tf.Tensor, size: number) {
    return tf.maxPool(x as tf.Tensor4D, size, size, 'valid');
  }
  resizeNearest(x: tf.Tensor, size: [number, number]) {
    return tf.image.resizeNearestNeighbor(x as tf.Tensor4D, size, false, false);
  }
  resizeBilinear(x: tf.Tensor, size: [number, number]) {
    return tf.image.resizeBilinear(x as tf.Tensor4D, size, false, true);
  }
}
