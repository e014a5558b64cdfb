/**
 * Kernels medtune registers for the 'webgpu' backend over tfjs's own. One shader may bind at most
 * `maxStorageBuffersPerShaderStage` storage buffers (8 by default, 16 on lavapipe): tfjs's AddN binds
 * one per input, so an addN over more tensors (the ~281 gradient norms of clipGradNorm) is summed
 * here in chunks. (Concat, and Pack through it, chunk already in tfjs.) Also the fused LayerNorm
 * (webgpu-layer-norm.ts) and attention (webgpu-attention.ts), and for software adapters (lavapipe) matrix products, convolutions,
 * softmax, sums and matrix transposes (webgpu-matmul.ts, webgpu-conv.ts, webgpu-rows.ts,
 * webgpu-transpose.ts), and the optimizer's fused AdamW and sum of squares (webgpu-adamw.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { registerOwnKernel } from './common.js';
import { optimizerKernels } from './webgpu-adamw.js';
import { attentionKernels } from './webgpu-attention.js';
import { layerNormKernels } from './webgpu-layer-norm.js';
import { matMulKernels, type SoftwareKernel } from './webgpu-matmul.js';
import { convKernels } from './webgpu-conv.js';
import { rowKernels } from './webgpu-rows.js';
import { transposeKernels } from './webgpu-transpose.js';

/** tfjs's kernels that ours replaced, by kernel name. */
const tfjsKernels = new Map<string, tf.KernelConfig>();

/** tfjs-backend-webgpu's own kernel `name`, also after ours replaced it. */
export function tfjsWebgpuKernel(name: string): tf.KernelConfig {
  const k = tfjsKernels.get(name) ?? tf.getKernel(name, 'webgpu');
  if (!k) throw new Error(`no webgpu kernel ${name}`);
  return k;
}

function replaceKernel(name: string, kernelFunc: tf.KernelFunc): void {
  if (!tfjsKernels.has(name)) tfjsKernels.set(name, tfjsWebgpuKernel(name));
  tf.unregisterKernel(name, 'webgpu');
  tf.registerKernel({ kernelName: name, backendName: 'webgpu', kernelFunc });
}

/** Inputs one tfjs AddN shader can take: one storage buffer goes to the output. */
function maxAddNInputs(backend: WebGPUBackend): number {
  return backend.device.limits.maxStorageBuffersPerShaderStage - 1;
}

function chunkedAddN(args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo {
  const inputs = args.inputs as unknown as tf.TensorInfo[];
  const backend = args.backend as WebGPUBackend;
  const addN = tfjsWebgpuKernel(tf.AddN).kernelFunc;
  const width = maxAddNInputs(backend);
  if (inputs.length <= width) return addN(args) as tf.TensorInfo;
  const partials: tf.TensorInfo[] = [];
  for (let i = 0; i < inputs.length; i += width) {
    partials.push(addN({ ...args, inputs: inputs.slice(i, i + width) as unknown as tf.NamedTensorInfoMap }) as tf.TensorInfo);
  }
  const sum = chunkedAddN({ ...args, inputs: partials as unknown as tf.NamedTensorInfoMap });
  for (const p of partials) backend.disposeData(p.dataId);
  return sum;
}

/** `ours` on a software adapter (CheckedWebGPUBackend.softwareAdapter), tfjs's kernel elsewhere or where ours declines. */
function onSoftwareAdapter(name: string, ours: SoftwareKernel): tf.KernelFunc {
  const tfjs = tfjsWebgpuKernel(name).kernelFunc;
  return (args) => {
    const backend = args.backend as WebGPUBackend & { softwareAdapter?: boolean };
    return (backend.softwareAdapter ? ours(args, backend) : null) ?? (tfjs(args) as tf.TensorInfo);
  };
}

/** Registers medtune's webgpu kernels; idempotent. */
export function registerWebgpuKernels(): void {
  replaceKernel(tf.AddN, chunkedAddN);
  for (const [name, ours] of [...matMulKernels, ...convKernels, ...rowKernels, ...transposeKernels]) replaceKernel(name, onSoftwareAdapter(name, ours));
  for (const [name, ours] of [...layerNormKernels, ...attentionKernels, ...optimizerKernels]) registerOwnKernel(name, 'webgpu', ours);
}
