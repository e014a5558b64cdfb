/**
 * medtune's own SIMD loops (wasm-simd.wat) as 'wasm' kernels, run as a module of ours on the
 * backend's memory (tfjs exports no way to add a kernel to its binary), each equal bit for bit
 * to the ops it replaces:
 * - the fused AdamW update (FUSED_ADAMW, src/train/optimizer.ts): one loop over the parameter,
 *   its gradient and moments instead of ~14 wasm ops each a pass over the parameter, with
 *   adamWUpdate's arithmetic operation by operation;
 * - Sum over leading axes (bias and LayerNorm weight gradients): rows added in order, reading the
 *   input once, where wasm's Sum transposes it first (a step @256 spent ~220 ms there);
 * - the gradient of Hiera's 2x2 q-pooling, four channels at a time (fast-kernels.ts calls it);
 * and, not bit for bit but closer to the exact value, the sum of squares of clipGradNorm
 * (SUM_OF_SQUARES) in one float64 pass, where square then sum took two passes in float32 and a
 * written copy of every gradient (~150 ms a step @256).
 */
import * as tf from '@tensorflow/tfjs-core';
import { adamWFactors, checkAdamWInputs, FUSED_ADAMW, SUM_OF_SQUARES, type AdamWAttrs, type AdamWInputs } from './adamw-kernels.js';
import { registerOwnKernel } from './common.js';
import { offsetOf, replaceWasmKernel, type WasmInternals } from './wasm-internals.js';
import { SHARED_MEMORY_BINARY, UNSHARED_MEMORY_BINARY } from './wasm-simd-binary.js';

interface SimdExports {
  adamw(...args: number[]): void;
  sumRows(x: number, out: number, rows: number, cols: number): void;
  sumOfSquares(x: number, n: number, out: number): void;
  maxPool2x2Grad(x: number, dy: number, dx: number, batch: number, inH: number, inW: number, ch: number, outH: number, outW: number): void;
}

const instances = new WeakMap<WebAssembly.Memory, SimdExports>();

/** The module instantiated on the backend's memory (the threaded build's is shared, the other's not). */
function simd(backend: WasmInternals): SimdExports {
  const memory = backend.wasm.wasmMemory ?? backend.wasm.asm.memory;
  if (!memory) throw new Error("medtune's wasm kernels: the wasm backend's memory is not reachable");
  let exports = instances.get(memory);
  if (!exports) {
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    const binary = Buffer.from(shared ? SHARED_MEMORY_BINARY : UNSHARED_MEMORY_BINARY, 'base64');
    exports = new WebAssembly.Instance(new WebAssembly.Module(binary), { env: { memory } }).exports as unknown as SimdExports;
    instances.set(memory, exports);
  }
  return exports;
}

const adamWKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as unknown as WasmInternals;
  const ins = inputs as unknown as AdamWInputs;
  checkAdamWInputs(ins);
  const at = (t: tf.TensorInfo | undefined) => (t ? offsetOf(wasm, t) : 0);
  const outs = [0, 1, 2].map(() => wasm.makeOutput(ins.param.shape, 'float32'));
  const k = adamWFactors(attrs as unknown as AdamWAttrs);
  simd(wasm).adamw(
    ...[ins.param, ins.grad, ins.expAvg, ins.expAvgSq, ...outs].map(at),
    tf.util.sizeFromShape(ins.param.shape),
    ins.expAvg ? 1 : 0,
    ...[k.gradScale, k.decay, k.oneMinusBeta1, k.beta2, k.oneMinusBeta2, k.biasCorrection2Sqrt, k.eps, k.negStepSize],
  );
  return outs;
};

const sumOfSquaresKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const { x } = inputs as { x: tf.TensorInfo };
  if (x.dtype !== 'float32') throw new Error(`${SUM_OF_SQUARES}: float32 tensors only, got ${x.dtype}`);
  const wasm = backend as unknown as WasmInternals;
  const out = wasm.makeOutput([], 'float32');
  simd(wasm).sumOfSquares(offsetOf(wasm, x), tf.util.sizeFromShape(x.shape), offsetOf(wasm, out));
  return out;
};

/** out[c] = x[0][c] + ... + x[rows-1][c] in row order, for float32 (rows, cols) at byte offsets in the backend's memory. */
export function addRows(backend: WasmInternals, xAt: number, outAt: number, rows: number, cols: number): void {
  simd(backend).sumRows(xAt, outAt, rows, cols);
}

/**
 * The gradient of a 2x2 max pool of stride 2 whose windows lie inside x (NHWC float32; Hiera's
 * q-pooling) in one SIMD pass, the bits of maxPoolGradNhwc (fast-kernels.ts, its caller); x, dy on this backend.
 */
export function maxPool2x2Grad(backend: WasmInternals, x: tf.TensorInfo, dy: tf.TensorInfo): tf.TensorInfo {
  const [batch, inH, inW, ch] = x.shape;
  const [, outH, outW] = dy.shape;
  const dx = backend.makeOutput(x.shape, 'float32');
  simd(backend).maxPool2x2Grad(offsetOf(backend, x), offsetOf(backend, dy), offsetOf(backend, dx), batch, inH, inW, ch, outH, outW);
  return dx;
}

/** Sum over a leading run of axes (0..k-1) of float32 x through sumRows; others to wasm's own. */
function sumKernel(replaced: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    const { axis, keepDims } = args.attrs as unknown as tf.SumAttrs;
    const axes = tf.util.parseAxisParam(axis, x.shape).sort((a, b) => a - b);
    if (x.dtype !== 'float32' || axes.length === 0 || axes.some((a, i) => a !== i)) return replaced.kernelFunc(args);
    const rows = tf.util.sizeFromShape(x.shape.slice(0, axes.length));
    const kept = x.shape.slice(axes.length);
    const wasm = args.backend as unknown as WasmInternals;
    const out = wasm.makeOutput(keepDims ? [...axes.map(() => 1), ...kept] : kept, 'float32');
    addRows(wasm, offsetOf(wasm, x), offsetOf(wasm, out), rows, tf.util.sizeFromShape(kept));
    return out;
  };
}

/** Registers FUSED_ADAMW and SUM_OF_SQUARES and replaces Sum on wasm (idempotent). */
export function registerWasmSimdKernels(): void {
  registerOwnKernel(FUSED_ADAMW, 'wasm', adamWKernel);
  registerOwnKernel(SUM_OF_SQUARES, 'wasm', sumOfSquaresKernel);
  replaceWasmKernel(tf.Sum, sumKernel);
}
