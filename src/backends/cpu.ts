/** The plain-JavaScript CPU backend (@tensorflow/tfjs-backend-cpu): always available. */
import { activate, cpuDevice, type BackendChoice } from './common.js';

export async function useCpu(): Promise<BackendChoice> {
  await import('@tensorflow/tfjs-backend-cpu');
  // faster (and, for one gradient, corrected) kernels in place of the package's own
  const { registerFastKernels } = await import('./fast-kernels.js');
  registerFastKernels('cpu');
  (await import('./adamw-kernels.js')).registerAdamWKernel();
  await activate('cpu');
  return { backend: 'cpu', device: `${cpuDevice()}, plain JavaScript` };
}
