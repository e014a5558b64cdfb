/**
 * BatchMatMul and _FusedMatMul for the 'webgpu' backend on software adapters (Mesa's llvmpipe /
 * lavapipe, SwiftShader). llvmpipe runs a workgroup on one CPU thread with its invocations as the
 * lanes of SIMD registers, so tfjs's tiled kernel (shared-memory tiles, a barrier per tile) spends
 * its time switching between invocations at barriers. And every load from a buffer (or from
 * workgroup memory) is a loop over the lanes with a bounds check each, measured ~10x the cost of a
 * multiply-add, whatever the addresses. So here a workgroup is one SIMD batch of lanes with no
 * shared memory, and each lane keeps a TILE_M x TILE_N block of outputs in registers: a step over
 * K loads TILE_M + TILE_N values for TILE_M * TILE_N multiply-adds. 8x8 measured best in CPU time
 * of 4x4 (1.5-2.5x slower), 8x8, 16x8, 8x16 and 16x16 (larger blocks spill registers and gain
 * nothing): ~4 GFLOP/s per core. GPUs keep tfjs's own kernels (webgpu-kernels.ts).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';

/** Outputs per lane: TILE_M rows x TILE_N columns (a multiple of 4). */
const TILE_M = 8;
const TILE_N = 8;
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
  /** 4 where each lane's quads are written as vec4s (N a multiple of 4), else 1 */
  outputComponent: number;
  /** the operands stay scalar arrays whatever the output's binding */
  variableComponents: number[];
  /** lanes of a workgroup along the output columns (the rest along the rows) */
  private lanesN: number;

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
    this.variableComponents = this.variableNames.map(() => 1);
    // as many lanes along N as its tiles fill (a power of two), the rest along M
    this.lanesN = Math.min(LANES, 2 ** Math.floor(Math.log2(Math.max(1, Math.ceil(n / TILE_N)))));
    const lanesM = LANES / this.lanesN;
    this.dispatch = [Math.ceil(n / (TILE_N * this.lanesN)), Math.ceil(m / (TILE_M * lanesM)), batch];
    // every column quad starts at a multiple of 4, so with N one too a quad is in or out whole
    this.outputComponent = n % 4 === 0 ? 4 : 1;
    this.shaderKey = `medtune_sw_matmul_${TILE_M}x${TILE_N}_${this.lanesN}_${transposeA}_${transposeB}_${hasBias}_${activation}_${this.outputComponent}`;
  }

  getUserCode(): string {
    const rows = [...Array(TILE_M).keys()];
    const quads = [...Array(TILE_N / 4).keys()];
    // operand layouts: A (batch, M, K) or (batch, K, M); B (batch, K, N) or (batch, N, K)
    const aAt = (r: number) => (this.transposeA ? `A[aBase + k * uniforms.M + r${r}]` : `A[aBase + r${r} * uniforms.K + k]`);
    const bAt = (c: number) => (this.transposeB ? `B[bBase + c${c} * uniforms.K + k]` : `B[bBase + k * uniforms.N + c${c}]`);
    const quad = (f: (c: number) => string, q: number) => `vec4<f32>(${[0, 1, 2, 3].map((j) => f(4 * q + j)).join(', ')})`;
    const act = ACTIVATIONS[this.activation];
    const lanesM = LANES / this.lanesN;
    return `
      fn main() {
        let M = uniforms.M;
        let N = uniforms.N;
        let batch = i32(workgroupId.z);
        // a batch of one broadcasts
        let aBase = select(batch, 0, uniforms.aShape.x == 1) * M * uniforms.K;
        let bBase = select(batch, 0, uniforms.bShape.x == 1) * uniforms.K * N;
        let lane = i32(localId.x);
        let row0 = (i32(workgroupId.y) * ${lanesM} + lane / ${this.lanesN}) * ${TILE_M};
        let col0 = (i32(workgroupId.x) * ${this.lanesN} + lane % ${this.lanesN}) * ${TILE_N};
        // out-of-range rows and columns read the last valid one and are not written
        ${rows.map((i) => `let r${i} = min(row0 + ${i}, M - 1);`).join(' ')}
        ${[...Array(TILE_N).keys()].map((j) => `let c${j} = min(col0 + ${j}, N - 1);`).join(' ')}
        ${rows.map((i) => quads.map((q) => `var acc${i}_${q} = vec4<f32>(0.0);`).join(' ')).join(' ')}
        for (var k = 0; k < uniforms.K; k++) {
          ${quads.map((q) => `let b${q} = ${quad(bAt, q)};`).join(' ')}
          ${rows.map((i) => `let a${i} = vec4<f32>(${aAt(i)});`).join(' ')}
          ${rows.map((i) => quads.map((q) => `acc${i}_${q} = fma(a${i}, b${q}, acc${i}_${q});`).join(' ')).join('\n          ')}
        }
        ${this.hasBias ? quads.map((q) => `let bias${q} = ${quad((c) => `bias[c${c}]`, q)};`).join(' ') : ''}
        ${rows
          .map(
            (i) => `
        if (row0 + ${i} < M) {
          let base = (batch * M + row0 + ${i}) * N + col0;
          ${quads
            .map(
              (q) => `{
            let v = ${act(`acc${i}_${q}${this.hasBias ? ` + bias${q}` : ''}`)};
            ${
              this.outputComponent === 4
                ? `if (col0 + ${4 * q} < N) { result[(base + ${4 * q}) / 4] = v; }`
                : `for (var j = 0; j < 4; j++) {
              if (col0 + ${4 * q} + j < N) { result[base + ${4 * q} + j] = v[j]; }
            }`
            }
          }`,
            )
            .join(' ')}
        }`,
          )
          .join('')}
      }`;
  }
}

/**
 * Whether the tensors' buffers hold f32. The shader's bindings take the buffer's dtype, which can
 * differ from a TensorInfo's (tfjs casts bool to int32, for one, by sharing the buffer).
 */
export function allFloat(backend: WebGPUBackend, ...tensors: tf.TensorInfo[]): boolean {
  return tensors.every((t) => t.dtype === 'float32' && backend.tensorMap.get(t.dataId)?.dtype === 'float32');
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
  if (!allFloat(backend, a, b, ...(bias ? [bias] : [])) || !(activation in ACTIVATIONS)) return null;
  if (bias && bias.shape.length !== 1) return null;
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

/** A kernel for software adapters: its output, or null where tfjs's kernel must run instead. */
export type SoftwareKernel = (args: Parameters<tf.KernelFunc>[0], backend: WebGPUBackend) => tf.TensorInfo | null;

/** BatchMatMul and _FusedMatMul on a software adapter, by kernel name. */
export const matMulKernels: Array<[string, SoftwareKernel]> = [
  [
    tf.BatchMatMul,
    ({ inputs, attrs }, backend) => {
      const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
      return softwareMatMul(backend, { a, b, transposeA, transposeB });
    },
  ],
  [
    tf._FusedMatMul,
    ({ inputs, attrs }, backend) => {
      const { a, b, bias, preluActivationWeights } = inputs as Record<string, tf.TensorInfo | undefined>;
      const { transposeA, transposeB, activation } = attrs as unknown as tf._FusedMatMulAttrs;
      if (preluActivationWeights || !(activation in ACTIVATIONS)) return null;
      return softwareMatMul(backend, { a: a!, b: b!, transposeA, transposeB, bias, activation: activation as FusedActivation });
    },
  ],
];
