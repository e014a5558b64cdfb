/**
 * The fused AdamW update (FUSED_ADAMW, src/train/optimizer.ts) for the 'webgpu' backend. The
 * composite update is ~14 dispatches per parameter and a scalar upload per op; here it is three
 * (a tfjs program has one output: the new param, expAvg and expAvgSq each get one, from the same
 * inputs), and the hyper-parameters travel as uniforms. The param program recomputes the moments
 * rather than reading them back: that costs a few flops and saves a dependency between dispatches.
 * The arithmetic is the composite path's, operation for operation, in float32. Also the per-gradient
 * sum of squares of clipGradNorm (SUM_OF_SQUARES).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { adamWFactors, checkAdamWInputs, FUSED_ADAMW, SUM_OF_SQUARES, type AdamWAttrs, type AdamWInputs } from './adamw-kernels.js';

const WORKGROUP = 64;

type Output = 'param' | 'expAvg' | 'expAvgSq';

/** What each output is, from `g`, `m0` and `v0` in scope. */
const MOMENT = 'm0 + (g - m0) * uniforms.oneMinusBeta1';
const MOMENT_SQ = 'v0 * uniforms.beta2 + (g * uniforms.oneMinusBeta2) * g';
const BODY: Record<Output, string> = {
  expAvg: `result[index] = ${MOMENT};`,
  expAvgSq: `result[index] = ${MOMENT_SQ};`,
  param: `
        let m = ${MOMENT};
        let v = ${MOMENT_SQ};
        let denom = sqrt(v) / uniforms.biasCorrection2Sqrt + uniforms.eps;
        result[index] = weight[index] * uniforms.decay + (m / denom) * uniforms.negStepSize;`,
};

/** The inputs each output reads; the first step has no moments (zero). */
function inputNames(output: Output, first: boolean): string[] {
  const moments = first ? [] : output === 'param' ? ['expAvg', 'expAvgSq'] : [output];
  return [...(output === 'param' ? ['weight'] : []), 'grad', ...moments];
}

/** One invocation per element of a flat parameter; tfjs compiles and binds it. */
class AdamWProgram {
  outputShape: number[];
  variableNames: string[];
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  size = true;
  uniforms = 'gradScale : f32, decay : f32, oneMinusBeta1 : f32, beta2 : f32, oneMinusBeta2 : f32, biasCorrection2Sqrt : f32, eps : f32, negStepSize : f32,';
  shaderKey: string;

  constructor(
    size: number,
    private readonly output: Output,
    first: boolean,
  ) {
    this.outputShape = [size];
    this.dispatch = [Math.ceil(size / WORKGROUP), 1, 1];
    this.variableNames = inputNames(output, first);
    this.shaderKey = `medtune_adamw_${output}${first ? '_first' : ''}`;
  }

  getUserCode(): string {
    // the moments this program reads; zero where it has none (the first step)
    const read = (name: string) => (this.variableNames.includes(name) ? `${name}[index]` : '0.0');
    return `
      fn main(index : i32) {
        if (index >= uniforms.size) { return; }
        let g = grad[index] * uniforms.gradScale;
        let m0 = ${read('expAvg')};
        let v0 = ${read('expAvgSq')};
        ${BODY[this.output]}
      }`;
  }
}

const adamWKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { param, grad, expAvg, expAvgSq } = inputs as unknown as AdamWInputs;
  checkAdamWInputs({ param, grad, expAvg, expAvgSq });
  const size = tf.util.sizeFromShape(param.shape);
  const flat = (t: tf.TensorInfo) => ({ ...t, shape: [size] });
  // the moments are absent on the first step; the programs then do not name them
  const byName = { weight: param, grad, expAvg, expAvgSq } as Record<string, tf.TensorInfo>;
  const k = adamWFactors(attrs as unknown as AdamWAttrs);
  const uniforms = [k.gradScale, k.decay, k.oneMinusBeta1, k.beta2, k.oneMinusBeta2, k.biasCorrection2Sqrt, k.eps, k.negStepSize].map((v) => ({
    type: 'float32',
    data: [v],
  }));
  const first = !expAvg;
  return (['param', 'expAvg', 'expAvgSq'] as const).map((output) => {
    const program = new AdamWProgram(size, output, first);
    const ins = program.variableNames.map((name) => flat(byName[name]));
    const out = (backend as WebGPUBackend).runWebGPUProgram(program as never, ins, 'float32', uniforms);
    return { dataId: out.dataId, shape: param.shape, dtype: 'float32' } as tf.TensorInfo;
  });
};

/**
 * The sum of squares of one gradient (clipGradNorm) in one dispatch instead of Square then Sum:
 * one workgroup strides over the tensor, then halves its partial sums in workgroup memory.
 * One workgroup suffices: the largest SAM2 tensors hold a few million values.
 */
const REDUCE_WORKGROUP = 256;

class SumOfSquaresProgram {
  outputShape = [1];
  variableNames = ['x'];
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number] = [1, 1, 1];
  workgroupSize: [number, number, number] = [REDUCE_WORKGROUP, 1, 1];
  uniforms = 'length : i32,';
  shaderKey = 'medtune_sum_of_squares';

  getUserCode(): string {
    return `
      var<workgroup> partial : array<f32, ${REDUCE_WORKGROUP}>;
      fn main(index : i32) {
        let lane = i32(localId.x);
        var s = 0.0;
        for (var i = lane; i < uniforms.length; i += ${REDUCE_WORKGROUP}) {
          let v = x[i];
          s += v * v;
        }
        partial[lane] = s;
        workgroupBarrier();
        for (var stride = ${REDUCE_WORKGROUP / 2}; stride > 0; stride /= 2) {
          if (lane < stride) { partial[lane] += partial[lane + stride]; }
          workgroupBarrier();
        }
        if (lane == 0) { result[0] = partial[0]; }
      }`;
  }
}

const sumOfSquaresKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const { x } = inputs as { x: tf.TensorInfo };
  if (x.dtype !== 'float32') throw new Error(`${SUM_OF_SQUARES}: float32 tensors only, got ${x.dtype}`);
  const length = tf.util.sizeFromShape(x.shape);
  const out = (backend as WebGPUBackend).runWebGPUProgram(new SumOfSquaresProgram() as never, [{ ...x, shape: [length] }], 'float32', [
    { type: 'int32', data: [length] },
  ]);
  return { dataId: out.dataId, shape: [], dtype: 'float32' };
};

/** The optimizer's kernels, by name, for every adapter (webgpu-kernels.ts registers them). */
export const optimizerKernels: Array<[string, tf.KernelFunc]> = [
  [FUSED_ADAMW, adamWKernel],
  [SUM_OF_SQUARES, sumOfSquaresKernel],
];
