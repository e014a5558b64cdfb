/**
 * AdamW with PyTorch's semantics (`torch.optim.AdamW`, single-tensor path): decoupled weight
 * decay `p *= 1 - lr * wd`, bias-corrected moments, eps added outside the square root.
 * Parameters without a gradient are left alone (no decay, no state); a zero gradient is a
 * gradient and still decays. Hyper-parameters come per parameter group. Each parameter's update is
 * one FUSED_ADAMW kernel where the active backend registers it (cpu, wasm, webgpu), else tfjs ops
 * with the same float32 arithmetic (tensorflow).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { StateDict } from '../io/safetensors.js';
import { adamWFactors, FUSED_ADAMW, SUM_OF_SQUARES, type AdamWAttrs, type AdamWFactors } from '../backends/adamw-kernels.js';

export interface ParamGroup {
  name: string;
  lr: number;
  weightDecay: number;
  keys: string[];
}

export interface AdamWState {
  /** per-parameter step counts, as PyTorch keeps them */
  steps: Record<string, number>;
  expAvg: StateDict;
  expAvgSq: StateDict;
}

export class AdamW {
  private readonly groupOf = new Map<string, ParamGroup>();
  private readonly steps = new Map<string, number>();
  private readonly expAvg = new Map<string, tf.Tensor>();
  private readonly expAvgSq = new Map<string, tf.Tensor>();

  constructor(
    private readonly params: ReadonlyMap<string, tf.Variable>,
    readonly groups: ParamGroup[],
    private readonly betas: [number, number] = [0.9, 0.999],
    private readonly eps = 1e-8,
  ) {
    for (const g of groups) {
      for (const k of g.keys) {
        if (!params.has(k)) throw new Error(`optimizer group '${g.name}': no trainable parameter '${k}'`);
        if (this.groupOf.has(k)) throw new Error(`parameter '${k}' is in two optimizer groups`);
        this.groupOf.set(k, g);
      }
    }
    for (const k of params.keys()) if (!this.groupOf.has(k)) throw new Error(`trainable parameter '${k}' is in no optimizer group`);
  }

  /**
   * One update from `grads` (parameter key -> gradient); `lrScale` multiplies every group's lr (the
   * schedule), `gradScale` every gradient (clipGradNorm's coefficient, applied inside the update).
   */
  step(grads: ReadonlyMap<string, tf.Tensor>, lrScale = 1, gradScale = 1): void {
    const [beta1, beta2] = this.betas;
    const fused = tf.getKernel(FUSED_ADAMW, tf.getBackend()) !== undefined;
    const scalars = new ScalarCache();
    try {
      for (const [key, grad] of grads) {
        const param = this.params.get(key);
        const group = this.groupOf.get(key);
        if (!param || !group) throw new Error(`gradient for '${key}', which is not a trainable parameter`);
        const step = (this.steps.get(key) ?? 0) + 1;
        const m0 = this.expAvg.get(key);
        const v0 = this.expAvgSq.get(key);
        const attrs: AdamWAttrs = {
          lr: group.lr * lrScale,
          weightDecay: group.weightDecay,
          beta1,
          beta2,
          eps: this.eps,
          biasCorrection1: 1 - beta1 ** step,
          biasCorrection2Sqrt: Math.sqrt(1 - beta2 ** step),
          gradScale,
        };
        const [p, m, v] = fused ? fusedAdamW(param, grad, m0, v0, attrs) : compositeAdamW(param, grad, m0, v0, adamWFactors(attrs), scalars);
        param.assign(p);
        p.dispose();
        m0?.dispose();
        v0?.dispose();
        this.expAvg.set(key, m);
        this.expAvgSq.set(key, v);
        this.steps.set(key, step);
      }
    } finally {
      scalars.dispose();
    }
  }

  async exportState(): Promise<AdamWState> {
    const host = async (moments: Map<string, tf.Tensor>): Promise<StateDict> => {
      const out: StateDict = new Map();
      for (const [k, t] of moments) out.set(k, { data: Float32Array.from(await t.data()), shape: t.shape });
      return out;
    };
    return { steps: Object.fromEntries(this.steps), expAvg: await host(this.expAvg), expAvgSq: await host(this.expAvgSq) };
  }

