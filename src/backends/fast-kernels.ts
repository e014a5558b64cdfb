/**
 * Replacements for slow or wrong tfjs kernels on the `cpu` and `wasm` backends (tfjs 4.22).
 *
 * Speed:
 * - Conv2DBackpropFilter (weight gradient of a dense conv: SAM2's 7x7 stride-4 patch embedding):
 *   tfjs-backend-cpu indexes every element through TensorBuffer.get (tens of seconds for a batch of
 *   4 at 256 px) and WASM had none (it fell back to that CPU kernel). cpu: a flat typed-array loop;
 *   wasm: the transposed patch matrix and one XNNPACK product (wasm-batch-matmul.ts).
 * - Identity (wasm): WASM copies the tensor; tfjs runs it for every tensor saved for the backward
 *   pass. Shares the data instead (tensors are immutable).
 * - Add / Sub / Multiply / RealDiv (cpu): broadcasting against trailing axes, a scalar, or a
 *   keepDims reduction (x - rowMax) in flat loops instead of tfjs-backend-cpu's per-element index
 *   arithmetic.
 * - Softmax (cpu): one pass per row instead of five broadcasting ops.
 * - the XNNPACK batched product of wasm-batch-matmul.ts.
 * Correctness (the tfjs kernels give wrong gradients for more than one channel):
 * - MaxPoolGrad (wasm; a 2x2 pool of stride 2 in wasm-simd.ts's SIMD loop), ResizeNearestNeighborGrad (cpu and wasm).
 *
 * Every replacement does the same arithmetic in float32 as the kernel it replaces (sums may run
 * in another order). `registerFastKernels(backend)` runs when that backend is chosen
 * (src/backends/cpu.ts, wasm.ts), after its package has registered the kernels it replaces.
 */
import * as tf from '@tensorflow/tfjs-core';
import { registerXnnBatchMatMul } from './wasm-batch-matmul.js';
import { runWasmKernel, type WasmInternals } from './wasm-internals.js';
import { maxPool2x2Grad } from './wasm-simd.js';

type Backendish = {
  readSync(dataId: tf.DataId): tf.backend_util.BackendValues;
  makeTensorInfo?(shape: number[], dtype: tf.DataType, values?: tf.backend_util.BackendValues): tf.TensorInfo;
  makeOutput?(shape: number[], dtype: tf.DataType, memoryOffset?: number, values?: tf.backend_util.BackendValues): tf.TensorInfo;
  typedArrayFromHeap?(t: tf.TensorInfo): tf.backend_util.TypedArray;
};

/** Float32 view of a tensor's values without a copy where the backend allows it. */
function values(backend: Backendish, t: tf.TensorInfo): Float32Array {
  if (backend.typedArrayFromHeap) return backend.typedArrayFromHeap(t) as Float32Array; // wasm: a view on the heap
  return backend.readSync(t.dataId) as Float32Array; // cpu: the backing array itself
}

function output(backend: Backendish, shape: number[], vals: Float32Array): tf.TensorInfo {
  // wasm: makeOutput(shape, dtype, offset, values); the cpu backend's makeOutput has another signature
  if (backend.typedArrayFromHeap) return backend.makeOutput!(shape, 'float32', undefined, vals);
  return backend.makeTensorInfo!(shape, 'float32', vals);
}

/**
 * dW[ky, kx, ci, co] = sum over b, oy, ox of x[b, oy*sh + ky - top, ox*sw + kx - left, ci] * dy[b, oy, ox, co]
 * for NHWC x, dilation 1. Returns null for layouts it does not handle (the caller falls back).
 */
