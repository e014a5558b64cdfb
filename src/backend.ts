/**
 * Choosing the TensorFlow.js backend. Each backend's loader lives in src/backends/<name>.ts and is
 * loaded with dynamic import() so the CLI runs without the optional packages.
 *
 * - `tensorflow`: @tensorflow/tfjs-node-gpu when it loads and a CUDA GPU is present, else
 *   @tensorflow/tfjs-node (native TensorFlow on the CPU; `npx medtune setup tensorflow` builds it).
 * - `webgpu`: @tensorflow/tfjs-backend-webgpu over the `webgpu` package (Dawn; Vulkan on Linux).
 * - `wasm`: @tensorflow/tfjs-backend-wasm (SIMD; its threaded build on more than one thread), with
 *   CPU fallbacks for its missing gradient kernels.
 * - `cpu`: @tensorflow/tfjs-backend-cpu, plain JavaScript; always available.
 * - `auto`: tensorflow on a CUDA GPU, then WebGPU on a hardware adapter (never a software fallback
 *   one), then tensorflow on the CPU, then wasm (see autoOrder).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendChoice } from './backends/common.js';

export type { BackendChoice } from './backends/common.js';
export type BackendName = 'auto' | 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';
export const BACKEND_NAMES: readonly BackendName[] = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'];

export interface SelectOptions {
  /** do not print the choice */
  quiet?: boolean;
  /** threads of the backend's pools (TensorFlow's intra/inter-op, wasm's XNNPACK); default all cores */
  threads?: number;
}

// The backend is chosen here and printed once; silence tfjs's own 'install tfjs-node' banner.
tf.env().set('PROD', true);

const announced = new Set<string>();

/** One candidate of `auto`: it yields a value, or the reason it was passed over. */
export type AutoAttempt<T> = () => Promise<{ ok: true; value: T } | { ok: false; reason: string }>;
export type AutoCandidate = 'tensorflow-gpu' | 'webgpu' | 'tensorflow-cpu' | 'wasm';

export interface AutoResult<T> {
  value: T;
  picked: AutoCandidate;
  /** why each earlier candidate was passed over, e.g. "tensorflow on GPU: no NVIDIA GPU" */
  passedOver: string[];
  /** how to get a faster backend than the one picked, when there is a way */
  hint?: string;
}

const AUTO_LABELS: Record<AutoCandidate, string> = {
  'tensorflow-gpu': 'tensorflow on a CUDA GPU',
  webgpu: 'WebGPU on a hardware adapter',
  'tensorflow-cpu': 'tensorflow on the CPU',
  wasm: 'wasm',
};

/**
 * The order of `auto`, shared by selectBackend (attempts that activate a backend) and `medtune
 * doctor` (attempts that read what it found): the first candidate that works wins.
 */
export async function autoOrder<T>(attempts: Record<AutoCandidate, AutoAttempt<T>>, cudaGpuPresent: boolean): Promise<AutoResult<T>> {
  const passedOver: string[] = [];
  const order: AutoCandidate[] = ['tensorflow-gpu', 'webgpu', 'tensorflow-cpu', 'wasm'];
  for (const picked of order) {
    const r = await attempts[picked]();
    if (r.ok) {
      let hint: string | undefined;
      if (cudaGpuPresent && picked !== 'tensorflow-gpu') hint = 'for the NVIDIA GPU: `npx medtune setup tensorflow --gpu` (CUDA 12)';
      else if (picked === 'wasm') hint = 'faster on this CPU: `npx medtune setup tensorflow` (native TensorFlow, about 3x wasm)';
      return { value: r.value, picked, passedOver, hint };
    }
    passedOver.push(`${AUTO_LABELS[picked]}: ${r.reason}`);
  }
  throw new Error(`no backend could start: ${passedOver.join('; ')}`);
}

async function attempt(load: () => Promise<BackendChoice>) {
  try {
    return { ok: true as const, value: await load() };
  } catch (err) {
    return { ok: false as const, reason: (err as Error).message };
  }
}

async function selectAuto(threads: number | undefined): Promise<BackendChoice> {
  const tensorflow = () => import('./backends/tensorflow.js');
  const webgpu = () => import('./backends/webgpu.js');
  const { cudaGpus } = await tensorflow();
  const r = await autoOrder<BackendChoice>(
    {
      'tensorflow-gpu': () => attempt(async () => (await tensorflow()).useTensorflowGpu(threads)),
      webgpu: () =>
        attempt(async () => {
          const { probeWebgpu, useWebgpu } = await webgpu();
          const probe = await probeWebgpu();
          if (!probe.ok) throw new Error(probe.reason.split(':')[0]);
          if (probe.adapter.isFallbackAdapter) throw new Error(`only a software fallback adapter (${probe.adapter.device || probe.adapter.description})`);
          return useWebgpu(probe);
        }),
      'tensorflow-cpu': () => attempt(async () => (await tensorflow()).useTensorflowCpu(threads)),
      wasm: () => attempt(async () => (await import('./backends/wasm.js')).useWasm(threads)),
    },
    cudaGpus().length > 0,
  );
  const why = r.passedOver.length ? ` (auto: ${r.passedOver.map((p) => p.split(' (')[0]).join('; ')})` : ' (auto)';
  return { ...r.value, device: `${r.value.device}${why}${r.hint ? `; ${r.hint}` : ''}` };
}

/**
 * Make `name` the active tfjs backend and report what it runs on. Explicit backends that are not
 * installed throw an Error that says how to install them. The choice is printed (to stderr)
 * once per process.
 */
export async function selectBackend(name: BackendName, opts: SelectOptions = {}): Promise<BackendChoice> {
  let choice: BackendChoice;
  switch (name) {
    case 'cpu':
      choice = await (await import('./backends/cpu.js')).useCpu();
      break;
    case 'wasm':
      choice = await (await import('./backends/wasm.js')).useWasm(opts.threads);
      break;
    case 'webgpu':
      choice = await (await import('./backends/webgpu.js')).useWebgpu();
      break;
    case 'tensorflow':
      choice = await (await import('./backends/tensorflow.js')).useTensorflow(opts.threads);
      break;
    case 'auto':
      choice = await selectAuto(opts.threads);
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
