/** The WebAssembly backend (@tensorflow/tfjs-backend-wasm, SIMD), with CPU fallbacks for its missing gradient kernels. */
import * as tf from '@tensorflow/tfjs-core';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { activate, cpuDevice, installHint, isNotInstalled, type BackendChoice } from './common.js';

const require = createRequire(import.meta.url);

export async function useWasm(): Promise<BackendChoice> {
  let wasm: typeof import('@tensorflow/tfjs-backend-wasm');
  try {
    wasm = await import('@tensorflow/tfjs-backend-wasm');
  } catch (err) {
    if (isNotInstalled(err, '@tensorflow/tfjs-backend-wasm')) throw installHint('@tensorflow/tfjs-backend-wasm', 'wasm');
    throw err;
  }
  // the .wasm binaries sit next to the package's main file; Node reads them from disk
  try {
    wasm.setWasmPaths(`${dirname(require.resolve('@tensorflow/tfjs-backend-wasm'))}/`);
  } catch {
    // initialised earlier in this process: the paths were set then
  }
  // the CPU backend provides the kernels WASM lacks (some gradients), see wasm-fallback-kernels
  await import('@tensorflow/tfjs-backend-cpu');
  const { registerWasmFallbackKernels } = await import('./wasm-fallback-kernels.js');
  registerWasmFallbackKernels();
  await activate('wasm');
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  const threads = wasm.getThreadsCount();
  return { backend: 'wasm', device: `${cpuDevice()}, WebAssembly${simd ? ' SIMD' : ''}, ${threads} thread${threads === 1 ? '' : 's'}` };
}
