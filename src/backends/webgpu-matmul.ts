/**
 * BatchMatMul and _FusedMatMul for the 'webgpu' backend on software adapters (Mesa's llvmpipe /
 * lavapipe, SwiftShader). llvmpipe runs a workgroup on one CPU thread with its invocations as the
 * lanes of SIMD registers, so tfjs's tiled kernel (shared-memory tiles, a barrier per tile) spends
 * its time switching between invocations at barriers. Here a workgroup is one SIMD batch of lanes
 * over adjacent output columns, with no shared memory: each lane keeps ROWS x 4 outputs in
 * registers, and the ROWS left-operand values of a step are the same for every lane of the
 * workgroup (uniform loads, one scalar load each), so a step costs 4 lane-wise loads for 4*ROWS
 * multiply-adds. GPUs keep tfjs's own kernels (`matMulKernels`).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';

/** Output rows per workgroup (each lane: ROWS x 4 accumulators). */
const ROWS = 4;
/** Lanes per workgroup: llvmpipe's SIMD width for f32 on AVX2 (256-bit). */
const LANES = 8;

export type FusedActivation = 'linear' | 'relu';

const ACTIVATIONS: Record<FusedActivation, (v: string) => string> = {
  linear: (v) => v,
  relu: (v) => `max(${v}, vec4<f32>(0.0))`,
};

class SoftwareMatMulProgram {
  outputShape: number[];
  variableNames: string[];
  uniforms = 'M : i32, N : i32, K : i32,';
  dispatchLayout = { x: [2], y: [1], z: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [LANES, 1, 1];
  shaderKey: string;

  constructor(
    batch: number,
    m: number,
    n: number,
    private transposeA: boolean,
    private transposeB: boolean,
    private hasBias: boolean,
    private activation: FusedActivation,
  ) {
    this.outputShape = [batch, m, n];
    this.variableNames = hasBias ? ['A', 'B', 'bias'] : ['A', 'B'];
    this.dispatch = [Math.ceil(n / (4 * LANES)), Math.ceil(m / ROWS), batch];
    this.shaderKey = `medtune_sw_matmul_${ROWS}_${LANES}_${transposeA}_${transposeB}_${hasBias}_${activation}`;
  }

  getUserCode(): string {
    const rows = [...Array(ROWS).keys()];
    // operand layouts: A (batch, M, K) or (batch, K, M); B (batch, K, N) or (batch, N, K)
    const aAt = (r: string) => (this.transposeA ? `A[aBase + k * uniforms.M + ${r}]` : `A[aBase + ${r} * uniforms.K + k]`);
    const bAt = (c: string) => (this.transposeB ? `B[bBase + ${c} * uniforms.K + k]` : `B[bBase + k * uniforms.N + ${c}]`);
    const bias = this.hasBias ? ' + vec4<f32>(bias[c0], bias[c1], bias[c2], bias[c3])' : '';
    const act = ACTIVATIONS[this.activation];
    return `
      fn main() {
        let M = uniforms.M;
        let N = uniforms.N;
        let batch = i32(workgroupId.z);
        // a batch of one broadcasts
        let aBase = select(batch, 0, uniforms.aShape.x == 1) * M * uniforms.K;
        let bBase = select(batch, 0, uniforms.bShape.x == 1) * uniforms.K * N;
        let row0 = i32(workgroupId.y) * ${ROWS};
        let col = (i32(workgroupId.x) * ${LANES} + i32(localId.x)) * 4;
        // out-of-range rows and columns read the last valid one and are not written
        ${rows.map((i) => `let r${i} = min(row0 + ${i}, M - 1);`).join(' ')}
        let c0 = min(col, N - 1);
        let c1 = min(col + 1, N - 1);
        let c2 = min(col + 2, N - 1);
        let c3 = min(col + 3, N - 1);
        ${rows.map((i) => `var acc${i} = vec4<f32>(0.0);`).join(' ')}
        for (var k = 0; k < uniforms.K; k++) {
          let b = vec4<f32>(${bAt('c0')}, ${bAt('c1')}, ${bAt('c2')}, ${bAt('c3')});
          ${rows.map((i) => `acc${i} = fma(vec4<f32>(${aAt(`r${i}`)}), b, acc${i});`).join('\n          ')}
        }
        ${rows
          .map(
            (i) => `
        if (row0 + ${i} < M) {
          let v = ${act(`acc${i}${bias}`)};
          let base = (batch * M + row0 + ${i}) * N + col;
          for (var j = 0; j < 4; j++) {
            if (col + j < N) { result[base + j] = v[j]; }
          }
        }`,
          )
          .join('')}
      }`;
  }
}

export interface MatMulArgs {
  a: tf.TensorInfo;
  b: tf.TensorInfo;
  transposeA: boolean;
  transposeB: boolean;
  bias?: tf.TensorInfo;
  activation?: FusedActivation;
}

/** The product on the software-adapter kernel; null when its preconditions fail (tfjs's kernel then). */
export function softwareMatMul(backend: WebGPUBackend, args: MatMulArgs): tf.TensorInfo | null {
  const { a, b, transposeA, transposeB, bias } = args;
  const activation = args.activation ?? 'linear';
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || !(activation in ACTIVATIONS)) return null;
  if (bias && (bias.dtype !== 'float32' || bias.shape.length !== 1)) return null;
  const ra = a.shape.length;
  const rb = b.shape.length;
  const m = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
  const k = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
  const kb = transposeB ? b.shape[rb - 1] : b.shape[rb - 2];
  const n = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
  const outerA = a.shape.slice(0, -2);
  const outerB = b.shape.slice(0, -2);
  const batchA = tf.util.sizeFromShape(outerA);
  const batchB = tf.util.sizeFromShape(outerB);
  // only one-sided broadcasting of the whole batch is handled here
  if (k !== kb || (batchA !== batchB && batchA !== 1 && batchB !== 1)) return null;
  if (bias && bias.shape[0] !== n) return null;
  const batch = Math.max(batchA, batchB);
  const outShape = [...tf.broadcast_util.assertAndGetBroadcastShape(outerA, outerB), m, n];
  const program = new SoftwareMatMulProgram(batch, m, n, transposeA, transposeB, Boolean(bias), activation);
  const limit = backend.device.limits.maxComputeWorkgroupsPerDimension;
  if (program.dispatch.some((d) => d > limit) || m * n * batch === 0 || k === 0) return null;
  const a3 = { ...a, shape: transposeA ? [batchA, k, m] : [batchA, m, k] };
  const b3 = { ...b, shape: transposeB ? [batchB, n, k] : [batchB, k, n] };
  const inputs = bias ? [a3, b3, bias] : [a3, b3];
  const out = backend.runWebGPUProgram(program as never, inputs, 'float32', [
    { type: 'int32', data: [m] },
    { type: 'int32', data: [n] },
    { type: 'int32', data: [k] },
  ]);
  return { dataId: out.dataId, shape: outShape, dtype: 'float32' };
}

