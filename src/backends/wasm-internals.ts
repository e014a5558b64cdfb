/**
 * What medtune's wasm kernels (wasm-batch-matmul.ts, wasm-simd.ts) reach inside
 * tfjs-backend-wasm 4.22: its memory, its tensor registry and its kernels, and replacing a kernel
 * while keeping the one replaced as the fallback.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';

export interface WasmInternals {
  wasm: {
    cwrap(name: string, ret: null, args: string[]): (...a: number[]) => void;
    tfjs: { registerTensor(id: number, size: number, offset: number): void; disposeData(id: number): void };
    /** the threaded build's (shared) memory */
    wasmMemory?: WebAssembly.Memory;
    /** the single-threaded build's */
    asm: { memory?: WebAssembly.Memory };
  };
  dataIdMap: { get(dataId: tf.DataId): { id: number; memoryOffset: number } };
  dataIdNextNumber: number;
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
  makeOutput: BackendWasm['makeOutput'];
}

/** Byte offset of t's data in wasm memory. */
export function offsetOf(backend: WasmInternals, t: tf.TensorInfo): number {
  return backend.dataIdMap.get(t.dataId).memoryOffset;
}

/** The wasm kernel registered as `name` (ours where we replaced it) on backend data: its single output, a new tensor. */
export function runWasmKernel(name: string, inputs: tf.NamedTensorInfoMap, attrs: tf.NamedAttrMap, backend: unknown): tf.TensorInfo {
  return tf.getKernel(name, 'wasm')!.kernelFunc({ inputs, attrs, backend: backend as tf.KernelBackend }) as tf.TensorInfo;
}

const ours = new Set<tf.KernelFunc>();

/** Replaces wasm's kernel `kernelName` by `make(it)` (idempotent; once the wasm package has registered its own). */
export function replaceWasmKernel(kernelName: string, make: (replaced: tf.KernelConfig) => tf.KernelFunc): void {
  const existing = tf.getKernel(kernelName, 'wasm');
  if (!existing || ours.has(existing.kernelFunc)) return;
  tf.unregisterKernel(kernelName, 'wasm');
  const kernelFunc = make(existing);
  ours.add(kernelFunc);
  // the replaced kernel's setup (its cwrap of the export) still has to run for the fallback
  tf.registerKernel({ kernelName, backendName: 'wasm', setupFunc: existing.setupFunc, kernelFunc });
}

/** True when wasm's kernel `name` is one replaceWasmKernel put there. */
export function isReplacedWasmKernel(name: string): boolean {
  const k = tf.getKernel(name, 'wasm');
  return k !== undefined && ours.has(k.kernelFunc);
}
