/** Native TensorFlow: @tensorflow/tfjs-node-gpu (only with a CUDA GPU) or @tensorflow/tfjs-node. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { activate, cpuDevice, isNotInstalled, type BackendChoice } from './common.js';

/** Names of the NVIDIA GPUs the kernel driver reports (Linux), empty when none. */
export function cudaGpus(): string[] {
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

export async function useTensorflow(preferGpu: boolean): Promise<BackendChoice> {
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
