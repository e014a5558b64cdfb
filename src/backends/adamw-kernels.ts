/**
 * The fused AdamW update (FUSED_ADAMW, src/train/optimizer.ts) for the `cpu` backend: one loop
 * over the parameter's typed arrays instead of ~14 tfjs ops, each a pass over the parameter. (On
 * wasm this JS loop measured slower than wasm's own SIMD ops, so wasm runs the same arithmetic as
 * a SIMD loop of its own, wasm-simd.ts, and its CPU fallbacks do not copy this one.) Every
 * operation is rounded to float32 as the op it replaces rounds its output, so the result equals
 * the composite path's bit for bit.
 */
import * as tf from '@tensorflow/tfjs-core';
import { registerOwnKernel } from './common.js';

/**
 * The fused AdamW kernel: one parameter's whole update in one op, for backends that register it
 * (here: cpu; wasm-simd.ts, webgpu-adamw.ts). Inputs `param`, `grad`, and
 * `expAvg`, `expAvgSq` after the first step (absent: zero moments); attrs AdamWAttrs. Outputs the new
 * param, expAvg and expAvgSq with the arithmetic of the optimizer's composite path (src/train/optimizer.ts).
 */
export const FUSED_ADAMW = 'MedtuneAdamW';

/** One parameter's hyper-parameters for one update (plain numbers, never tensors). */
export interface AdamWAttrs {
  lr: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** 1 - beta1^step */
  biasCorrection1: number;
  /** sqrt(1 - beta2^step) */
  biasCorrection2Sqrt: number;
  /** the gradient is multiplied by this first (gradient clipping's coefficient; 1: none) */
  gradScale: number;
}

/** The constants of the update, computed in double precision as PyTorch does (each becomes a float32 operand). */
export interface AdamWFactors {
  gradScale: number;
  decay: number;
  oneMinusBeta1: number;
  beta2: number;
  oneMinusBeta2: number;
  biasCorrection2Sqrt: number;
  eps: number;
  negStepSize: number;
}

export function adamWFactors(a: AdamWAttrs): AdamWFactors {
  return {
    gradScale: a.gradScale,
    decay: 1 - a.lr * a.weightDecay,
    oneMinusBeta1: 1 - a.beta1,
    beta2: a.beta2,
    oneMinusBeta2: 1 - a.beta2,
    biasCorrection2Sqrt: a.biasCorrection2Sqrt,
    eps: a.eps,
    negStepSize: -a.lr / a.biasCorrection1,
  };
}

/** The sum of the squares of a tensor's values (a scalar) as one op, for backends that register it (webgpu-adamw.ts, wasm-simd.ts); input `x`. */
export const SUM_OF_SQUARES = 'MedtuneSumOfSquares';

type CpuLike = {
  readSync(dataId: tf.DataId): tf.backend_util.BackendValues;
  makeTensorInfo(shape: number[], dtype: tf.DataType, values?: tf.backend_util.BackendValues): tf.TensorInfo;
};

export interface AdamWInputs {
  param: tf.TensorInfo;
  grad: tf.TensorInfo;
  expAvg?: tf.TensorInfo;
  expAvgSq?: tf.TensorInfo;
}

/** Writes the new param, expAvg, expAvgSq into `out` (expAvg0/expAvgSq0 undefined: zero moments, the first step). */
export function adamWUpdate(
  attrs: AdamWAttrs,
  param: Float32Array,
  grad: Float32Array,
  expAvg0: Float32Array | undefined,
  expAvgSq0: Float32Array | undefined,
  out: [Float32Array, Float32Array, Float32Array],
): void {
  const f = Math.fround;
  const k = adamWFactors(attrs);
  const [gradScale, decay, oneMinusBeta1, beta2, oneMinusBeta2, bc2Sqrt, eps, negStepSize] = [
    k.gradScale,
    k.decay,
    k.oneMinusBeta1,
    k.beta2,
    k.oneMinusBeta2,
    k.biasCorrection2Sqrt,
    k.eps,
    k.negStepSize,
  ].map(f);
  const [p, m, v] = out;
  // zeros rather than a branch per element: the first step happens once per parameter
  const mPrev = expAvg0 ?? new Float32Array(param.length);
  const vPrev = expAvgSq0 ?? new Float32Array(param.length);
  for (let i = 0; i < param.length; i++) {
    const g = f(grad[i] * gradScale); // exact when gradScale is 1
    const m0 = mPrev[i];
    const v0 = vPrev[i];
    // decayed = p*(1-lr*wd); m = m0 + (g-m0)*(1-b1); v = v0*b2 + (g*(1-b2))*g
    const decayed = f(param[i] * decay);
    const mi = f(m0 + f(f(g - m0) * oneMinusBeta1));
    const vi = f(f(v0 * beta2) + f(f(g * oneMinusBeta2) * g));
    // denom = sqrt(v)/bc2sqrt + eps; p = decayed + (m/denom)*(-stepSize)
    const denom = f(f(f(Math.sqrt(vi)) / bc2Sqrt) + eps);
    p[i] = decayed + f(f(mi / denom) * negStepSize);
    m[i] = mi;
    v[i] = vi;
  }
}

/** Throws unless the inputs are float32 tensors of the parameter's shape, the moments both there or both absent. */
export function checkAdamWInputs({ param, grad, expAvg, expAvgSq }: AdamWInputs): void {
  for (const t of [param, grad, expAvg, expAvgSq]) {
    if (t && t.dtype !== 'float32') throw new Error(`${FUSED_ADAMW}: float32 tensors only, got ${t.dtype}`);
    if (t && !tf.util.arraysEqual(t.shape, param.shape)) throw new Error(`${FUSED_ADAMW}: shape [${t.shape}] where the parameter is [${param.shape}]`);
  }
  if (!expAvg !== !expAvgSq) throw new Error(`${FUSED_ADAMW}: expAvg and expAvgSq come together (or neither, the first step)`);
}

/** cpu: the backend keeps each tensor's Float32Array, which becomes the output as is. */
const cpuKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const cpu = backend as unknown as CpuLike;
  const ins = inputs as unknown as AdamWInputs;
  checkAdamWInputs(ins);
  const read = (t: tf.TensorInfo | undefined) => (t ? (cpu.readSync(t.dataId) as Float32Array) : undefined);
  const n = tf.util.sizeFromShape(ins.param.shape);
  const out: [Float32Array, Float32Array, Float32Array] = [new Float32Array(n), new Float32Array(n), new Float32Array(n)];
  adamWUpdate(attrs as unknown as AdamWAttrs, read(ins.param)!, read(ins.grad)!, read(ins.expAvg), read(ins.expAvgSq), out);
  return out.map((vals) => cpu.makeTensorInfo(ins.param.shape, 'float32', vals));
};

/** Registers the kernel for the cpu backend (idempotent). */
export function registerAdamWKernel(): void {
  registerOwnKernel(FUSED_ADAMW, 'cpu', cpuKernel);
}
