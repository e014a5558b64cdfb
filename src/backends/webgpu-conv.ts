/**
 * Conv2D and its filter gradient for the 'webgpu' backend on software adapters (lavapipe), as a
 * patch matrix (im2col) and the register-tiled product of webgpu-matmul.ts: y = patches . W and
 * dW = patches^T . dy. tfjs's conv kernels tile through workgroup memory with barriers (forward)
 * or load two values per multiply-add (filter gradient), both slow on llvmpipe; the 7x7 stride-4
 * patch embedding was a tenth of the demo's step. NHWC, no dilation; anything else, or a patch
 * matrix over the adapter's binding limit, keeps tfjs's kernels.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { allFloat, softwareMatMul, type SoftwareKernel } from './webgpu-matmul.js';

const WORKGROUP = 64;

/** (batch * outH * outW, kh * kw * inC): row = an output pixel, column = (ky, kx, ci) as the filter's layout. */
class Im2ColProgram {
  outputShape: number[];
  variableNames = ['x'];
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  shaderKey = 'medtune_sw_im2col';
  size = true;
  uniforms = 'outH : i32, outW : i32, kw : i32, strideY : i32, strideX : i32, padTop : i32, padLeft : i32,';

  constructor(rows: number, cols: number) {
    this.outputShape = [rows, cols];
    this.dispatch = [Math.ceil((rows * cols) / WORKGROUP), 1, 1];
  }

  getUserCode(): string {
    return `
      fn main(index : i32) {
        if (index >= uniforms.size) { return; }
        let cols = uniforms.outShape.y;
        let row = index / cols;
        let col = index - row * cols;
        let inC = uniforms.xShape.w;
        let pixels = uniforms.outH * uniforms.outW;
        let b = row / pixels;
        let oy = (row - b * pixels) / uniforms.outW;
        let ox = row - b * pixels - oy * uniforms.outW;
        let ky = col / (uniforms.kw * inC);
        let kx = (col - ky * uniforms.kw * inC) / inC;
        let ci = col - (ky * uniforms.kw + kx) * inC;
        let iy = oy * uniforms.strideY - uniforms.padTop + ky;
        let ix = ox * uniforms.strideX - uniforms.padLeft + kx;
        var v = 0.0;
        if (iy >= 0 && iy < uniforms.xShape.y && ix >= 0 && ix < uniforms.xShape.z) {
          v = x[((b * uniforms.xShape.y + iy) * uniforms.xShape.z + ix) * inC + ci];
        }
        result[index] = v;
      }`;
  }
}

interface ConvAttrs {
  strides: number | [number, number];
  pad: 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
  dataFormat: 'NHWC' | 'NCHW';
  dilations?: number | [number, number];
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

/** The patch matrix of x for a filter of `filterShape` (kh, kw, inC, outC), or null where ours does not apply. */
function patches(backend: WebGPUBackend, x: tf.TensorInfo, filterShape: number[], attrs: ConvAttrs): { patches: tf.TensorInfo; outShape: number[] } | null {
  const { strides, pad, dataFormat, dilations = 1, dimRoundingMode } = attrs;
  if (!allFloat(backend, x) || dataFormat !== 'NHWC') return null;
  if ((Array.isArray(dilations) ? dilations : [dilations, dilations]).some((d) => d !== 1)) return null;
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    filterShape as [number, number, number, number],
    strides,
    1,
    pad,
    dimRoundingMode,
  );
  const rows = info.batchSize * info.outHeight * info.outWidth;
  const cols = info.filterHeight * info.filterWidth * info.inChannels;
  if (rows * cols === 0 || 4 * rows * cols > backend.device.limits.maxStorageBufferBindingSize) return null;
  const program = new Im2ColProgram(rows, cols);
  const uniforms = [info.outHeight, info.outWidth, info.filterWidth, info.strideHeight, info.strideWidth, info.padInfo.top, info.padInfo.left];
  const matrix = backend.runWebGPUProgram(
    program as never,
    [x],
    'float32',
    uniforms.map((v) => ({ type: 'int32', data: [v] })),
  );
  return { patches: matrix, outShape: [info.batchSize, info.outHeight, info.outWidth, info.outChannels] };
}

/** Conv2D and Conv2DBackpropFilter on a software adapter, by kernel name. */
export const convKernels: Array<[string, SoftwareKernel]> = [
  [
    tf.Conv2D,
    ({ inputs, attrs }, backend) => {
      const { x, filter } = inputs as { x: tf.TensorInfo; filter: tf.TensorInfo };
      if (!allFloat(backend, filter)) return null;
      const p = patches(backend, x, filter.shape, attrs as unknown as ConvAttrs);
      if (!p) return null;
      const [kh, kw, inC, outC] = filter.shape;
      const y = softwareMatMul(backend, { a: p.patches, b: { ...filter, shape: [kh * kw * inC, outC] }, transposeA: false, transposeB: false });
      backend.disposeData(p.patches.dataId);
      return y && { ...y, shape: p.outShape };
    },
  ],
  [
    tf.Conv2DBackpropFilter,
    ({ inputs, attrs }, backend) => {
      const { x, dy } = inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
      const { filterShape } = attrs as unknown as tf.Conv2DBackpropFilterAttrs;
      if (!allFloat(backend, dy)) return null;
      const p = patches(backend, x, filterShape, attrs as unknown as ConvAttrs);
      if (!p) return null;
      const rows = p.patches.shape[0];
      const dW = softwareMatMul(backend, { a: p.patches, b: { ...dy, shape: [rows, dy.shape[3]] }, transposeA: true, transposeB: false });
      backend.disposeData(p.patches.dataId);
      return dW && { ...dW, shape: filterShape };
    },
  ],
];
