/**
 * The fused AdamW kernel (FUSED_ADAMW: src/backends/adamw-kernels.ts on cpu, wasm-simd.ts,
 * webgpu-adamw.ts) against the composite tfjs-op path of the same AdamW class (the kernel
 * unregistered), over three steps with and without weight decay, on each backend; and against
 * PyTorch's golden AdamW step. Without a WebGPU adapter the webgpu cases skip, and fail when CI is set.
 * On tensorflow (no custom kernels there) the composite path makes its scalar tensors once per step.
 * On wasm and webgpu clipGradNorm's fused sum of squares (SUM_OF_SQUARES) against Square + Sum and float64.
 */
import * as tf from '@tensorflow/tfjs-core';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { FUSED_ADAMW, SUM_OF_SQUARES } from '../src/backends/adamw-kernels.js';
import { AdamW, buildParamGroups, clipGradNorm } from '../src/train/optimizer.js';
import { GOLDEN_DIR } from './helpers/golden.js';
import { webgpuAvailability } from './helpers/webgpu.js';

const gpu = await webgpuAvailability();

/** Parameter shapes: a matrix, a bias, and a size that is no multiple of the GPU workgroup. */
const SHAPES: Record<string, number[]> = { 'a.weight': [6, 5], 'a.bias': [7], 'b.weight': [3, 67] };
const STEPS = 3;

/** Deterministic values in about [-scale, scale], some exactly zero (a zero gradient still decays). */
function values(n: number, seed: number, scale: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, (_, i) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return i % 11 === 3 ? 0 : ((s / 2 ** 32) * 2 - 1) * scale;
  });
}

interface Snapshot {
  param: Float32Array;
  expAvg: Float32Array;
  expAvgSq: Float32Array;
}

interface Run {
  /** per step, per parameter key */
  snapshots: Array<Map<string, Snapshot>>;
  /** live tensors after each step */
  tensors: number[];
  /** kernels run by the last step */
  kernels: string[];
  /** tensors the last step created: kernel outputs and uploads */
  created: number;
}

/** The id the next tensor gets (ids count up from the engine's start). */
function nextTensorId(): number {
  const t = tf.tensor([0]);
  t.dispose();
  return t.id + 1;
}

/** Three AdamW steps on the active backend from fixed parameters and gradients. */
async function run(weightDecay: number): Promise<Run> {
  const params = new Map(Object.entries(SHAPES).map(([k, shape], i) => [k, tf.variable(tf.tensor(values(tf.util.sizeFromShape(shape), 7 + i, 1), shape))]));
  const opt = new AdamW(params, buildParamGroups(params, { lr: 0.01, weightDecay, noDecayBiasNorm: true }));
  const out: Run = { snapshots: [], tensors: [], kernels: [], created: 0 };
  for (let step = 0; step < STEPS; step++) {
    const grads = new Map(
      Object.entries(SHAPES).map(([k, shape], i) => [k, tf.tensor(values(tf.util.sizeFromShape(shape), 100 * step + i, 0.1 * (step + 1)), shape)]),
    );
    // the schedule's lr scale changes between steps; step 2's gradients are clipped
    const firstId = nextTensorId();
    const profile = await tf.profile(() => opt.step(grads, 1 - 0.2 * step, step === 1 ? 0.37 : 1));
    out.created = nextTensorId() - 1 - firstId;
    out.kernels = profile.kernels.map((k) => k.name);
    tf.dispose([...grads.values()]);
    out.tensors.push(tf.memory().numTensors);
    const state = await opt.exportState();
    const snap = new Map<string, Snapshot>();
    for (const [k, p] of params) {
      snap.set(k, { param: Float32Array.from(await p.data()), expAvg: state.expAvg.get(k)!.data, expAvgSq: state.expAvgSq.get(k)!.data });
    }
    out.snapshots.push(snap);
  }
  opt.dispose();
  tf.dispose([...params.values()]);
  return out;
}

/** The same run with the fused kernel unregistered: the composite path. */
async function runComposite(weightDecay: number): Promise<Run> {
  const backend = tf.getBackend();
  const kernel = tf.getKernel(FUSED_ADAMW, backend)!;
  tf.unregisterKernel(FUSED_ADAMW, backend);
  try {
    return await run(weightDecay);
  } finally {
    tf.registerKernel(kernel);
  }
}

/** Largest elementwise relative difference (0 where both are 0). */
function worstRelative(ours: Float32Array, ref: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(ours[i] - ref[i]);
    if (d > 0) worst = Math.max(worst, d / Math.max(Math.abs(ours[i]), Math.abs(ref[i])));
  }
  return worst;
}

