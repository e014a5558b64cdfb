/**
 * Softmax and Sum for the 'webgpu' backend on software adapters (lavapipe). tfjs reduces a row
 * with a workgroup and a barrier per halving step in workgroup memory, which llvmpipe runs by
 * switching between its SIMD batches at every barrier: the attention softmax of the demo took a
 * third of its GPU time. Here one invocation reduces one row (or one column) alone, reading each
 * value once: softmax keeps a running maximum and sum in one pass, then writes. GPUs keep tfjs's
 * kernels, whose workgroup reductions suit them.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { allFloat, type SoftwareKernel } from './webgpu-matmul.js';

const WORKGROUP = 64;

/** One invocation per output value over a flat dispatch; tfjs compiles and binds it. */
class LineProgram {
  outputShape: number[];
  variableNames = ['x'];
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  uniforms = 'lines : i32, length : i32,';

  /** `lines` invocations, each over `length` values; `body` runs with `line` in scope */
  constructor(
    outputSize: number,
    lines: number,
    readonly shaderKey: string,
    private body: string,
  ) {
    this.outputShape = [outputSize];
    this.dispatch = [Math.ceil(lines / WORKGROUP), 1, 1];
  }

  getUserCode(): string {
    return `
      fn main(line : i32) {
        if (line >= uniforms.lines) { return; }
        let length = uniforms.length;
        ${this.body}
      }`;
  }
}

function run(backend: WebGPUBackend, program: LineProgram, x: tf.TensorInfo, lines: number, length: number, shape: number[]): tf.TensorInfo {
  const out = backend.runWebGPUProgram(program as never, [{ ...x, shape: [tf.util.sizeFromShape(x.shape)] }], 'float32', [
    { type: 'int32', data: [lines] },
    { type: 'int32', data: [length] },
  ]);
  return { dataId: out.dataId, shape, dtype: 'float32' };
}

/** Softmax over the last axis: one pass for the maximum and the sum of exponentials (rescaled as the maximum grows), one to write. */
const SOFTMAX = `
        let base = line * length;
        var m = x[base];
        var s = 1.0;
        for (var c = 1; c < length; c++) {
          let v = x[base + c];
          if (v > m) {
            s = s * exp(m - v) + 1.0;
            m = v;
          } else {
            s += exp(v - m);
          }
        }
        for (var c = 0; c < length; c++) {
          result[base + c] = exp(x[base + c] - m) / s;
        }`;

/** Sum of each row (the reduced axes trailing). */
const ROW_SUM = `
        let base = line * length;
        var s = 0.0;
        for (var c = 0; c < length; c++) { s += x[base + c]; }
        result[line] = s;`;

/** Sum of each column (the reduced axes leading): `length` rows of `lines` values. */
const COLUMN_SUM = `
        var s = 0.0;
        for (var r = 0; r < length; r++) { s += x[r * uniforms.lines + line]; }
        result[line] = s;`;

export function softwareSoftmax(backend: WebGPUBackend, logits: tf.TensorInfo, dim: number): tf.TensorInfo | null {
  const rank = logits.shape.length;
  if (!allFloat(backend, logits) || rank === 0 || (dim !== -1 && dim !== rank - 1)) return null;
  const length = logits.shape[rank - 1];
  const lines = tf.util.sizeFromShape(logits.shape) / length;
  if (lines === 0 || length === 0) return null;
  return run(backend, new LineProgram(lines * length, lines, 'medtune_sw_softmax', SOFTMAX), logits, lines, length, logits.shape);
}

export function softwareSum(backend: WebGPUBackend, x: tf.TensorInfo, axis: number | number[], keepDims: boolean): tf.TensorInfo | null {
  if (!allFloat(backend, x) || x.shape.length === 0) return null;
  const axes = tf.util.parseAxisParam(axis, x.shape).sort((p, q) => p - q);
  const rank = x.shape.length;
  const trailing = axes.every((a, i) => a === rank - axes.length + i);
  const leading = axes.every((a, i) => a === i);
  if (axes.length === 0 || !(trailing || leading)) return null;
  const reduced = tf.util.sizeFromShape(axes.map((a) => x.shape[a]));
  const kept = tf.util.sizeFromShape(x.shape) / reduced;
  if (kept === 0 || reduced === 0) return null;
  const shape = keepDims ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d)) : x.shape.filter((_, i) => !axes.includes(i));
  const program = trailing
    ? new LineProgram(kept, kept, 'medtune_sw_row_sum', ROW_SUM)
    : new LineProgram(kept, kept, 'medtune_sw_column_sum', COLUMN_SUM);
  return run(backend, program, x, kept, reduced, shape);
}

/** Softmax and Sum on a software adapter, by kernel name; null where tfjs's kernel must run. */
export const rowKernels: Array<[string, SoftwareKernel]> = [
  [tf.Softmax, ({ inputs, attrs }, backend) => softwareSoftmax(backend, inputs.logits as tf.TensorInfo, (attrs as unknown as tf.SoftmaxAttrs).dim)],
  [
    tf.Sum,
    ({ inputs, attrs }, backend) => {
      const { axis, keepDims } = attrs as unknown as tf.SumAttrs;
      return softwareSum(backend, inputs.x as tf.TensorInfo, axis, keepDims);
    },
  ],
];
