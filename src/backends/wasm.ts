/**
 * The WebAssembly backend (@tensorflow/tfjs-backend-wasm, SIMD), with CPU fallbacks for its missing
 * gradient kernels; on more than one thread, the package's threaded build (see wasm-threads.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';
import { activate, cpuDevice, installHint, isNotInstalled, type BackendChoice } from './common.js';

const require = createRequire(import.meta.url);

/** `threads`: XNNPACK's pool, the calling thread included (default: every core; at most WASM_MAX_THREADS). */
export async function useWasm(threads = availableParallelism()): Promise<BackendChoice> {
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
  const { registerWasmBackend, WASM_MAX_THREADS } = await import('./wasm-threads.js');
  const asked = Math.min(threads, WASM_MAX_THREADS);
  registerWasmBackend(asked, wasm.BackendWasm);
  wasm.setThreadsCount(asked);
  // the CPU backend provides the kernels WASM lacks (some gradients), see wasm-fallback-kernels
  await import('@tensorflow/tfjs-backend-cpu');
  const { registerWasmFallbackKernels } = await import('./wasm-fallback-kernels.js');
  registerWasmFallbackKernels();
  (await import('./adamw-kernels.js')).registerAdamWKernel('wasm');
  await activate('wasm');
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  const running = wasm.getThreadsCount();
  if (running !== asked) throw new Error(`backend 'wasm' runs ${running} threads where ${asked} were asked for`);
  const capped = threads > asked ? ` (${threads} asked; the threaded build runs at most ${WASM_MAX_THREADS})` : '';
  return { backend: 'wasm', device: `${cpuDevice()}, WebAssembly${simd ? ' SIMD' : ''}, ${running} thread${running === 1 ? '' : 's'}${capped}` };
}
