/** `medtune doctor`: one block per backend, the facts it reports checked against this machine, and what auto picks. */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import type { DoctorReport } from '../src/commands/doctor.js';
import { cudaGpus, parseTensorflowGpus } from '../src/backends/tensorflow.js';
import { probeWebgpu } from '../src/backends/webgpu.js';
import { installed } from './helpers/packages.js';


function medtune(...args: string[]): string {
  return execFileSync(process.execPath, ['bin/medtune.js', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 240_000 });
}

it('reads the GPUs from TensorFlow\'s device-creation log lines', () => {
  const log = [
    'I0000 00:00:1733120000.123456  4242 gpu_device.cc:2020] Created device /job:localhost/replica:0/task:0/device:GPU:0 with 138876 MB memory:  -> device: 0, name: NVIDIA H200, pci bus id: 0000:19:00.0, compute capability: 9.0',
    'I0000 00:00:1733120000.223456  4242 gpu_device.cc:2020] Created device /job:localhost/replica:0/task:0/device:GPU:1 with 22300 MB memory:  -> device: 1, name: NVIDIA GeForce RTX 4090, pci bus id: 0000:3b:00.0, compute capability: 8.9',
    'I0000 00:00:1733120000.323456  4242 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use available CPU instructions',
  ].join('\n');
  expect(parseTensorflowGpus(log)).toEqual([
    { index: 0, memoryMB: 138876, name: 'NVIDIA H200', pciBusId: '0000:19:00.0', computeCapability: '9.0' },
    { index: 1, memoryMB: 22300, name: 'NVIDIA GeForce RTX 4090', pciBusId: '0000:3b:00.0', computeCapability: '8.9' },
  ]);
  expect(parseTensorflowGpus('no devices here')).toEqual([]);
});

describe('medtune doctor', () => {
  it('--json reports each backend as this machine has it, and the pick of auto', async () => {
    const r = JSON.parse(medtune('doctor', '--json')) as DoctorReport;
    expect(r.cpu.available).toBe(true);
    expect(r.wasm).toMatchObject({ available: true, why: expect.stringMatching(/WebAssembly.*\d+ threads?/) });

    const tfNode = r.tensorflow.packages.find((p) => p.package === '@tensorflow/tfjs-node')!;
    expect(tfNode.installed).toBe(installed('@tensorflow/tfjs-node'));
    if (tfNode.installed) {
      expect(tfNode.loads, tfNode.error).toBe(true);
      expect(tfNode.tfVersion).toMatch(/^\d+\.\d+\.\d+/);
      expect(r.tensorflow.why).toContain(`TensorFlow ${tfNode.tfVersion}`);
    } else {
      expect(r.tensorflow.why).toMatch(/not installed: `npx medtune setup tensorflow`/);
    }
    expect(r.tensorflow.driverGpus).toEqual(cudaGpus());
    expect(r.tensorflow.threads.intraOp).toBeGreaterThan(0);

    const probe = await probeWebgpu();
    expect(r.webgpu.available).toBe(probe.ok);
    if (probe.ok) {
      expect(r.webgpu.adapter).toMatchObject({ vendor: probe.adapter.vendor, architecture: probe.adapter.architecture, isFallbackAdapter: probe.adapter.isFallbackAdapter });
      expect(r.webgpu.adapter!.limits.maxBufferSize).toBeGreaterThan(0);
    }

    const gpuTf = r.tensorflow.packages.some((p) => p.package === '@tensorflow/tfjs-node-gpu' && p.loads && p.gpus.length > 0);
    const hardwareWebgpu = probe.ok && !probe.adapter.isFallbackAdapter;
    expect(r.auto.candidate).toBe(gpuTf ? 'tensorflow-gpu' : hardwareWebgpu ? 'webgpu' : tfNode.loads ? 'tensorflow-cpu' : 'wasm');
    if (r.auto.candidate === 'wasm') expect(r.auto.hint).toMatch(/npx medtune setup tensorflow/);
  });

  it('prints one block per backend, then auto', () => {
    const text = medtune('doctor');
    const heads = text.split('\n').filter((l) => /^\S/.test(l)).map((l) => l.split(/\s+/)[0]);
    expect(heads).toEqual(['tensorflow', 'webgpu', 'wasm', 'cpu', 'auto']);
    expect(text).toMatch(/threads: \d+ intra-op, \d+ inter-op/);
  });
});
