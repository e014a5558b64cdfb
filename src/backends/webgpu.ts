/** WebGPU: @tensorflow/tfjs-backend-webgpu over the `webgpu` package (Dawn; Vulkan on Linux). */
import * as tf from '@tensorflow/tfjs-core';
import { activate, installHint, isNotInstalled, setAttentionBudget, type BackendChoice } from './common.js';

interface DawnModule {
  create(options: string[]): GpuLike;
  globals: object;
}
interface AdapterLike {
  info?: Record<string, unknown>;
  isFallbackAdapter?: boolean;
  limits: Record<string, number>;
  features: ReadonlySet<string>;
  requestDevice(descriptor: { requiredLimits: Record<string, number>; requiredFeatures: string[] }): Promise<unknown>;
}
interface GpuLike {
  requestAdapter(opts?: object): Promise<AdapterLike | null>;
}

/** What the WebGPU adapter Dawn offers is, in the terms a user can act on. */
export interface WebgpuAdapterReport {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** a software adapter (lavapipe, SwiftShader): correct but slow; `auto` never picks it */
  isFallbackAdapter: boolean;
  limits: Record<string, number>;
  features: string[];
}

export type WebgpuProbe = { ok: true; adapter: WebgpuAdapterReport } | { ok: false; reason: string };

const NO_ADAPTER =
  'no WebGPU adapter found: Dawn needs a Vulkan driver and the Vulkan loader (Debian/Ubuntu: the GPU vendor\'s driver, or ' +
  'Mesa\'s `mesa-vulkan-drivers` >= 25 for software rendering, and `libvulkan1`)';

/** Sets navigator.gpu from Dawn if nothing provides it yet; returns it. */
async function gpu(): Promise<GpuLike> {
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
  return g.navigator!.gpu!;
}

function describeAdapter(adapter: AdapterLike): WebgpuAdapterReport {
  const info = adapter.info ?? {};
  const text = (k: string) => (typeof info[k] === 'string' ? (info[k] as string) : '');
  const limits: Record<string, number> = {};
  // GPUSupportedLimits keeps its values on the prototype: copy them one by one
  for (const k in adapter.limits) limits[k] = adapter.limits[k];
  return {
    vendor: text('vendor'),
    architecture: text('architecture'),
    device: text('device'),
    description: text('description'),
    isFallbackAdapter: Boolean(adapter.isFallbackAdapter ?? info.isFallbackAdapter),
    limits,
    features: [...adapter.features].sort(),
  };
}

/** Whether a WebGPU adapter is there, and which; never throws. */
export async function probeWebgpu(): Promise<WebgpuProbe> {
  try {
    const adapter = await (await gpu()).requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) return { ok: false, reason: NO_ADAPTER };
    return { ok: true, adapter: describeAdapter(adapter) };
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  }
}

export function adapterName(a: WebgpuAdapterReport): string {
  return [a.vendor, a.device || a.description || a.architecture].filter(Boolean).join(' ') || 'unknown adapter';
}

/** Features tfjs or our kernels use when the adapter has them. */
const WANTED_FEATURES = ['timestamp-query', 'subgroups', 'shader-f16'];

let installed = false;

/**
 * Replaces tfjs's 'webgpu' factory with one that asks for every limit at the adapter's maximum
 * (tfjs asks for a few; the storage-buffer count stays at 8 otherwise) and errors raised
 * (webgpu-checked.ts), and registers our webgpu kernels.
 */
async function installWebgpuBackend(): Promise<void> {
  if (installed) return;
  const { CheckedWebGPUBackend, labelWebgpuKernels } = await import('./webgpu-checked.js');
  const { registerWebgpuKernels } = await import('./webgpu-kernels.js');
  tf.removeBackend('webgpu');
  tf.registerBackend(
    'webgpu',
    async () => {
      const adapter = await (await gpu()).requestAdapter({ powerPreference: 'high-performance' });
      if (!adapter) throw new Error(NO_ADAPTER);
      const { limits, features, isFallbackAdapter } = describeAdapter(adapter);
      const device = (await adapter.requestDevice({
        requiredLimits: limits,
        requiredFeatures: WANTED_FEATURES.filter((f) => features.includes(f)),
      })) as ConstructorParameters<typeof CheckedWebGPUBackend>[0];
      // no attention score tensor larger than a binding
      setAttentionBudget(device.limits.maxStorageBufferBindingSize);
      const info = (adapter.info ?? undefined) as ConstructorParameters<typeof CheckedWebGPUBackend>[1];
      return new CheckedWebGPUBackend(device, info, isFallbackAdapter);
    },
    3,
  );
  registerWebgpuKernels();
  labelWebgpuKernels();
  installed = true;
}

/** Make WebGPU the tfjs backend; `probe`: the adapter already found (by `auto`), else looked up here. */
export async function useWebgpu(found?: WebgpuProbe): Promise<BackendChoice> {
  await gpu();
  const probe = found ?? (await probeWebgpu());
  if (!probe.ok) throw new Error(`backend 'webgpu': ${probe.reason}`);
  await import('@tensorflow/tfjs-backend-webgpu');
  if (tf.findBackendFactory('webgpu') === null) {
    throw new Error("backend 'webgpu' did not register: @tensorflow/tfjs-backend-webgpu was imported before navigator.gpu existed");
  }
  await installWebgpuBackend();
  await activate('webgpu');
  const a = probe.adapter;
  return { backend: 'webgpu', device: `WebGPU (Dawn): ${adapterName(a)}${a.isFallbackAdapter ? ' (software fallback adapter)' : ''}` };
}