  loadState(state: AdamWState): void {
    this.disposeState();
    for (const [key, step] of Object.entries(state.steps)) {
      const m = state.expAvg.get(key);
      const v = state.expAvgSq.get(key);
      const param = this.params.get(key);
      if (!param) throw new Error(`optimizer state for '${key}', which is not a trainable parameter`);
      if (!m || !v) throw new Error(`optimizer state for '${key}' lacks its moments`);
      if (m.shape.join() !== param.shape.join() || v.shape.join() !== param.shape.join()) {
        throw new Error(`optimizer state for '${key}' has shape [${m.shape}], the parameter [${param.shape}]`);
      }
      this.steps.set(key, step);
      this.expAvg.set(key, tf.tensor(m.data, m.shape, 'float32'));
      this.expAvgSq.set(key, tf.tensor(v.data, v.shape, 'float32'));
    }
  }

  private disposeState(): void {
    for (const t of [...this.expAvg.values(), ...this.expAvgSq.values()]) t.dispose();
    this.expAvg.clear();
    this.expAvgSq.clear();
    this.steps.clear();
  }

  dispose(): void {
    this.disposeState();
  }
}


function fusedAdamW(param: tf.Tensor, grad: tf.Tensor, m0: tf.Tensor | undefined, v0: tf.Tensor | undefined, attrs: AdamWAttrs): tf.Tensor[] {
  const inputs: tf.NamedTensorMap = m0 && v0 ? { param, grad, expAvg: m0, expAvgSq: v0 } : { param, grad };
  return tf.engine().runKernel(FUSED_ADAMW, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor[];
}

/** Scalar tensors by value, made once per step (tf.mul(x, 0.9) would upload a new one each call). */
class ScalarCache {
  private readonly byValue = new Map<number, tf.Scalar>();
  get(value: number): tf.Scalar {
    let s = this.byValue.get(value);
    // kept: the first use may sit inside a tidy
    if (!s) this.byValue.set(value, (s = tf.keep(tf.scalar(value))));
    return s;
  }
  dispose(): void {
    for (const s of this.byValue.values()) s.dispose();
  }
}

/** The update from tfjs ops, where no fused kernel is registered (tensorflow). Returns [param, expAvg, expAvgSq]. */
function compositeAdamW(
  param: tf.Tensor,
  grad: tf.Tensor,
  m0: tf.Tensor | undefined,
  v0: tf.Tensor | undefined,
  f: AdamWFactors,
  scalars: ScalarCache,
): tf.Tensor[] {
  const c = (value: number) => scalars.get(value);
  return tf.tidy(() => {
    if (f.gradScale !== 1) grad = tf.mul(grad, c(f.gradScale));
    const decayed = f.decay !== 1 ? tf.mul(param, c(f.decay)) : param;
    // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    const m = m0 ? tf.add(m0, tf.mul(tf.sub(grad, m0), c(f.oneMinusBeta1))) : tf.mul(grad, c(f.oneMinusBeta1));
    const gg = tf.mul(tf.mul(grad, c(f.oneMinusBeta2)), grad);
    const v = v0 ? tf.add(tf.mul(v0, c(f.beta2)), gg) : gg;
    const denom = tf.add(tf.div(tf.sqrt(v), c(f.biasCorrection2Sqrt)), c(f.eps));
    const p = tf.add(decayed, tf.mul(tf.div(m, denom), c(f.negStepSize)));
    return [p, m, v];
  });
}


/**
 * The global L2 norm of `grads` and the coefficient that clips it to `maxNorm`, as
 * `torch.nn.utils.clip_grad_norm_` (max_norm / (norm + 1e-6), clamped to 1; 1 with `maxNorm`
 * undefined or 0). The optimizer applies the coefficient inside its update (AdamW.step's
 * `gradScale`): one op per parameter fewer than scaling every gradient first.
 */
export async function clipGradNorm(grads: ReadonlyMap<string, tf.Tensor>, maxNorm?: number): Promise<{ norm: number; scale: number }> {
  const fused = tf.getKernel(SUM_OF_SQUARES, tf.getBackend()) !== undefined;
  const sumOfSquares = (g: tf.Tensor) => (fused ? (tf.engine().runKernel(SUM_OF_SQUARES, { x: g }, {}) as tf.Tensor) : tf.sum(tf.square(g)));
  const normT = tf.tidy(() => tf.sqrt(tf.addN([...grads.values()].map(sumOfSquares))));
  let norm: number;
  try {
    norm = (await normT.data())[0];
  } finally {
    normT.dispose();
  }
  return { norm, scale: maxNorm ? Math.min(1, maxNorm / (norm + 1e-6)) : 1 };
}

export interface GroupOptions {
  lr: number;
  /** lr of `image_encoder.*` parameters (default: lr) */
  imageEncoderLr?: number;
  weightDecay: number;
  /** no weight decay on biases and normalization weights (every parameter of rank <= 1) */
  noDecayBiasNorm?: boolean;
  /** layer-wise lr decay for the Hiera trunk: block i of N gets lr * decay^(N - i); 1 = off */
  layerDecay?: number;
}

/** Whether a parameter is a bias or a normalization weight (rank <= 1 or named `.bias`). */
export function isBiasOrNorm(key: string, shape: number[]): boolean {
  return shape.length <= 1 || key.endsWith('.bias');
}

/**
 * Depth of a parameter for layer-wise decay: 0 for the trunk's patch and position embeddings,
 * i + 1 for `image_encoder.trunk.blocks.i`, numBlocks + 1 for everything after the trunk.
 */
export function layerId(key: string, numBlocks: number): number {
  const block = /^image_encoder\.trunk\.blocks\.(\d+)\./.exec(key);
  if (block) return Number(block[1]) + 1;
  if (key.startsWith('image_encoder.trunk.')) return 0;
  return numBlocks + 1;
}

/** Splits trainable parameters into AdamW groups by lr and weight decay. */
export function buildParamGroups(params: ReadonlyMap<string, { shape: number[] }>, opts: GroupOptions): ParamGroup[] {
  const numBlocks = Math.max(
    0,
    ...[...params.keys()].map((k) => Number(/^image_encoder\.trunk\.blocks\.(\d+)\./.exec(k)?.[1] ?? -1) + 1),
  );
  const groups = new Map<string, ParamGroup>();
  for (const [key, { shape }] of params) {
    const encoder = key.startsWith('image_encoder.');
    let lr = encoder ? (opts.imageEncoderLr ?? opts.lr) : opts.lr;
    let name = encoder ? 'image_encoder' : 'other';
    if (opts.layerDecay !== undefined && opts.layerDecay !== 1 && encoder) {
      const id = layerId(key, numBlocks);
      lr *= opts.layerDecay ** (numBlocks + 1 - id);
      name += `.layer${id}`;
    }
    const noDecay = opts.noDecayBiasNorm === true && isBiasOrNorm(key, shape);
    const weightDecay = noDecay ? 0 : opts.weightDecay;
    if (noDecay) name += '.no_decay';
    let g = groups.get(name);
    if (!g) groups.set(name, (g = { name, lr, weightDecay, keys: [] }));
    g.keys.push(key);
  }
  return [...groups.values()];
}

/** Sums gradients over micro-batches (gradient accumulation); `take` returns their mean. */
export class GradAccumulator {
  private sums = new Map<string, tf.Tensor>();
  private count = 0;

  /** Adds `grads` and disposes them. */
  add(grads: ReadonlyMap<string, tf.Tensor>): void {
    for (const [k, g] of grads) {
      const prev = this.sums.get(k);
      if (prev) {
        this.sums.set(k, tf.add(prev, g));
        prev.dispose();
        g.dispose();
      } else {
        this.sums.set(k, g);
      }
    }
    this.count++;
  }

  /** The mean gradient over the micro-batches added since the last take; the caller owns it. */
  take(): Map<string, tf.Tensor> {
    const n = this.count;
    const out = n <= 1 ? this.sums : new Map([...this.sums].map(([k, s]) => [k, tf.tidy(() => tf.div(s, n))]));
    if (n > 1) for (const s of this.sums.values()) s.dispose();
    this.sums = new Map();
    this.count = 0;
    return out;
  }
}
