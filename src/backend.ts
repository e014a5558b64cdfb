/**
 * Choosing the TensorFlow.js backend. Optional backends (tfjs-node, tfjs-node-gpu, Dawn WebGPU)
 * are loaded with dynamic import() so the CLI runs without them.
 *
 * - `tensorflow`: @tensorflow/tfjs-node-gpu when it loads and a CUDA GPU is present, else
 *   @tensorflow/tfjs-node (native TensorFlow on the CPU).
 * - `webgpu`: @tensorflow/tfjs-backend-webgpu over the `webgpu` package (Dawn; Vulkan on Linux).
 * - `wasm`: @tensorflow/tfjs-backend-wasm (SIMD), with CPU fallbacks for its missing gradient kernels.
 * - `cpu`: @tensorflow/tfjs-backend-cpu, plain JavaScript; always available.
 * - `auto`: tfjs-node-gpu with a CUDA GPU, then tfjs-node, then cpu.
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

export type BackendName = 'auto' | 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';
export const BACKEND_NAMES: readonly BackendName[] = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'];

export interface BackendChoice {
  /** the tfjs backend now active: 'tensorflow' | 'webgpu' | 'wasm' | 'cpu' */
  backend: string;
  /** what it runs on, in words */
  device: string;
}

export interface SelectOptions {
  /** do not print the choice */
  quiet?: boolean;
}

const require = createRequire(import.meta.url);

// The backend is chosen here and printed once; silence tfjs's own 'install tfjs-node' banner.
tf.env().set('PROD', true);

function isNotInstalled(err: unknown, pkg: string): boolean {
  const e = err as NodeJS.ErrnoException;
  return (e?.code === 'ERR_MODULE_NOT_FOUND' || e?.code === 'MODULE_NOT_FOUND') && String(e.message).includes(pkg);
}

function installHint(pkg: string, what: string): Error {
  return new Error(`backend '${what}' needs the optional package ${pkg}, which is not installed: run \`npm install ${pkg}\``);
}

/** Names of the NVIDIA GPUs the kernel driver reports (Linux), empty when none. */
function cudaGpus(): string[] {
  const dir = '/proc/driver/nvidia/gpus';
  if (!existsSync(dir)) return [];
  try {
    return readdirSync(dir).map((id) => {
      const info = readFileSync(join(dir, id, 'information'), 'utf8');
      return /Model:\s*(.+)/.exec(info)?.[1]?.trim() ?? `NVIDIA GPU ${id}`;
    });
  } catch {
    return [];
  }
}

async function activate(name: string): Promise<void> {
  let ok: boolean;
  try {
    ok = await tf.setBackend(name);
  } catch (err) {
    throw new Error(`backend '${name}' failed to initialise: ${(err as Error).message}`);
  }
  if (!ok || tf.getBackend() !== name) throw new Error(`backend '${name}' failed to initialise`);
  await tf.ready();
}

function cpuDevice(): string {
  return `CPU (${process.arch})`;
}

async function useCpu(): Promise<BackendChoice> {
  await import('@tensorflow/tfjs-backend-cpu');
  await activate('cpu');
  return { backend: 'cpu', device: `${cpuDevice()}, plain JavaScript` };
}

async function useWasm(): Promise<BackendChoice> {
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
  const { registerWasmFallbackKernels } = await import('./backends/wasm-fallback-kernels.js');
  registerWasmFallbackKernels();
  await activate('wasm');
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  const threads = wasm.getThreadsCount();
  return { backend: 'wasm', device: `${cpuDevice()}, WebAssembly${simd ? ' SIMD' : ''}, ${threads} thread${threads === 1 ? '' : 's'}` };
}

