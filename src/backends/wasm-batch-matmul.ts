/**
 * A batched matrix product for the WASM backend that runs every batch entry in XNNPACK.
 *
 * tfjs-backend-wasm sends a product to XNNPACK's SIMD GEMM only when it is unbatched and not
 * transposed; everything else (attention's (B, heads, N, d) products) takes a scalar loop about
 * 4-10x slower. This kernel takes a (G, M, K) and b (G, K, N), registers each batch entry as a
 * view tensor on the same WASM memory (no copy), and calls the backend's own BatchMatMul export
 * once per entry, writing straight into the output's memory.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';

export const XNN_BATCH_MATMUL = 'MedtuneXnnBatchMatMul';

interface WasmInternals {
  wasm: {
    cwrap(name: string, ret: null, args: string[]): (...a: unknown[]) => void;
    tfjs: { registerTensor(id: number, size: number, offset: number): void; disposeData(id: number): void };
  };
  dataIdMap: { get(dataId: tf.DataId): { id: number; memoryOffset: number } };
  dataIdNextNumber: number;
}

const calls = new WeakMap<object, (...a: unknown[]) => void>();

function shapeBytes(shape: number[]): Uint8Array {
  return new Uint8Array(new Int32Array(shape).buffer);
}

function xnnBatchMatMul({ inputs, backend }: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo {
  const wasm = backend as WasmInternals & Pick<BackendWasm, 'makeOutput'>;
  const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
  if (a.dtype !== 'float32' || b.dtype !== 'float32') throw new Error(`${XNN_BATCH_MATMUL}: float32 only`);
  const [g, m, k] = a.shape;
  const [gb, kb, n] = b.shape;
  if (a.shape.length !== 3 || b.shape.length !== 3 || g !== gb || k !== kb) {
    throw new Error(`${XNN_BATCH_MATMUL}: needs (G, M, K) and (G, K, N), got ${a.shape} and ${b.shape}`);
  }
  let call = calls.get(wasm.wasm)!;
  if (!call) {
    // the same export and signature tfjs-backend-wasm's BatchMatMul kernel uses
    call = wasm.wasm.cwrap(tf.BatchMatMul, null, ['number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number']);
    calls.set(wasm.wasm, call);
  }
  const out = wasm.makeOutput([g, m, n], 'float32');
  const aOff = wasm.dataIdMap.get(a.dataId).memoryOffset;
  const bOff = wasm.dataIdMap.get(b.dataId).memoryOffset;
  const oOff = wasm.dataIdMap.get(out.dataId).memoryOffset;
  const aShape = shapeBytes([1, m, k]);
  const bShape = shapeBytes([1, k, n]);
  const views: number[] = [];
  const view = (offset: number, size: number) => {
    const id = wasm.dataIdNextNumber++;
    wasm.wasm.tfjs.registerTensor(id, size, offset);
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
      for (const id of views.splice(0)) wasm.wasm.tfjs.disposeData(id);
    }
  } finally {
    for (const id of views) wasm.wasm.tfjs.disposeData(id);
  }
  return out;
}

let registered = false;

/** Registers the kernel for the wasm backend (idempotent). */
export function registerXnnBatchMatMul(): void {
  if (registered || tf.getKernel(XNN_BATCH_MATMUL, 'wasm')) {
    registered = true;
    return;
  }
  tf.registerKernel({ kernelName: XNN_BATCH_MATMUL, backendName: 'wasm', kernelFunc: xnnBatchMatMul as unknown as tf.KernelFunc });
  registered = true;
}

/** True when the active backend is wasm and the kernel is there. */
export function xnnBatchMatMulAvailable(): boolean {
  return tf.getBackend() === 'wasm' && tf.getKernel(XNN_BATCH_MATMUL, 'wasm') !== undefined;
}

/** a (G, M, K) @ b (G, K, N) on the wasm backend, no gradient of its own. */
export function xnnBatchMatMul3d(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  return tf.engine().runKernel(XNN_BATCH_MATMUL, { a, b }, {}) as tf.Tensor;
}
