/**
 * Transpose for the 'webgpu' backend on software adapters (lavapipe). tfjs transposes a matrix
 * through workgroup-memory tiles with a barrier, which llvmpipe runs by switching between its
 * SIMD batches, and higher ranks one value per invocation with a division per axis, which
 * llvmpipe runs lane by lane. Here the permutation is first collapsed (axes that stay neighbours
 * move as one: the heads split [B, N, H, d] -> [B, H, N, d] is a rank-3 swap, a window partition
 * rank 4) and, when the innermost axis stays innermost with a multiple of 4 values, each
 * invocation copies a vec4 of it. The model materialises many such transposes: the weights and
 * gradients of its linear layers (src/model/tf-ops.ts), attention heads and windows.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { flatDispatch } from './webgpu-dispatch.js';
import { allFloat, type SoftwareKernel } from './webgpu-matmul.js';

const WORKGROUP = 64;
/** The collapsed rank the program takes (its uniforms are vec4s). */
const MAX_RANK = 4;

/**
 * The permutation with size-1 axes dropped and output axes that read neighbouring input axes in
 * order merged: the input's shape and the permutation of its merged axes.
 */
export function collapsePermutation(shape: number[], perm: number[]): { shape: number[]; perm: number[] } {
  const kept = perm.filter((axis) => shape[axis] !== 1);
  // runs of output axes reading consecutive input axes
  const runs: number[][] = [];
  for (const axis of kept) {
    const run = runs[runs.length - 1];
    if (run && run[run.length - 1] + 1 === axis) run.push(axis);
    else runs.push([axis]);
  }
  // the runs in input order are the merged input axes
  const byInput = [...runs].sort((a, b) => a[0] - b[0]);
  return {
    shape: byInput.map((run) => run.reduce((p, axis) => p * shape[axis], 1)),
    perm: runs.map((run) => byInput.indexOf(run)),
  };
}

class TransposeProgram {
  outputShape: number[];
  variableNames = ['x'];
  uniforms = 'outDims : vec4<i32>, inStrides : vec4<i32>,';
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  size = true;
  variableComponents: number[];
  outputComponent: number;
  shaderKey: string;

  /** `size` output values, flat, copied one by one or by vec4s (then tfjs's size uniform counts vec4s) */
  constructor(size: number, vec4: boolean) {
    this.outputComponent = vec4 ? 4 : 1;
    this.outputShape = [size];
    this.variableComponents = [this.outputComponent];
    this.dispatch = flatDispatch(size / this.outputComponent, WORKGROUP);
    this.shaderKey = `medtune_sw_transpose_${this.outputComponent}`;
  }

  getUserCode(): string {
    // output coordinates innermost first (a division each), then the input's offset
    return `
      fn main(index : i32) {
        if (index >= uniforms.size) { return; }
        let q3 = index / uniforms.outDims.w;
        let c3 = index - q3 * uniforms.outDims.w;
        let q2 = q3 / uniforms.outDims.z;
        let c2 = q3 - q2 * uniforms.outDims.z;
        let c0 = q2 / uniforms.outDims.y;
        let c1 = q2 - c0 * uniforms.outDims.y;
        result[index] = x[c0 * uniforms.inStrides.x + c1 * uniforms.inStrides.y + c2 * uniforms.inStrides.z + c3 * uniforms.inStrides.w];
      }`;
  }
}

/** Transpose on a software adapter: ours for float32 up to a collapsed rank of 4, else null (tfjs's kernel). */
export const transposeKernels: Array<[string, SoftwareKernel]> = [
  [
    tf.Transpose,
    ({ inputs, attrs }, backend: WebGPUBackend) => {
      const x = inputs.x as tf.TensorInfo;
      const { perm } = attrs as unknown as tf.TransposeAttrs;
      const size = tf.util.sizeFromShape(x.shape);
      if (!allFloat(backend, x) || size === 0) return null;
      const collapsed = collapsePermutation(x.shape, perm);
      const rank = collapsed.shape.length;
      if (rank > MAX_RANK) return null;
      const outShape = perm.map((axis) => x.shape[axis]);
      // the innermost axis stays innermost: copy it by vec4s
      const inner = collapsed.shape[rank - 1];
      const vec4 = rank > 0 && collapsed.perm[rank - 1] === rank - 1 && inner % 4 === 0;
      const dims = [...collapsed.shape];
      if (vec4) dims[rank - 1] = inner / 4;
      const strides = dims.map((_, axis) => dims.slice(axis + 1).reduce((p, d) => p * d, 1));
      // padded to rank 4 with leading axes of size 1
      const pad = MAX_RANK - rank;
      const outDims = [...Array(pad).fill(1), ...collapsed.perm.map((axis) => dims[axis])];
      const inStrides = [...Array(pad).fill(0), ...collapsed.perm.map((axis) => strides[axis])];
      const program = new TransposeProgram(size, vec4);
      const out = backend.runWebGPUProgram(program as never, [{ ...x, shape: [size] }], 'float32', [
        { type: 'int32', data: outDims },
        { type: 'int32', data: inStrides },
      ]);
      return { dataId: out.dataId, shape: outShape, dtype: 'float32' };
    },
  ],
];
