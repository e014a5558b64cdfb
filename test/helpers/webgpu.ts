/** Whether the webgpu tests can run here: a WebGPU adapter (lavapipe in CI), or why not. */
import * as tf from '@tensorflow/tfjs-core';
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

interface ProgramLike {
  constructor: { name: string };
  shaderKey: string;
}

/** `fn`'s result and the programs it dispatched on the active webgpu backend, as `Class:shaderKey`. */
export async function programsDuring<T>(fn: () => Promise<T>): Promise<{ result: T; programs: string[] }> {
  const backend = tf.backend() as unknown as { runWebGPUProgram: (program: ProgramLike, ...rest: unknown[]) => unknown };
  const programs: string[] = [];
  const run = backend.runWebGPUProgram;
  backend.runWebGPUProgram = function (this: unknown, program: ProgramLike, ...rest: unknown[]) {
    programs.push(`${program.constructor.name}:${program.shaderKey}`);
    return run.call(this, program, ...rest);
  };
  try {
    return { result: await fn(), programs };
  } finally {
    backend.runWebGPUProgram = run;
  }
}

/** The largest absolute difference of `ours` from `ref`, relative to ref's largest magnitude (at least 1). */
export function relativeError(ours: Float32Array, ref: Float32Array): number {
  let err = 0;
  let scale = 1;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(ours[i] - ref[i]));
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return err / scale;
}
