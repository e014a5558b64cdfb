/**
 * The threaded SIMD build of tfjs-backend-wasm in Node. tfjs 4.22 turns threads off in Node (tfjs
 * issue #3830): its loader gives emscripten's pthread workers a Blob URL and a Blob of the glue to
 * import, which worker_threads cannot run. This loads the same shipped build
 * (wasm-out/tfjs-backend-wasm-threaded-simd.{js,wasm}) with a worker file
 * (wasm-pthread-worker.cjs) and the glue's own path for the workers to import, and registers it
 * as the `wasm` backend: the package's kernels and medtune's replacements run on it unchanged.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Worker } from 'node:worker_threads';

const require = createRequire(import.meta.url);

/** The build's pthread pool (PTHREAD_POOL_SIZE) and backend.cc's cap on XNNPACK's pool. */
export const WASM_MAX_THREADS = 8;

/** tfjs-backend-wasm's registration priority. */
const WASM_PRIORITY = 2;

const GLUE = require.resolve('@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.js');
const BINARY = join(dirname(GLUE), 'tfjs-backend-wasm-threaded-simd.wasm');
const WORKER = fileURLToPath(new URL('./wasm-pthread-worker.cjs', import.meta.url));

type Factory = () => tf.KernelBackend | Promise<tf.KernelBackend>;
type WasmModule = ConstructorParameters<typeof BackendWasm>[0] & {
  PThread: { unusedWorkers: Worker[]; runningWorkers: Worker[] };
  cwrap(name: string, ret: 'number' | null, args: 'number'[]): (...args: number[]) => number;
};
type Imports = WebAssembly.Imports & { env: WebAssembly.ModuleImports };

let packaged: Factory | undefined;
/** The thread count the registered `wasm` factory loads: 1 is the package's own (unthreaded SIMD). */
let registered = 1;

/**
 * Registers the `wasm` backend that runs `threads` threads: the package's own loader for 1, the
 * threaded build for more. A backend of another thread count already initialised is disposed
 * (with its tensors); `tf.setBackend('wasm')` then loads the new one.
 */
export function registerWasmBackend(threads: number, backendClass: typeof BackendWasm): void {
  packaged ??= tf.findBackendFactory('wasm') ?? undefined;
  if (!packaged) throw new Error('tfjs-backend-wasm has not registered its backend');
  if (threads === registered) return;
  tf.removeBackend('wasm');
  tf.registerBackend('wasm', threads > 1 ? () => loadThreaded(threads, backendClass) : packaged, WASM_PRIORITY);
  registered = threads;
}

function loadThreaded(threads: number, backendClass: typeof BackendWasm): Promise<tf.KernelBackend> {
  const factory = require(GLUE) as (config: object) => Promise<WasmModule>;
  return new Promise((resolve, reject) => {
    factory({
      // what each pthread worker imports before it instantiates the module (tfjs passes a Blob)
      mainScriptUrlOrBlob: GLUE,
      locateFile: (path: string) => (path.endsWith('.worker.js') ? WORKER : join(dirname(GLUE), path)),
      instantiateWasm(imports: Imports, receive: (instance: WebAssembly.Instance, module: WebAssembly.Module) => void) {
        // backend.cc sizes XNNPACK's pool from this import, halved (it assumes two hyper-threads
        // per core), and caps it at the core count: report twice the threads asked for
        imports.env.emscripten_num_logical_cores = () => 2 * threads;
        WebAssembly.instantiate(readFileSync(BINARY), imports).then(({ instance, module }) => receive(instance, module), reject);
        return {};
      },
      onAbort: (what: string) => reject(new Error(`the threaded WASM build aborted: ${what}`)),
    }).then((module) => {
      // the calls tfjs's own loader wraps for BackendWasm
      module.tfjs = {
        init: module.cwrap('init', null, []),
        initWithThreadsCount: module.cwrap('init_with_threads_count', null, ['number']),
        getThreadsCount: module.cwrap('get_threads_count', 'number', []),
        registerTensor: module.cwrap('register_tensor', null, ['number', 'number', 'number']),
        disposeData: module.cwrap('dispose_data', null, ['number']),
        dispose: module.cwrap('dispose', null, []),
      };
      const backend = new backendClass(module);
      // the build starts WASM_MAX_THREADS workers up front and XNNPACK's pool (made just now)
      // took threads - 1 of them: the rest would idle, each holding a V8 isolate
      for (const worker of module.PThread.unusedWorkers.splice(0)) worker.terminate();
      // the pool's threads wait for work for the life of the backend; they must not keep the
      // process alive once its own work is done (emscripten refs a worker running a pthread)
      for (const worker of module.PThread.runningWorkers) worker.unref();
      resolve(backend);
    }, reject);
  });
}
