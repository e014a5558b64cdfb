/**
 * The WebAssembly backend (@tensorflow/tfjs-backend-wasm, SIMD), with CPU fallbacks for its missing
 * gradient kernels; on more than one thread, the package's threaded build (see wasm-threads.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';
import { activate, cpuDevice, installHint, isNotInstalled, setAttentionBudget, type BackendChoice } from './common.js';
import { keptFilterBytes } from './wasm-batch-matmul.js';

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
  (await import('./wasm-simd.js')).registerWasmSimdKernels();
  await activate('wasm');
  guardHeap(tf.backend() as unknown as WasmModuleHolder);
  // a softmax gradient holds several score-sized tensors at once: keep each well inside the heap
  setAttentionBudget(WASM_ATTENTION_BYTES);
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  const running = wasm.getThreadsCount();
  if (running !== asked) throw new Error(`backend 'wasm' runs ${running} threads where ${asked} were asked for`);
  const capped = threads > asked ? ` (${threads} asked; the threaded build runs at most ${WASM_MAX_THREADS})` : '';
  return { backend: 'wasm', device: `${cpuDevice()}, WebAssembly${simd ? ' SIMD' : ''}, ${running} thread${running === 1 ? '' : 's'}${capped}` };
}

/** Largest attention score tensor on wasm (TfOps chunks queries below it): 1/64 of the 4 GiB heap. */
const WASM_ATTENTION_BYTES = 64 * 2 ** 20;

interface WasmModuleHolder {
  wasm: { _malloc(bytes: number): number; _free(at: number): void; HEAPU8: Uint8Array };
}

const guarded = new WeakSet<object>();

/** The 32-bit heap's maximum, and what its allocator and XNNPACK's scratch need beside the tensors. */
const HEAP_MAX = 4 * 2 ** 30;
const HEAP_RESERVE = 384 * 2 ** 20;

/**
 * tfjs-backend-wasm takes every tensor's memory from the module's malloc and never checks the
 * result; near the heap's 4 GiB the kernels then hang or write over the heap's start instead of
 * failing. So an allocation that would put the live tensors within HEAP_RESERVE of the maximum, or
 * that malloc refuses, throws (a WebAssembly.RuntimeError, as an abort is, so the trainer's message
 * about the heap applies and `train --dry-run` says the config does not fit). The live bytes are
 * the blocks tfjs took and has not freed, not tf.memory()'s count, which counts a block once per
 * view of it (reshapes, the clones each op saves for its gradient), and the weights XNNPACK keeps
 * packed for the products (wasm-batch-matmul.ts).
 */
function guardHeap(backend: WasmModuleHolder): void {
  const module = backend.wasm;
  if (guarded.has(module)) return;
  // emscripten's export wrappers replace themselves with the raw exports on their first call: resolve them first
  module._free(module._malloc(8));
  const { _malloc: malloc, _free: free } = module;
  const sizes = new Map<number, number>();
  let live = 0;
  const gib = (n: number) => (n / 2 ** 30).toFixed(2);
  const exhausted = (bytes: number) =>
    new WebAssembly.RuntimeError(
      `wasm heap exhausted: ${(bytes / 2 ** 20).toFixed(0)} MiB asked with ${gib(live)} GiB of tensors and ${gib(keptFilterBytes())} GiB of packed weights live, ` +
        `the heap at ${gib(module.HEAPU8.length)} of its ${gib(HEAP_MAX)} GiB`,
    );
  module._malloc = (bytes: number) => {
    if (live + keptFilterBytes() + bytes > HEAP_MAX - HEAP_RESERVE) throw exhausted(bytes);
    const at = malloc(bytes);
    if (at === 0 && bytes > 0) throw exhausted(bytes);
    // the export returns a signed i32; tfjs keeps addresses past 2 GiB unsigned (>>> 0)
    sizes.set(at >>> 0, bytes);
    live += bytes;
    return at;
  };
  module._free = (at: number) => {
    live -= sizes.get(at >>> 0) ?? 0;
    sizes.delete(at >>> 0);
    free(at);
  };
  guarded.add(module);
}
