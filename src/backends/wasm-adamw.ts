/**
 * The fused AdamW update (FUSED_ADAMW, src/train/optimizer.ts) for the 'wasm' backend: one SIMD
 * loop (wasm-adamw.wat) over the parameter, its gradient and moments where tfjs-backend-wasm keeps
 * them, instead of ~14 wasm ops each a pass over the parameter. It runs as a module of our own on
 * the backend's memory (tfjs exports no way to add a kernel to its binary). Its arithmetic is
 * adamWUpdate's, operation by operation in float32, so it equals the composite ops bit for bit.
 */
import * as tf from '@tensorflow/tfjs-core';
import { adamWFactors, checkAdamWInputs, FUSED_ADAMW, type AdamWAttrs, type AdamWInputs } from './adamw-kernels.js';
import { SHARED_MEMORY_BINARY, UNSHARED_MEMORY_BINARY } from './wasm-adamw-binary.js';

interface WasmBackendInternals {
  wasm: { wasmMemory?: WebAssembly.Memory; asm: { memory?: WebAssembly.Memory } };
  dataIdMap: { get(dataId: tf.DataId): { memoryOffset: number } };
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
}

type AdamWExport = (...args: number[]) => void;

const instances = new WeakMap<WebAssembly.Memory, AdamWExport>();

/** The loop instantiated on the backend's memory (the threaded build's is shared, the other's not). */
function adamWExport(backend: WasmBackendInternals): AdamWExport {
  const memory = backend.wasm.wasmMemory ?? backend.wasm.asm.memory;
  if (!memory) throw new Error(`${FUSED_ADAMW}: the wasm backend's memory is not reachable`);
  let adamw = instances.get(memory);
  if (!adamw) {
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    const binary = Buffer.from(shared ? SHARED_MEMORY_BINARY : UNSHARED_MEMORY_BINARY, 'base64');
    const instance = new WebAssembly.Instance(new WebAssembly.Module(binary), { env: { memory } });
    adamw = instance.exports.adamw as AdamWExport;
    instances.set(memory, adamw);
  }
  return adamw;
}

const wasmKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as unknown as WasmBackendInternals;
  const ins = inputs as unknown as AdamWInputs;
  checkAdamWInputs(ins);
  const at = (t: tf.TensorInfo | undefined) => (t ? wasm.dataIdMap.get(t.dataId).memoryOffset : 0);
  const outs = [0, 1, 2].map(() => wasm.makeOutput(ins.param.shape, 'float32'));
  const k = adamWFactors(attrs as unknown as AdamWAttrs);
  adamWExport(wasm)(
    at(ins.param), at(ins.grad), at(ins.expAvg), at(ins.expAvgSq),
    ...outs.map(at),
    tf.util.sizeFromShape(ins.param.shape), ins.expAvg ? 1 : 0,
    k.gradScale, k.decay, k.oneMinusBeta1, k.beta2, k.oneMinusBeta2, k.biasCorrection2Sqrt, k.eps, k.negStepSize,
  );
  return outs;
};

/** Registers the kernel for the wasm backend (idempotent). */
export function registerWasmAdamWKernel(): void {
  const existing = tf.getKernel(FUSED_ADAMW, 'wasm');
  if (existing?.kernelFunc === wasmKernel) return;
  if (existing) tf.unregisterKernel(FUSED_ADAMW, 'wasm');
  tf.registerKernel({ kernelName: FUSED_ADAMW, backendName: 'wasm', kernelFunc: wasmKernel });
}