/** @tensorflow/tfjs-node-gpu (only with a CUDA GPU) or @tensorflow/tfjs-node. */
async function useTensorflow(preferGpu: boolean): Promise<BackendChoice> {
  const gpus = cudaGpus();
  if (preferGpu && gpus.length > 0) {
    try {
      await import('@tensorflow/tfjs-node-gpu' as string);
      await activate('tensorflow');
      return { backend: 'tensorflow', device: `CUDA ${gpus.join(', ')} (tfjs-node-gpu)` };
    } catch (err) {
      if (!isNotInstalled(err, '@tensorflow/tfjs-node-gpu')) {
        process.stderr.write(`medtune: @tensorflow/tfjs-node-gpu did not load (${(err as Error).message}); trying @tensorflow/tfjs-node\n`);
      }
    }
  }
  try {
    await import('@tensorflow/tfjs-node' as string);
  } catch (err) {
    if (isNotInstalled(err, '@tensorflow/tfjs-node')) {
      throw new Error(
        "backend 'tensorflow' needs the optional package @tensorflow/tfjs-node (native TensorFlow), which is not installed: " +
          'run `npm install @tensorflow/tfjs-node`, or `npm install @tensorflow/tfjs-node-gpu` for a CUDA GPU',
      );
    }
    throw new Error(`@tensorflow/tfjs-node is installed but failed to load: ${(err as Error).message}`);
  }
  await activate('tensorflow');
  return { backend: 'tensorflow', device: `${cpuDevice()}, native TensorFlow (tfjs-node)` };
}

interface DawnModule {
  create(options: string[]): GpuLike;
  globals: object;
}
interface GpuLike {
  requestAdapter(opts?: object): Promise<{ info?: Record<string, string> } | null>;
}

async function useWebgpu(): Promise<BackendChoice> {
  const g = globalThis as { navigator?: { gpu?: GpuLike } };
  if (!g.navigator?.gpu) {
    let dawn: DawnModule;
    try {
      dawn = (await import('webgpu' as string)) as DawnModule;
    } catch (err) {
      if (isNotInstalled(err, 'webgpu')) throw installHint('webgpu', 'webgpu');
      throw new Error(`the webgpu package (Dawn) failed to load: ${(err as Error).message}`);
    }
    // must exist before @tensorflow/tfjs-backend-webgpu is first imported, which checks navigator.gpu
    Object.assign(globalThis, dawn.globals);
    Object.defineProperty(globalThis, 'navigator', {
      value: { ...(g.navigator ?? {}), gpu: dawn.create([]) },
      configurable: true,
      writable: true,
    });
  }
  const adapter = await g.navigator!.gpu!.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) {
    throw new Error(
      "backend 'webgpu': no WebGPU adapter found (Dawn needs a GPU with a Vulkan driver and libvulkan; on the GPU machine `source .gpu-bundle/enter.sh` first)",
    );
  }
  await import('@tensorflow/tfjs-backend-webgpu');
  if (tf.findBackendFactory('webgpu') === null) {
    throw new Error("backend 'webgpu' did not register: @tensorflow/tfjs-backend-webgpu was imported before navigator.gpu existed");
  }
  await activate('webgpu');
  const info = adapter.info ?? {};
  const name = [info.vendor, info.device || info.description || info.architecture].filter(Boolean).join(' ') || 'unknown adapter';
  return { backend: 'webgpu', device: `WebGPU (Dawn): ${name}` };
}

const announced = new Set<string>();

/**
 * Make `name` the active tfjs backend and report what it runs on. Explicit backends that are not
 * installed throw an Error that says how to install them. The choice is printed (to stderr)
 * once per process.
 */
export async function selectBackend(name: BackendName, opts: SelectOptions = {}): Promise<BackendChoice> {
  let choice: BackendChoice;
  switch (name) {
    case 'cpu':
      choice = await useCpu();
      break;
    case 'wasm':
      choice = await useWasm();
      break;
    case 'webgpu':
      choice = await useWebgpu();
      break;
    case 'tensorflow':
      choice = await useTensorflow(true);
      break;
    case 'auto':
      try {
        choice = await useTensorflow(true);
      } catch (err) {
        // not installed is the normal case; a broken install deserves a word
        if (!/is not installed/.test((err as Error).message)) {
          process.stderr.write(`medtune: native TensorFlow unavailable (${(err as Error).message}); using cpu\n`);
        }
        choice = await useCpu();
      }
      break;
    default:
      throw new Error(`unknown backend '${String(name)}'; choose one of ${BACKEND_NAMES.join(', ')}`);
  }
  const line = `medtune: backend ${choice.backend} on ${choice.device}`;
  if (!opts.quiet && !announced.has(line)) {
    process.stderr.write(`${line}\n`);
    announced.add(line);
  }
  return choice;
}