function expectSameRuns(fused: Run, composite: Run): void {
  for (let step = 0; step < STEPS; step++) {
    for (const [key, ref] of composite.snapshots[step]) {
      const ours = fused.snapshots[step].get(key)!;
      for (const what of ['param', 'expAvg', 'expAvgSq'] as const) {
        expect(ours[what].length, `${key} ${what}`).toBe(ref[what].length);
        expect(worstRelative(ours[what], ref[what]), `step ${step + 1} ${key} ${what}`).toBeLessThanOrEqual(1e-6);
      }
    }
  }
  // the state was updated: the parameters moved and the moments are not zero
  const last = fused.snapshots[STEPS - 1].get('a.weight')!;
  expect(last.expAvgSq.some((v) => v > 0)).toBe(true);
  expect(worstRelative(last.param, fused.snapshots[0].get('a.weight')!.param)).toBeGreaterThan(0);
}

function expectFlatTensorCount(r: Run): void {
  expect(r.tensors.every((n) => n === r.tensors[0]), `live tensors after each step: ${r.tensors}`).toBe(true);
}

describe.runIf(!gpu.run && process.env.CI)('fused AdamW on webgpu (CI)', () => {
  it('has a WebGPU adapter', () => {
    throw new Error(gpu.reason);
  });
});

const backends = ['cpu', 'wasm', ...(gpu.run ? ['webgpu' as const] : [])] as const;

describe.each(backends)('fused AdamW on %s', (backend) => {
  afterAll(async () => {
    await selectBackend('cpu', { quiet: true });
  });

  for (const weightDecay of [0, 0.05]) {
    it(`equals the composite path over ${STEPS} steps, weight decay ${weightDecay}`, async () => {
      await selectBackend(backend, { quiet: true, threads: 1 });
      const fused = await run(weightDecay);
      const composite = await runComposite(weightDecay);
      // one kernel per parameter, and no elementwise op around it
      expect(fused.kernels).toEqual(Object.keys(SHAPES).map(() => FUSED_ADAMW));
      expect(composite.kernels).toContain('Multiply');
      expectSameRuns(fused, composite);
      expectFlatTensorCount(fused);
      expectFlatTensorCount(composite);
    });
  }

  it('rejects a gradient of another shape, naming both shapes', async () => {
    await selectBackend(backend, { quiet: true, threads: 1 });
    const params = new Map([['w', tf.variable(tf.zeros([2, 3]))]]);
    const opt = new AdamW(params, buildParamGroups(params, { lr: 0.01, weightDecay: 0 }));
    const grads = new Map([['w', tf.zeros([3, 2])]]);
    expect(() => opt.step(grads)).toThrow(`${FUSED_ADAMW}: shape [3,2] where the parameter is [2,3]`);
    tf.dispose([...grads.values(), ...params.values()]);
    opt.dispose();
  });

  it('reproduces torch.optim.AdamW(lr=1e-3, weight_decay=0.01) one step from the golden gradients', async () => {
    await selectBackend(backend, { quiet: true, threads: 1 });
    const weights = readSafetensors(join(GOLDEN_DIR, 'weights.safetensors'));
    const gradsHost = readSafetensors(join(GOLDEN_DIR, 'grads.safetensors'));
    const expected = readSafetensors(join(GOLDEN_DIR, 'adamw_step1.safetensors'));
    const params = new Map<string, tf.Variable>();
    for (const [k] of expected) params.set(k, tf.variable(tf.tensor(weights.get(k)!.data, weights.get(k)!.shape)));
    const opt = new AdamW(params, buildParamGroups(params, { lr: 1e-3, weightDecay: 0.01 }));
    const grads = new Map([...params.keys()].filter((k) => gradsHost.has(k)).map((k) => [k, tf.tensor(gradsHost.get(k)!.data, gradsHost.get(k)!.shape)]));
    const profile = await tf.profile(() => opt.step(grads));
    expect(new Set(profile.kernels.map((k) => k.name))).toEqual(new Set([FUSED_ADAMW]));
    for (const [k, ref] of expected) {
      const ours = await params.get(k)!.data();
      let err = 0;
      for (let i = 0; i < ref.data.length; i++) err = Math.max(err, Math.abs(ours[i] - ref.data[i]));
      expect(err, k).toBeLessThanOrEqual(1e-6);
    }
    tf.dispose([...grads.values(), ...params.values()]);
    opt.dispose();
  });
});

const require = createRequire(import.meta.url);
const tensorflowInstalled = (() => {
  try {
    require.resolve('@tensorflow/tfjs-node');
    return true;
  } catch {
    return false;
  }
})();
// in CI the backend must be there (.ci/run builds it): run, and fail on its absence
const runTensorflow = tensorflowInstalled || Boolean(process.env.CI);

