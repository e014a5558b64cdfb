import * as tf from '@tensorflow/tfjs-core';
// tfjs-core's CommonJS build registers no gradients; the union package registers them all.
import '@tensorflow/tfjs';
import type { Conv2dOptions, LinearAdapters, Ops } from './ops.js';
import { fusedAttention, hasFusedAttention } from './fused-attention.js';
import { fusedLayerNorm, hasFusedLayerNorm } from './fused-layer-norm.js';
import { gradients } from './gradients.js';
import { ATTENTION_BUDGET_FLAG } from '../backends/common.js';

/*
 * Matrix products take their transposes as flags (linear layers multiply by W (out, in)
 * transposed), so tfjs's own product gradients apply and no backend materializes a transpose it
 * can read in place. Every backend's product kernel takes the flags; on WASM medtune's
 * (backends/wasm-batch-matmul.ts) materializes the transposed operand for XNNPACK itself.
 */

/**
 * x == value as 0/1 floats. Piecewise constant, so its gradient is zero; tfjs has none for Equal,
 * and clip training back-propagates through masks gated by the object score (greaterThanZero).
 */
function equalTo(x: tf.Tensor, value: number): tf.Tensor {
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => ({
    value: tf.tidy(() => tf.cast(tf.equal(args[0] as tf.Tensor, value), 'float32')),
    gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy),
  }));
  return op(x);
}

/**
 * x (M, in) @ W^T (+ b) for a frozen W and b: only dX = dY @ W is computed (tfjs's product
 * gradient computes every input's, the frozen weight's too). W is saved for the
 * backward pass, not an input, so it gets no gradient.
 */
function frozenLinear2d(x: tf.Tensor, w: tf.Tensor, bias?: tf.Tensor): tf.Tensor {
  return tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const [input, save] = args as [tf.Tensor, tf.GradSaveFunc];
    save([w]);
    return {
      value: tf.fused.matMul({ a: input as tf.Tensor2D, b: w as tf.Tensor2D, transposeB: true, bias }),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => [tf.matMul(dy, saved[0])],
    };
  })(x);
}

/**
 * tf.matMul for operands of equal rank whose batch axes broadcast. tfjs's matMul gradient does not
 * sum over broadcast batch axes, so they are tiled explicitly (tile's gradient does). The
 * backend's BatchMatMul kernel runs it (on wasm, backends/wasm-batch-matmul.ts).
 */
function batchMatMul(a: tf.Tensor, b: tf.Tensor, transposeA: boolean, transposeB: boolean): tf.Tensor {
  if (a.rank < 3 || a.rank !== b.rank) return tf.matMul(a, b, transposeA, transposeB);
  const lead = a.shape.slice(0, -2).map((d, i) => Math.max(d, b.shape[i]));
  if (!lead.every((d, i) => (a.shape[i] === d || a.shape[i] === 1) && (b.shape[i] === d || b.shape[i] === 1))) {
    return tf.matMul(a, b, transposeA, transposeB); // tfjs reports the shape error
  }
  const broadcast = (t: tf.Tensor) => (t.shape.slice(0, -2).every((d, i) => d === lead[i]) ? t : tf.tile(t, [...lead.map((d, i) => d / t.shape[i]), 1, 1]));
  return tf.tidy(() => tf.matMul(broadcast(a), broadcast(b), transposeA, transposeB));
}

/** Attention score tensors above this many bytes are computed fused or in query chunks. */
const ATTENTION_CHUNK_BYTES = 256 * 1024 * 1024;

export interface TfOpsOptions {
  /** attention score tensors above this many bytes are computed fused (where the backend can) or in query chunks */
  attentionChunkBytes?: number;
  /** LoRA / bottleneck adapters the `linear` helpers apply */
  adapters?: LinearAdapters<tf.Tensor>;
  /** gradient checkpointing of the blocks model code passes to `checkpoint` */
  checkpointActivations?: boolean;
}

/**
 * Runs model code eagerly on TensorFlow.js; parameters come from a name -> tensor map.
 * With `checkpointActivations`, blocks passed to `checkpoint` keep only their inputs for the
 * backward pass and run again there.
 */
