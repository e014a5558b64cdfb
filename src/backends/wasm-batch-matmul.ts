/**
 * BatchMatMul on the WASM backend with every batch entry in XNNPACK.
 *
 * tfjs-backend-wasm sends a product to XNNPACK's SIMD GEMM only when it is unbatched and not
 * transposed; everything else (attention's (B, heads, N, d) products, and the transposed products
 * of every matMul gradient) takes a scalar loop about 4-10x slower. This kernel replaces wasm's
 * BatchMatMul: for batched products of equal batch shape and enough work per entry it
 * materializes a transposed operand (a cheap copy), registers each batch entry as a view tensor
 * on the same WASM memory (no copy), and calls the backend's own BatchMatMul export once per
 * entry, writing straight into the output's memory. Everything else goes to the kernel it
 * replaces. Gradients need nothing of their own: tfjs's BatchMatMul gradient is made of
 * BatchMatMuls, which land here again.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';

interface WasmInternals {
  wasm: {
    cwrap(name: string, ret: null, args: string[]): (...a: unknown[]) => void;
    tfjs: { registerTensor(id: number, size: number, offset: number): void; disposeData(id: number): void };
  };
  dataIdMap: { get(dataId: tf.DataId): { id: number; memoryOffset: number } };
  dataIdNextNumber: number;
  disposeData(dataId: tf.DataId): boolean;
}

type Wasm = WasmInternals & Pick<BackendWasm, 'makeOutput'>;

/**
 * Below this many multiply-adds per batch entry the per-entry XNNPACK call (an operator set up and
 * torn down) costs more than WASM's scalar batched loop.
 */
const XNN_MIN_MACS = 32 * 1024;

const calls = new WeakMap<object, (...a: unknown[]) => void>();

function shapeBytes(shape: number[]): Uint8Array {
  return new Uint8Array(new Int32Array(shape).buffer);
}

/** x with its last two axes swapped, through wasm's own Transpose kernel (a new tensor). */
function swapLastAxes(x: tf.TensorInfo, backend: Wasm): tf.TensorInfo {
  const r = x.shape.length;
  const perm = [...x.shape.keys()];
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return tf.getKernel(tf.Transpose, 'wasm')!.kernelFunc({ inputs: { x }, backend: backend as unknown as tf.KernelBackend, attrs: { perm } }) as tf.TensorInfo;
}

/** a (G, M, K) @ b (G, K, N), any leading shape G, each entry one XNNPACK product. */
function xnnPerEntry(a: tf.TensorInfo, b: tf.TensorInfo, backend: Wasm): tf.TensorInfo {
  const r = a.shape.length;
  const [m, k] = a.shape.slice(-2);
  const n = b.shape[r - 1];
  const g = a.shape.slice(0, -2).reduce((p, d) => p * d, 1);
  let call = calls.get(backend.wasm);
  if (!call) {
    // the same export and signature tfjs-backend-wasm's BatchMatMul kernel uses
    call = backend.wasm.cwrap(tf.BatchMatMul, null, ['number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number']);
    calls.set(backend.wasm, call);
  }
  const out = backend.makeOutput([...a.shape.slice(0, -2), m, n], 'float32');
  const aOff = backend.dataIdMap.get(a.dataId).memoryOffset;
  const bOff = backend.dataIdMap.get(b.dataId).memoryOffset;
  const oOff = backend.dataIdMap.get(out.dataId).memoryOffset;
  const aShape = shapeBytes([1, m, k]);
  const bShape = shapeBytes([1, k, n]);
  const views: number[] = [];
  const view = (offset: number, size: number) => {
    const id = backend.dataIdNextNumber++;
    backend.wasm.tfjs.registerTensor(id, size, offset);
    views.push(id);
    return id;
  };
  try {
    for (let i = 0; i < g; i++) {
      const av = view(aOff + 4 * i * m * k, m * k);
      const bv = view(bOff + 4 * i * k * n, k * n);
      const ov = view(oOff + 4 * i * m * n, m * n);
      call(av, aShape, 3, bv, bShape, 3, false, false, ov);
      // unregistering the views also drops the XNNPACK operator cached on bv
      for (const id of views.splice(0)) backend.wasm.tfjs.disposeData(id);
    }
  } finally {
    for (const id of views) backend.wasm.tfjs.disposeData(id);
  }
  return out;
}

function batchMatMulKernel(replaced: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const backend = args.backend as unknown as Wasm;
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as unknown as tf.BatchMatMulAttrs;
    const r = a.shape.length;
    const sameBatch = r >= 3 && b.shape.length === r && a.shape.slice(0, -2).every((d, i) => d === b.shape[i]);
    const batch = a.shape.slice(0, -2).reduce((p, d) => p * d, 1);
    const [m, k] = transposeA ? [a.shape[r - 1], a.shape[r - 2]] : [a.shape[r - 2], a.shape[r - 1]];
    const n = transposeB ? b.shape[r - 2] : b.shape[r - 1];
    if (!sameBatch || batch < 2 || a.dtype !== 'float32' || b.dtype !== 'float32' || m * k * n < XNN_MIN_MACS) return replaced.kernelFunc(args);
    const at = transposeA ? swapLastAxes(a, backend) : a;
    const bt = transposeB ? swapLastAxes(b, backend) : b;
    try {
      return xnnPerEntry(at, bt, backend);
    } finally {
      if (at !== a) backend.disposeData(at.dataId);
      if (bt !== b) backend.disposeData(bt.dataId);
    }
  };
}

const ours = new Set<tf.KernelFunc>();

/** Replaces wasm's BatchMatMul (idempotent; once the wasm package has registered its own). */
export function registerXnnBatchMatMul(): void {
  const existing = tf.getKernel(tf.BatchMatMul, 'wasm');
  if (!existing || ours.has(existing.kernelFunc)) return;
  tf.unregisterKernel(tf.BatchMatMul, 'wasm');
  const kernelFunc = batchMatMulKernel(existing);
  ours.add(kernelFunc);
  // the replaced kernel's setup (its cwrap of the export) still has to run for the fallback
  tf.registerKernel({ kernelName: tf.BatchMatMul, backendName: 'wasm', setupFunc: existing.setupFunc, kernelFunc });
}

/** True when wasm's BatchMatMul is this file's kernel. */
export function xnnBatchMatMulRegistered(): boolean {
  const k = tf.getKernel(tf.BatchMatMul, 'wasm');
  return k !== undefined && ours.has(k.kernelFunc);
}