describe('AdamW without the fused kernel', () => {
  afterAll(async () => {
    await selectBackend('cpu', { quiet: true });
  });

  /** At most one scalar per distinct constant: decay, 1 - beta1, beta2, 1 - beta2, sqrt(bias correction 2), eps, -step size. */
  const SCALARS_PER_STEP = 7;

  it('makes its scalar tensors once per step, not per op (cpu, kernel unregistered)', async () => {
    const composite = await runComposite(0.05);
    expect(composite.created - composite.kernels.length).toBeGreaterThan(0);
    expect(composite.created - composite.kernels.length).toBeLessThanOrEqual(SCALARS_PER_STEP);
  });

  it("equals the fused cpu kernel bit for bit on wasm's own loop, on its single-threaded and threaded builds", async () => {
    await selectBackend('cpu', { quiet: true });
    const cpu = await run(0.05);
    for (const threads of [1, 2]) {
      // 1: an unshared memory, 2: the threaded build's shared one (a binary for each)
      await selectBackend('wasm', { quiet: true, threads });
      const wasm = await run(0.05);
      expect(wasm.kernels).toEqual(Object.keys(SHAPES).map(() => FUSED_ADAMW));
      for (let step = 0; step < STEPS; step++) {
        for (const [key, ref] of cpu.snapshots[step]) {
          for (const what of ['param', 'expAvg', 'expAvgSq'] as const) {
            expect(Array.from(wasm.snapshots[step].get(key)![what]), `${threads} threads, step ${step + 1} ${key} ${what}`).toEqual(Array.from(ref[what]));
          }
        }
      }
      expectFlatTensorCount(wasm);
    }
  });

  it.skipIf(!runTensorflow)(
    `equals the fused cpu kernel on tensorflow, which has none${runTensorflow ? '' : ' (skipped: @tensorflow/tfjs-node is not installed)'}`,
    async () => {
      const fused = await run(0.05);
      await selectBackend('tensorflow', { quiet: true, threads: 1 });
      expect(tf.getKernel(FUSED_ADAMW, 'tensorflow')).toBeUndefined();
      const composite = await run(0.05);
      expect(composite.kernels).toContain('Multiply');
      expect(composite.created - composite.kernels.length).toBeLessThanOrEqual(SCALARS_PER_STEP);
      expectSameRuns(fused, composite);
      expectFlatTensorCount(composite);
    },
  );
});

for (const backend of ['wasm', ...(gpu.run ? ['webgpu' as const] : [])] as const) {
  describe(`clipGradNorm on ${backend}`, () => {
    afterAll(async () => {
      await selectBackend('cpu', { quiet: true });
    });

    /**
     * Sizes around the GPU workgroup (256) and off wasm's SIMD width, one value, more than a
     * workgroup's stride many times over, and a Hiera MLP weight's (768 x 3072, + 1), where float32
     * accumulation would lose digits.
     */
    const GRAD_SIZES = [1, 255, 257, 70_001, 2_359_297];

    async function clip(): Promise<{ norm: number; scale: number; kernels: string[]; tensors: number }> {
      const grads = new Map(GRAD_SIZES.map((n, i) => [`g${i}`, tf.tensor(values(n, 31 + i, 0.5))]));
      let result: Awaited<ReturnType<typeof clipGradNorm>> | undefined;
      const profile = await tf.profile(async () => {
        result = await clipGradNorm(grads, 1);
      });
      tf.dispose([...grads.values()]);
      return { ...result!, kernels: profile.kernels.map((k) => k.name), tensors: tf.memory().numTensors };
    }

    it('sums the squares of each gradient in one kernel; norm and clipping coefficient as in double precision (1e-6 relative)', async () => {
      await selectBackend(backend, { quiet: true, threads: 2 });
      const fused = await clip();
      const again = await clip();
      const kernel = tf.getKernel(SUM_OF_SQUARES, backend)!;
      tf.unregisterKernel(SUM_OF_SQUARES, backend);
      let composite: Awaited<ReturnType<typeof clip>>;
      try {
        composite = await clip();
      } finally {
        tf.registerKernel(kernel);
      }
      expect(fused.kernels.filter((k) => k === SUM_OF_SQUARES)).toHaveLength(GRAD_SIZES.length);
      expect(fused.kernels).not.toContain('Square');
      expect(composite.kernels).toContain('Square');
      // the reference in double precision: torch's clip_grad_norm_ coefficient max_norm / (norm + 1e-6)
      const host = GRAD_SIZES.map((n, i) => values(n, 31 + i, 0.5));
      const norm = Math.sqrt(host.reduce((s, g) => s + g.reduce((t, v) => t + v * v, 0), 0));
      expect(norm).toBeGreaterThan(10); // every gradient is clipped
      const rel = (x: number) => Math.abs(x - norm) / norm;
      console.log(`${backend} gradient norm error: fused ${rel(fused.norm).toExponential(2)}, Square + Sum ${rel(composite.norm).toExponential(2)}`);
      expect(rel(fused.norm)).toBeLessThanOrEqual(1e-6);
      expect(Math.abs(fused.scale * (norm + 1e-6) - 1)).toBeLessThanOrEqual(1e-6);
      expect(again.tensors).toBe(fused.tensors);
    });
  });
}
