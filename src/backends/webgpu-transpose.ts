/**
 * The 2-D transpose for the 'webgpu' backend on software adapters (lavapipe). tfjs transposes a
 * matrix through workgroup-memory tiles with a barrier, which llvmpipe runs by switching between
 * its SIMD batches; the model materialises many such transposes (weights and gradients of its
 * linear layers, see src/model/tf-ops.ts). Here each invocation copies one value. Higher ranks
 * keep tfjs's kernel, which has no barrier.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { allFloat, type SoftwareKernel } from './webgpu-matmul.js';

const WORKGROUP = 64;

class Transpose2dProgram {
  outputShape: number[];
  variableNames = ['x'];
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  shaderKey = 'medtune_sw_transpose2d';
  size = true;

  /** the output (cols, rows) of an input (rows, cols) */
  constructor(rows: number, cols: number) {
    this.outputShape = [cols, rows];
    this.dispatch = [Math.ceil((rows * cols) / WORKGROUP), 1, 1];
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        if (index >= uniforms.size) { return; }
        let rows = uniforms.outShape.y;
        let c = index / rows;
        let r = index - c * rows;
        result[index] = x[r * uniforms.outShape.x + c];
      }`;
  }
}

/** Transpose on a software adapter: ours for a float32 matrix, else null (tfjs's kernel). */
export const transposeKernels: Array<[string, SoftwareKernel]> = [
  [
    tf.Transpose,
    ({ inputs, attrs }, backend: WebGPUBackend) => {
      const x = inputs.x as tf.TensorInfo;
      const { perm } = attrs as unknown as tf.TransposeAttrs;
      if (x.shape.length !== 2 || perm[0] !== 1 || !allFloat(backend, x) || tf.util.sizeFromShape(x.shape) === 0) return null;
      return backend.runWebGPUProgram(new Transpose2dProgram(x.shape[0], x.shape[1]) as never, [x], 'float32');
    },
  ],
];
