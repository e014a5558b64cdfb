/** Whether the webgpu tests can run here: a WebGPU adapter (lavapipe in CI), or why not. */
import { probeWebgpu } from '../../src/backends/webgpu.js';

export interface WebgpuAvailability {
  /** run the tests */
  run: boolean;
  /** why they cannot run; under CI the tests fail with it instead of skipping */
  reason: string;
}

export async function webgpuAvailability(): Promise<WebgpuAvailability> {
  const probe = await probeWebgpu();
  if (probe.ok) return { run: true, reason: '' };
  const reason = `no WebGPU here (${probe.reason}); scripts/setup-lavapipe.sh installs a software adapter`;
  if (!process.env.CI) console.warn(`skipping the webgpu tests: ${reason}`);
  return { run: false, reason };
}