/** The BatchMatMul and _FusedMatMul kernels: ours on a software adapter, else (or when ours declines) tfjs's `fallback`. */
export function matMulKernels(fallback: (name: string) => tf.KernelFunc): Array<[string, tf.KernelFunc]> {
  const onSoftware = (name: string, args: (a: Parameters<tf.KernelFunc>[0]) => MatMulArgs | null): [string, tf.KernelFunc] => [
    name,
    (a) => {
      const backend = a.backend as WebGPUBackend & { softwareAdapter?: boolean };
      const mm = backend.softwareAdapter ? args(a) : null;
      return (mm && softwareMatMul(backend, mm)) ?? (fallback(name)(a) as tf.TensorInfo);
    },
  ];
  return [
    onSoftware(tf.BatchMatMul, ({ inputs, attrs }) => {
      const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
      return { a, b, transposeA, transposeB };
    }),
    onSoftware(tf._FusedMatMul, ({ inputs, attrs }) => {
      const { a, b, bias, preluActivationWeights } = inputs as Record<string, tf.TensorInfo | undefined>;
      const { transposeA, transposeB, activation } = attrs as unknown as tf._FusedMatMulAttrs;
      if (preluActivationWeights || !(activation in ACTIVATIONS)) return null;
      return { a: a!, b: b!, transposeA, transposeB, bias, activation: activation as FusedActivation };
    }),
  ];
}
