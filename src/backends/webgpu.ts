/** WebGPU: @tensorflow/tfjs-backend-webgpu over the `webgpu` package (Dawn; Vulkan on Linux). */
import * as tf from '@tensorflow/tfjs-core';
import { activate, installHint, isNotInstalled, type BackendChoice } from './common.js';

interface DawnModule {
  create(options: string[]): GpuLike;
  globals: object;
}
interface GpuLike {
  requestAdapter(opts?: object): Promise<{ info?: Record<string, string> } | null>;
}

export async function useWebgpu(): Promise<BackendChoice> {
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
