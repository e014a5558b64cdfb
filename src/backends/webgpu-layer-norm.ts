/**
 * Fused LayerNorm kernels for the 'webgpu' backend (the ops of src/model/fused-layer-norm.ts).
 * Built from `moments`, a LayerNorm costs ~10 dispatches forward and ~20 backward, each a pass over
 * the activations; here one invocation normalises one row (the last axis) in one pass forward, and
 * one computes the row's input gradient backward. Rows are independent, so any batch size or
 * resolution splits into enough invocations; row statistics are recomputed, not stored.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { FUSED_LAYER_NORM, FUSED_LAYER_NORM_GRAD } from '../model/fused-layer-norm.js';

const WORKGROUP = 64;

/** The row statistics both kernels start from: two passes, as tfjs's moments (mean, then variance). */
const ROW_STATS = `
  fn rowStats(base : i32, cols : i32) -> vec2<f32> {
    var sum = 0.0;
    for (var c = 0; c < cols; c++) { sum += x[base + c]; }
    let mean = sum / f32(cols);
    var sq = 0.0;
    for (var c = 0; c < cols; c++) { let d = x[base + c] - mean; sq += d * d; }
    return vec2<f32>(mean, inverseSqrt(sq / f32(cols) + uniforms.eps));
  }
`;

/** The shader: `body` runs once per row with `cols`, `base` (the row's first index) and `stats` (mean, rstd) in scope. */
function rowShader(body: string): string {
  return `${ROW_STATS}
      fn main(row : i32) {
        if (row >= uniforms.rows) { return; }
        let cols = uniforms.cols;
        let base = row * cols;
        let stats = rowStats(base, cols);
        ${body}
      }`;
}

/** A one-invocation-per-row program over a (rows, cols) output; tfjs compiles and binds it. */
abstract class RowProgram {
  outputShape: number[];
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  uniforms = 'rows : i32, cols : i32, eps : f32,';
  abstract variableNames: string[];
  abstract shaderKey: string;

  constructor(rows: number, cols: number) {
    this.outputShape = [rows, cols];
    this.dispatch = [Math.ceil(rows / WORKGROUP), 1, 1];
  }
  abstract getUserCode(): string;
}

class LayerNormProgram extends RowProgram {
  variableNames = ['x', 'w', 'b'];
  shaderKey = 'medtune_layer_norm';
  getUserCode(): string {
    return rowShader(`
        for (var c = 0; c < cols; c++) {
          result[base + c] = (x[base + c] - stats.x) * stats.y * w[c] + b[c];
        }`);
  }
}

/** dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w, per row. */
class LayerNormGradProgram extends RowProgram {
  variableNames = ['dy', 'x', 'w'];
  shaderKey = 'medtune_layer_norm_grad';
  getUserCode(): string {
    return rowShader(`
        var meanG = 0.0;
        var meanGXhat = 0.0;
        for (var c = 0; c < cols; c++) {
          let g = dy[base + c] * w[c];
          meanG += g;
          meanGXhat += g * (x[base + c] - stats.x) * stats.y;
        }
        meanG /= f32(cols);
        meanGXhat /= f32(cols);
        for (var c = 0; c < cols; c++) {
          let xhat = (x[base + c] - stats.x) * stats.y;
          result[base + c] = stats.y * (dy[base + c] * w[c] - meanG - xhat * meanGXhat);
        }`);
  }
}

function runRows(
  backend: WebGPUBackend,
  program: RowProgram,
  inputs: tf.TensorInfo[],
  shape: number[],
  eps: number,
): tf.TensorInfo {
  const [rows, cols] = program.outputShape;
  const uniforms = [
    { type: 'int32', data: [rows] },
    { type: 'int32', data: [cols] },
    { type: 'float32', data: [eps] },
  ];
  const out = backend.runWebGPUProgram(program as never, inputs, 'float32', uniforms);
  // the program's output is (rows, cols); the op's has x's shape (same data)
  return { dataId: out.dataId, shape, dtype: out.dtype };
}

function rowsCols(shape: number[]): [number, number] {
  const cols = shape[shape.length - 1];
  return [shape.reduce((n, d) => n * d, 1) / cols, cols];
}

const layerNormKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { x, weight, bias } = inputs as { x: tf.TensorInfo; weight: tf.TensorInfo; bias: tf.TensorInfo };
  const [rows, cols] = rowsCols(x.shape);
  return runRows(backend as WebGPUBackend, new LayerNormProgram(rows, cols), [x, weight, bias], x.shape, (attrs as { eps: number }).eps);
};

const layerNormGradKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { dy, x, weight } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo; weight: tf.TensorInfo };
  const [rows, cols] = rowsCols(x.shape);
  return runRows(backend as WebGPUBackend, new LayerNormGradProgram(rows, cols), [dy, x, weight], x.shape, (attrs as { eps: number }).eps);
};

/** The fused LayerNorm's forward and gradient kernels, by name (webgpu-kernels.ts registers them). */
export const layerNormKernels: Array<[string, tf.KernelFunc]> = [
  [FUSED_LAYER_NORM, layerNormKernel],
  [FUSED_LAYER_NORM_GRAD, layerNormGradKernel],
];