export function conv2dBackpropFilterNhwc(
  x: Float32Array,
  xShape: number[],
  dy: Float32Array,
  info: tf.backend_util.Conv2DInfo,
): Float32Array {
  const [batch, inH, inW, cin] = xShape;
  const { outHeight: outH, outWidth: outW, outChannels: cout, strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  const top = info.padInfo.top;
  const left = info.padInfo.left;
  const acc = new Float64Array(kh * kw * cin * cout);
  const rowX = inW * cin;
  const imgX = inH * rowX;
  const rowDy = outW * cout;
  const imgDy = outH * rowDy;
  for (let b = 0; b < batch; b++) {
    for (let oy = 0; oy < outH; oy++) {
      const iy0 = oy * sh - top;
      for (let ox = 0; ox < outW; ox++) {
        const ix0 = ox * sw - left;
        const dyOff = b * imgDy + oy * rowDy + ox * cout;
        for (let ky = 0; ky < kh; ky++) {
          const iy = iy0 + ky;
          if (iy < 0 || iy >= inH) continue;
          const xRow = b * imgX + iy * rowX;
          for (let kx = 0; kx < kw; kx++) {
            const ix = ix0 + kx;
            if (ix < 0 || ix >= inW) continue;
            const xOff = xRow + ix * cin;
            const wOff = (ky * kw + kx) * cin * cout;
            for (let ci = 0; ci < cin; ci++) {
              const xv = x[xOff + ci];
              if (xv === 0) continue;
              const o = wOff + ci * cout;
              for (let co = 0; co < cout; co++) acc[o + co] += xv * dy[dyOff + co];
            }
          }
        }
      }
    }
  }
  return Float32Array.from(acc);
}

const ours = new Set<tf.KernelFunc>();

function install(kernelName: string, backendName: string, make: (fallback: tf.KernelConfig | undefined) => tf.KernelFunc): void {
  const existing = tf.getKernel(kernelName, backendName);
  if (existing && ours.has(existing.kernelFunc)) return;
  if (existing) tf.unregisterKernel(kernelName, backendName);
  const kernelFunc = make(existing);
  ours.add(kernelFunc);
  tf.registerKernel({ kernelName, backendName, setupFunc: existing?.setupFunc, kernelFunc });
}

function conv2dBackpropFilterKernel(fallback: tf.KernelConfig | undefined): tf.KernelFunc {
  return (args) => {
    const { inputs, attrs } = args;
    const backend = args.backend as unknown as Backendish;
    const { x, dy } = inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
    const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs as unknown as tf.Conv2DBackpropFilterAttrs;
    const fmt = tf.backend_util.convertConv2DDataFormat(dataFormat);
    if (fmt !== 'channelsLast' || x.dtype !== 'float32' || dy.dtype !== 'float32') {
      if (!fallback) throw new Error('Conv2DBackpropFilter: only NHWC float32 is supported here');
      return fallback.kernelFunc(args);
    }
    const info = tf.backend_util.computeConv2DInfo(
      x.shape as [number, number, number, number],
      filterShape,
      strides,
      1,
      pad,
      dimRoundingMode,
      false,
      fmt,
    );
    if (backend.typedArrayFromHeap) return wasmBackpropFilter(args.backend as tf.KernelBackend, x, dy, info);
    const dw = conv2dBackpropFilterNhwc(values(backend, x), x.shape, values(backend, dy), info);
    return output(backend, info.filterShape, dw);
  };
}

/**
 * The weight gradient on wasm as one product in XNNPACK, dW (kh*kw*inC, outC) = patchesT @ dy
 * with patchesT (kh*kw*inC, B*outH*outW) the transposed patch matrix of x, written here (zero
 * outside the image): the 7x7 stride-4 patch embedding's gradient in milliseconds instead of a
 * scalar loop's hundreds.
 */
function wasmBackpropFilter(kernelBackend: tf.KernelBackend, x: tf.TensorInfo, dy: tf.TensorInfo, info: tf.backend_util.Conv2DInfo): tf.TensorInfo {
  const backend = kernelBackend as unknown as Required<Pick<Backendish, 'makeOutput' | 'typedArrayFromHeap'>> & { disposeData(d: tf.DataId): void };
  const [batch, inH, inW, cin] = x.shape;
  const { outHeight: outH, outWidth: outW, outChannels: cout, strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  const pixels = batch * outH * outW;
  const patchesT = backend.makeOutput([kh * kw * cin, pixels], 'float32');
  // views after the allocation (it may grow the heap)
  const xv = backend.typedArrayFromHeap(x) as Float32Array;
  const pv = backend.typedArrayFromHeap(patchesT) as Float32Array;
  for (let ky = 0; ky < kh; ky++) {
    for (let kx = 0; kx < kw; kx++) {
      for (let ci = 0; ci < cin; ci++) {
        let o = ((ky * kw + kx) * cin + ci) * pixels;
        for (let b = 0; b < batch; b++) {
          for (let oy = 0; oy < outH; oy++) {
            const iy = oy * sh + ky - info.padInfo.top;
            const inside = iy >= 0 && iy < inH;
            const row = (b * inH + iy) * inW;
            for (let ox = 0; ox < outW; ox++, o++) {
              const ix = ox * sw + kx - info.padInfo.left;
              pv[o] = inside && ix >= 0 && ix < inW ? xv[(row + ix) * cin + ci] : 0;
            }
          }
        }
      }
    }
  }
  const product = runWasmKernel(tf.BatchMatMul, { a: patchesT, b: { ...dy, shape: [pixels, cout] } }, { transposeA: false, transposeB: false }, kernelBackend);
  backend.disposeData(patchesT.dataId);
  return { ...product, shape: info.filterShape };
}

/**
 * WASM's Identity copies the whole tensor; tfjs runs it for every tensor it saves for the backward
 * pass (engine.clone), thousands per training step. Tensors are immutable, so sharing the data
 * (as the CPU backend and WASM's own Reshape do) is equivalent and free.
 */
function identityKernel(fallback: tf.KernelConfig | undefined): tf.KernelFunc {
  return (args) => {
    const x = (args.inputs as { x: tf.TensorInfo }).x;
    if (x.dtype === 'string' || !fallback) return fallback!.kernelFunc(args);
    (args.backend as unknown as { incRef(d: tf.DataId): void }).incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  };
}

/**
 * MaxPoolGrad for NHWC. tfjs-backend-wasm 4.22's own kernel is wrong for more than one channel
 * (it scatters gradients to the wrong elements; SAM2's q-pooling has 32-256), so WASM gets this
 * one: the window's first maximum (as tfjs-backend-cpu picks it) receives the gradient.
 */
export function maxPoolGradNhwc(x: Float32Array, xShape: number[], dy: Float32Array, info: tf.backend_util.Conv2DInfo): Float32Array {
  const [batch, inH, inW, ch] = xShape;
  const { outHeight: outH, outWidth: outW, strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = info;
  const { effectiveFilterHeight: fh, effectiveFilterWidth: fw } = info;
  const top = info.padInfo.top;
  const left = info.padInfo.left;
  const dx = new Float32Array(x.length);
  for (let b = 0; b < batch; b++) {
    for (let oy = 0; oy < outH; oy++) {
      for (let ox = 0; ox < outW; ox++) {
        const dyOff = ((b * outH + oy) * outW + ox) * ch;
        for (let c = 0; c < ch; c++) {
          let best = -Infinity;
          let at = -1;
          for (let ky = 0; ky < fh; ky += dh) {
            const iy = oy * sh - top + ky;
            if (iy < 0 || iy >= inH) continue;
            for (let kx = 0; kx < fw; kx += dw) {
              const ix = ox * sw - left + kx;
              if (ix < 0 || ix >= inW) continue;
              const i = ((b * inH + iy) * inW + ix) * ch + c;
              if (x[i] > best) {
                best = x[i];
                at = i;
              }
            }
          }
          if (at >= 0) dx[at] += dy[dyOff + c];
        }
      }
    }
  }
  return dx;
}

/** A 2x2 pool of stride 2 whose every window lies inside the input (wasm-simd.ts's loop covers these). */
function isInsideTwoByTwo(info: tf.backend_util.Conv2DInfo): boolean {
  return (
    [info.filterHeight, info.filterWidth, info.strideHeight, info.strideWidth].every((v) => v === 2) &&
    info.dilationHeight === 1 &&
    info.dilationWidth === 1 &&
    info.padInfo.top === 0 &&
    info.padInfo.left === 0 &&
    2 * info.outHeight <= info.inHeight &&
    2 * info.outWidth <= info.inWidth
  );
}

function maxPoolGradKernel(): tf.KernelFunc {
  return (args) => {
    const backend = args.backend as unknown as Backendish;
    const { dy, input } = args.inputs as { dy: tf.TensorInfo; input: tf.TensorInfo };
    const { filterSize, strides, pad, dimRoundingMode } = args.attrs as unknown as tf.MaxPoolGradAttrs;
    const info = tf.backend_util.computePool2DInfo(input.shape as [number, number, number, number], filterSize, strides, 1, pad, dimRoundingMode);
    if (isInsideTwoByTwo(info) && input.dtype === 'float32' && dy.dtype === 'float32') return maxPool2x2Grad(backend as unknown as WasmInternals, input, dy);
    const dx = maxPoolGradNhwc(values(backend, input), input.shape, values(backend, dy), info);
    return output(backend, input.shape, dx);
  };
}

/**
 * ResizeNearestNeighborGrad for NHWC: every output pixel's gradient goes to the input pixel the
 * forward copied it from (tfjs-backend-cpu's source index rule). The kernels of both
 * tfjs-backend-cpu and tfjs-backend-wasm 4.22 scatter wrongly when there is more than one channel
 * or image, so this replaces both.
 */
export function resizeNearestGradNhwc(
  dy: Float32Array,
  dyShape: number[],
  inH: number,
  inW: number,
  alignCorners: boolean,
  halfPixelCenters: boolean,
): Float32Array {
  const [batch, outH, outW, ch] = dyShape;
  const source = (out: number, inSize: number, outSize: number) => {
    const ratio = (alignCorners && outSize > 1 ? inSize - 1 : inSize) / (alignCorners && outSize > 1 ? outSize - 1 : outSize);
    const idx = new Int32Array(outSize);
    for (let r = 0; r < outSize; r++) {
      const frac = halfPixelCenters ? ratio * (r + 0.5) : ratio * r;
      let n = Math.min(inSize - 1, alignCorners ? Math.round(frac) : Math.floor(frac));
      if (halfPixelCenters) n = Math.max(0, n);
      idx[r] = n;
    }
    return idx;
  };
  const rows = source(0, inH, outH);
  const cols = source(0, inW, outW);
  const dx = new Float32Array(batch * inH * inW * ch);
  for (let b = 0; b < batch; b++) {
    for (let r = 0; r < outH; r++) {
      const xRow = (b * inH + rows[r]) * inW;
      for (let c = 0; c < outW; c++) {
        const o = ((b * outH + r) * outW + c) * ch;
        const i = (xRow + cols[c]) * ch;
        for (let k = 0; k < ch; k++) dx[i + k] += dy[o + k];
      }
    }
  }
  return dx;
}

function resizeNearestGradKernel(): tf.KernelFunc {
  return (args) => {
    const backend = args.backend as unknown as Backendish;
    const { images, dy } = args.inputs as { images: tf.TensorInfo; dy: tf.TensorInfo };
    const { alignCorners, halfPixelCenters } = args.attrs as unknown as tf.ResizeNearestNeighborGradAttrs;
    const [, inH, inW] = images.shape;
    const dx = resizeNearestGradNhwc(values(backend, dy), dy.shape, inH, inW, alignCorners, halfPixelCenters);
    return output(backend, images.shape, dx);
  };
}

/**
 * tfjs-backend-cpu runs a broadcasting binary op (x * scalar, x + bias, x - rowMax) through a
 * generic per-element index computation, 10-50x slower than its same-shape loop. These kernels
 * take the common patterns (one side a scalar, or matching the other's trailing axes) with flat
 * loops and the same arithmetic (a double-precision op rounded to float32, as tfjs does), and hand
 * everything else to the original kernel.
 */
const BINARY: Record<string, (a: number, b: number) => number> = {
  [tf.Add]: (a, b) => a + b,
  [tf.Sub]: (a, b) => a - b,
  [tf.Multiply]: (a, b) => a * b,
  [tf.RealDiv]: (a, b) => a / b,
};

/** Size of the repeated block when `small` broadcasts over the leading axes of `big`, else 0. */
function trailingBlock(big: number[], small: number[]): number {
  const s = [...small];
  while (s.length > 0 && s[0] === 1) s.shift();
  if (s.length > big.length) return 0;
  const off = big.length - s.length;
  for (let i = 0; i < s.length; i++) if (s[i] !== big[off + i]) return 0;
  return s.reduce((p, d) => p * d, 1);
}

/**
 * Repeat count when `small` (same rank) equals `big` with its trailing axes set to 1 (a keepDims
 * reduction: each small element covers a contiguous run of big), else 0.
 */
function leadingRun(big: number[], small: number[]): number {
  if (small.length !== big.length) return 0;
  let k = small.length;
  while (k > 0 && small[k - 1] === 1) k--;
  if (k === small.length) return 0;
  for (let i = 0; i < k; i++) if (small[i] !== big[i]) return 0;
  return big.slice(k).reduce((p, d) => p * d, 1);
}

function binaryKernel(kernelName: string) {
  const op = BINARY[kernelName];
  return (fallback: tf.KernelConfig | undefined): tf.KernelFunc =>
    (args) => {
      const backend = args.backend as unknown as Backendish;
      const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const same = a.shape.length === b.shape.length && a.shape.every((d, i) => d === b.shape[i]);
      if (!same && a.dtype === 'float32' && b.dtype === 'float32') {
        const aSize = a.shape.reduce((p, d) => p * d, 1);
        const bSize = b.shape.reduce((p, d) => p * d, 1);
        const bBlock = aSize >= bSize && a.shape.length >= b.shape.length ? trailingBlock(a.shape, b.shape) : 0;
        const aBlock = !bBlock && bSize >= aSize && b.shape.length >= a.shape.length ? trailingBlock(b.shape, a.shape) : 0;
        if (bBlock || aBlock) {
          const av = values(backend, a);
          const bv = values(backend, b);
          const outShape = bBlock ? a.shape : b.shape;
          const out = new Float32Array(bBlock ? aSize : bSize);
          if (bBlock) {
            for (let i = 0, j = 0; i < out.length; i++, j = j + 1 === bBlock ? 0 : j + 1) out[i] = op(av[i], bv[j]);
          } else {
            for (let i = 0, j = 0; i < out.length; i++, j = j + 1 === aBlock ? 0 : j + 1) out[i] = op(av[j], bv[i]);
          }
          return output(backend, outShape, out);
        }
        const bRun = aSize >= bSize ? leadingRun(a.shape, b.shape) : 0;
        const aRun = !bRun && bSize >= aSize ? leadingRun(b.shape, a.shape) : 0;
        if (bRun || aRun) {
          const av = values(backend, a);
          const bv = values(backend, b);
          const out = new Float32Array(bRun ? aSize : bSize);
          if (bRun) {
            for (let j = 0, i = 0; j < bSize; j++) for (let end = i + bRun, v = bv[j]; i < end; i++) out[i] = op(av[i], v);
          } else {
            for (let j = 0, i = 0; j < aSize; j++) for (let end = i + aRun, v = av[j]; i < end; i++) out[i] = op(v, bv[i]);
          }
          return output(backend, bRun ? a.shape : b.shape, out);
        }
      }
      return fallback!.kernelFunc(args);
    };
}

/**
 * Softmax over the last axis in one pass per row, with tfjs-backend-cpu's arithmetic (x - max and
 * exp rounded to float32, the sum in double rounded to float32, then the division).
 */
function softmaxKernel(fallback: tf.KernelConfig | undefined): tf.KernelFunc {
  return (args) => {
    const backend = args.backend as unknown as Backendish;
    const { logits } = args.inputs as { logits: tf.TensorInfo };
    const { dim } = args.attrs as unknown as tf.SoftmaxAttrs;
    const rank = logits.shape.length;
    if (logits.dtype !== 'float32' || (dim !== -1 && dim !== rank - 1)) return fallback!.kernelFunc(args);
    const x = values(backend, logits);
    const n = logits.shape[rank - 1];
    const out = new Float32Array(x.length);
    const f = Math.fround;
    for (let r = 0; r < x.length; r += n) {
      let max = -Infinity;
      for (let i = 0; i < n; i++) if (x[r + i] > max) max = x[r + i];
      let sum = 0;
      for (let i = 0; i < n; i++) {
        const e = f(Math.exp(f(x[r + i] - max)));
        out[r + i] = e;
        sum += e;
      }
      const s = f(sum);
      for (let i = 0; i < n; i++) out[r + i] = out[r + i] / s;
    }
    return output(backend, logits.shape, out);
  };
}

/** Whether the kernel registered for `kernelName` on `backendName` is one of this file's. */
export function isFastKernel(kernelName: string, backendName: string): boolean {
  const k = tf.getKernel(kernelName, backendName);
  return k !== undefined && ours.has(k.kernelFunc);
}

/**
 * Registers the replacements for `backendName` (idempotent): called by the backend's loader
 * (useCpu, useWasm) once its package has registered its own kernels, so ours take their place.
 */
export function registerFastKernels(backendName: 'cpu' | 'wasm'): void {
  install(tf.Conv2DBackpropFilter, backendName, conv2dBackpropFilterKernel);
  install(tf.ResizeNearestNeighborGrad, backendName, resizeNearestGradKernel);
  if (backendName === 'cpu') {
    for (const name of Object.keys(BINARY)) install(name, 'cpu', binaryKernel(name));
    install(tf.Softmax, 'cpu', softmaxKernel);
  } else {
    install(tf.Identity, 'wasm', identityKernel);
    install(tf.MaxPoolGrad, 'wasm', maxPoolGradKernel);
    registerXnnBatchMatMul();
  }
}