export class TfOps implements Ops<tf.Tensor> {
  /** slices of frozen parameters (e.g. Hiera's q, k, v weight blocks): frozen too */
  private readonly frozenSlices = new WeakSet<tf.Tensor>();

  private readonly attentionChunkBytes: number;
  readonly adapters?: LinearAdapters<tf.Tensor>;
  private readonly checkpointActivations: boolean;

  constructor(
    private readonly params: ReadonlyMap<string, tf.Tensor>,
    options: TfOpsOptions = {},
  ) {
    this.attentionChunkBytes = options.attentionChunkBytes ?? Math.min(ATTENTION_CHUNK_BYTES, Number(tf.env().getFlags()[ATTENTION_BUDGET_FLAG] ?? Infinity));
    this.adapters = options.adapters;
    this.checkpointActivations = options.checkpointActivations ?? false;
  }

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
    return equalTo(x, value);
  }

  matMul(a: tf.Tensor, b: tf.Tensor, transposeA = false, transposeB = false) {
    const unbatched = (t: tf.Tensor) => t.rank >= 2 && t.shape.slice(0, -2).every((d) => d === 1);
    if (unbatched(a) && unbatched(b)) {
      // one plain 2-D product (the rest of the shape is ones)
      return tf.tidy(() => {
        const a2 = tf.reshape(a, a.shape.slice(-2));
        const b2 = tf.reshape(b, b.shape.slice(-2));
        const y = tf.matMul(a2, b2, transposeA, transposeB);
        const lead = a.rank >= b.rank ? a.shape.slice(0, -2) : b.shape.slice(0, -2);
        return lead.length ? tf.reshape(y, [...lead, ...y.shape]) : y;
      });
    }
    if (!transposeA && b.rank === 2 && a.rank > 2) {
      // a batch of rows against one matrix: fold the batch into the rows
      return tf.tidy(() => {
        const k = a.shape[a.rank - 1];
        const y = tf.matMul(tf.reshape(a, [-1, k]), b, false, transposeB);
        return tf.reshape(y, [...a.shape.slice(0, -1), y.shape[1] as number]);
      });
    }
    return batchMatMul(a, b, transposeA, transposeB);
  }
  /** A parameter no gradient is taken for: a non-trainable variable (adapter runs' base weights) or a slice of one. */
  private frozen(t: tf.Tensor): boolean {
    return (t instanceof tf.Variable && !t.trainable) || this.frozenSlices.has(t);
  }

  linear(x: tf.Tensor, weight: tf.Tensor, bias?: tf.Tensor) {
    return tf.tidy(() => {
      const inDim = x.shape[x.rank - 1];
      const outDim = weight.shape[0];
      const x2 = tf.reshape(x, [-1, inDim]);
      const frozen = this.frozen(weight) && (!bias || (bias.rank === 1 && this.frozen(bias)));
      // W is (out, in): the product takes it transposed, as every backend's product kernel can
      const y = frozen
        ? frozenLinear2d(x2, weight, bias)
        : bias && bias.rank === 1
          ? tf.fused.matMul({ a: x2 as tf.Tensor2D, b: weight as tf.Tensor2D, transposeB: true, bias })
          : bias
            ? tf.add(tf.matMul(x2, weight, false, true), bias)
            : tf.matMul(x2, weight, false, true);
      return tf.reshape(y, [...x.shape.slice(0, -1), outDim]);
    });
  }
  softmax(x: tf.Tensor) {
    return tf.softmax(x);
  }
  /** Products and a softmax; above the score budget, fused where the backend can (no score matrix kept), else in query chunks. */
  attention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) {
    const [b, h, nq, d] = q.shape as number[];
    const nk = (k.shape as number[])[2];
    const scoreBytes = b * h * nq * nk * 4;
    if (scoreBytes > this.attentionChunkBytes && v.shape[3] === d && hasFusedAttention(d)) return fusedAttention(q, k, v);
    return tf.tidy(() => {
      const scale = 1 / Math.sqrt(d);
      const attend = (qc: tf.Tensor) => batchMatMul(tf.softmax(tf.mul(batchMatMul(qc, k, false, true), scale)), v, false, false);
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
    if (hasFusedLayerNorm()) return fusedLayerNorm(x, weight, bias, eps);
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
    const y = tf.slice(x, begin, size);
    if (this.frozen(x)) this.frozenSlices.add(y);
    return y;
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
    const [b, h, w, c] = x.shape;
    const [oh, ow] = size;
    if (oh % h === 0 && ow % w === 0) {
      // integer upscaling repeats each pixel (the same values); the gradient is a plain sum
      // (tfjs-backend-wasm's ResizeNearestNeighborGrad is wrong for more than one channel)
      return tf.tidy(() => {
        // columns, then rows (rank-4 tiles: tfjs has tile gradients up to rank 4)
        const cols = tf.tile(tf.reshape(x, [b * h, w, 1, c]), [1, 1, ow / w, 1]);
        const rows = tf.tile(tf.reshape(cols, [b, h, 1, ow * c]), [1, 1, oh / h, 1]);
        return tf.reshape(rows, [b, oh, ow, c]);
      });
    }
    return tf.image.resizeNearestNeighbor(x as tf.Tensor4D, size, false, false);
  }
  resizeBilinear(x: tf.Tensor, size: [number, number]) {
    return tf.image.resizeBilinear(x as tf.Tensor4D, size, false, true);
  }

  /**
   * Gradient checkpointing: under a gradient tape the block runs as one custom-gradient op whose
   * forward keeps only its inputs (its own ops are not taped, their tensors freed at once); its
   * gradient runs the block again under a tape of its own, for the inputs and the block's trained
   * parameters. Those parameters are passed as explicit inputs of the op: tfjs routes a custom
   * op's gradients to its inputs only.
   */
  checkpoint(prefix: string, block: (ops: Ops<tf.Tensor>, inputs: tf.Tensor[]) => tf.Tensor[], inputs: tf.Tensor[]): tf.Tensor[] {
    if (!this.checkpointActivations || tf.engine().state.gradientDepth === 0) return block(this, inputs);
    const blockOps = new BlockOps(this.params, prefix, { attentionChunkBytes: this.attentionChunkBytes, adapters: this.adapters });
    const trained = [...this.params]
      .filter(([name, p]) => name.startsWith(`${prefix}.`) && p instanceof tf.Variable && p.trainable)
      .map(([, p]) => p);
    let shapes: number[][] = [];
    // one output tensor (a custom op has one): several outputs travel flattened and concatenated
    const pack = (outs: tf.Tensor[]) => {
      shapes = outs.map((o) => o.shape);
      return outs.length === 1 ? outs[0] : tf.concat(outs.map((o) => tf.reshape(o, [-1])), 0);
    };
    const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
      const save = args.pop() as tf.GradSaveFunc;
      const xs = (args as tf.Tensor[]).slice(0, inputs.length);
      // the inputs are the outer forward's intermediates, freed when it ends unless saved;
      // the parameters are variables and stay
      save(xs);
      return {
        value: pack(block(blockOps, xs)),
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const { value, grads } = gradients(() => pack(block(blockOps, saved)), [...saved, ...trained], dy, true);
          value.dispose();
          return grads.map((g, i) => g ?? tf.zerosLike(i < saved.length ? saved[i] : trained[i - saved.length]));
        },
      };
    });
    const packed = op(...inputs, ...trained);
    if (shapes.length === 1) return [packed];
    const outs = tf.tidy(() => {
      let offset = 0;
      return shapes.map((shape) => {
        const size = shape.reduce((a, b) => a * b, 1);
        const out = tf.reshape(tf.slice(packed, [offset], [size]), shape);
        offset += size;
        return out;
      });
    });
    packed.dispose();
    return outs;
  }
}

/** The ops a checkpointed block runs on: it may read only its own module's parameters. */
class BlockOps extends TfOps {
  constructor(
    params: ReadonlyMap<string, tf.Tensor>,
    private readonly prefix: string,
    options: TfOpsOptions,
  ) {
    super(params, options);
  }

  override param(name: string): tf.Tensor {
    // a parameter from outside would get no gradient through the recomputation
    if (!name.startsWith(`${this.prefix}.`)) throw new Error(`checkpointed block '${this.prefix}' reads parameter '${name}' from outside its module`);
    return super.param(name);
  }
}
