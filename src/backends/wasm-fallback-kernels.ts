/**
 * The WASM backend runs forward ops about 40x faster than the plain-JS CPU backend but lacks a
 * few gradient kernels (Conv2DBackpropFilter, the depthwise-conv gradients, ...). This registers,
 * for every kernel the CPU backend has and WASM lacks, a WASM kernel that copies its inputs to a
 * private CPU backend, runs the CPU kernel there and copies the outputs back. Only the rare
 * missing kernels pay the copy; everything else stays in WASM.
 */
import * as tf from '@tensorflow/tfjs-core';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { registerFastKernels } from './fast-kernels.js';

let registered: string[] | undefined;

export function registerWasmFallbackKernels(): string[] {
  if (registered) return registered;
  // replacements first (Conv2DBackpropFilter, and the wrong WASM MaxPoolGrad and
  // ResizeNearestNeighborGrad): they run on WASM memory with no copy to a CPU backend
  registerFastKernels('wasm');
  const cpu = new MathBackendCPU();
  const wasmKernels = new Set(tf.getKernelsForBackend('wasm').map((k) => k.kernelName));
  registered = [];
  for (const cpuKernel of tf.getKernelsForBackend('cpu')) {
    // medtune's own kernels (Medtune*) are registered where they pay off, by their modules: never copied
    if (wasmKernels.has(cpuKernel.kernelName) || cpuKernel.kernelName.startsWith('Medtune')) continue;
    tf.registerKernel({
      kernelName: cpuKernel.kernelName,
      backendName: 'wasm',
      kernelFunc: ({ inputs, attrs, backend }) => {
        const wasm = backend as BackendWasm;
        const cpuInputs: tf.NamedTensorInfoMap = {};
        for (const [name, t] of Object.entries(inputs)) {
          if (t) cpuInputs[name] = cpu.makeTensorInfo(t.shape, t.dtype, wasm.readSync(t.dataId));
        }
        const out = cpuKernel.kernelFunc({ inputs: cpuInputs, attrs, backend: cpu });
        const outs = Array.isArray(out) ? out : [out];
        const copied = outs.map((o) => {
          const result = wasm.makeOutput(o.shape, o.dtype, undefined, cpu.readSync(o.dataId));
          cpu.disposeData(o.dataId);
          return result;
        });
        for (const t of Object.values(cpuInputs)) if (t) cpu.disposeData(t.dataId);
        return Array.isArray(out) ? copied : copied[0];
      },
    });
    registered.push(cpuKernel.kernelName);
  }
  return registered;
}
