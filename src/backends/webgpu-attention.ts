/**
 * Fused attention kernels for the 'webgpu' backend (the ops of src/model/fused-attention.ts):
 * softmax(q k^T * scale) v and its gradients without the (queries x keys) score matrix. One
 * invocation owns one row (a query's, or a key's in the gradients of k and v), keeps it and its
 * accumulator in registers as vec4s and streams the other side's rows:
 * - forward: each query row's log-sum-exp (a running maximum, rescaled sum), then
 *   out = sum_j exp(s_ij - lse_i) v_j with the probabilities exact, no rescaling;
 * - backward, with D_i = dy_i . out_i: dq_i = scale sum_j p_ij (dy_i . v_j - D_i) k_j,
 *   dk_j = scale sum_i p_ij (dy_i . v_j - D_i) q_i, dv_j = sum_i p_ij dy_i, p recomputed.
 * That is ~1.8x the multiply-adds of products and a softmax, for memory linear in the rows.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { FUSED_ATTENTION, FUSED_ATTENTION_GRAD } from '../model/fused-attention.js';
import { flatDispatch } from './webgpu-dispatch.js';

const WORKGROUP = 64;
/** The widest rows written out on a software adapter (RowCode). */
const UNROLLED_WIDTH_ON_SOFTWARE = 32;

/**
 * WGSL over rows of D4 vec4s, the invocation's own rows held in registers. Written out, a row is
 * D4 named registers (what GPUs run best), but llvmpipe's compile time grows faster than the code:
 * at width 96 it took 20 s for the forward and 69 s for the gradients, against 1.2 s and 3.7 s at
 * 16. So wide rows on a software adapter are arrays walked by loops to a uniform bound, which
 * compile in under 3 s (and run ~2x slower there).
 */
class RowCode {
  constructor(
    readonly d4: number,
    readonly unrolled: boolean,
  ) {}

  private each(line: (c: string) => string, separator: string): string {
    if (this.unrolled) return [...Array(this.d4).keys()].map((c) => line(String(c))).join(separator);
    return `for (var c = 0; c < uniforms.d4; c++) { ${line('c')}; }`;
  }

  private at(name: string, c: string): string {
    return this.unrolled ? `${name}${c}` : `${name}[${c}]`;
  }

  /** Module-scope registers for a row `reg` (named apart from the buffers). */
  declareRow(reg: string): string {
    return this.unrolled ? this.each((c) => `var<private> ${reg}Row${c} : vec4<f32>;`, '\n') : `var<private> ${reg}Row : array<vec4<f32>, ${this.d4}>;`;
  }

  /** reg = buffer's row `row`. */
  loadRow(reg: string, buffer: string, row: string): string {
    return `{ let at = ${row} * ${this.d4}; ${this.each((c) => `${this.at(`${reg}Row`, c)} = ${buffer}[at + ${c}]`, '; ')}; }`;
  }

  /** A function `name(j) -> f32`: the dot product of register row `reg` with buffer's row j. */
  dotFunction(name: string, reg: string, buffer: string): string {
    const body = this.unrolled
      ? `return ${this.each((c) => `dot(${reg}Row${c}, ${buffer}[at + ${c}])`, ' + ')};`
      : `var s = 0.0; ${this.each((c) => `s += dot(${reg}Row[c], ${buffer}[at + c])`, '')} return s;`;
    return `fn ${name}(j : i32) -> f32 { let at = j * ${this.d4}; ${body} }`;
  }

  /** A zeroed accumulator row `acc` in function scope. */
  declareAccumulator(): string {
    return this.unrolled ? this.each((c) => `var acc${c} = vec4<f32>(0.0)`, '; ') + ';' : `var acc : array<vec4<f32>, ${this.d4}>;`;
  }

  /** acc += weight * buffer's row j. */
  accumulate(weight: string, buffer: string, j: string): string {
    return `{ let at = ${j} * ${this.d4}; ${this.each((c) => `${this.at('acc', c)} += ${weight} * ${buffer}[at + ${c}]`, '; ')}; }`;
  }

  /** The invocation's output row: acc * factor. */
  writeAccumulator(factor: string): string {
    return `{ let at = row * ${this.d4}; ${this.each((c) => `result[at + ${c}] = ${this.at('acc', c)} * ${factor}`, '; ')}; }`;
  }
}

/** One invocation per row of `rows` (queries or keys), over (batch, keys, d) operands bound as vec4s. */
class AttentionProgram {
  outputShape: number[];
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  uniforms = 'rows : i32, nq : i32, nk : i32, scale : f32, d4 : i32,';
  variableComponents: number[];
  outputComponent: number;
  shaderKey: string;

  /**
   * `inputs`: names and vec4 (4) or scalar (1) binding; `own`: [register row, buffer] loaded at the
   * invocation's row; `dots`: [register row, buffer] pairs dotted with the streamed rows, as
   * dot_<reg>_<buffer>(j); `body`: the rest of main, with `row`, the code and the loaded rows.
   */
  constructor(
    name: string,
    private code: RowCode,
    readonly rows: number,
    private inputs: Array<[string, 1 | 4]>,
    private own: Array<[string, string]>,
    private dots: Array<[string, string]>,
    private body: string,
    vecOutput: boolean,
  ) {
    this.outputShape = [rows * (vecOutput ? 4 * code.d4 : 1)];
    this.variableComponents = inputs.map(([, c]) => c);
    this.outputComponent = vecOutput ? 4 : 1;
    this.dispatch = flatDispatch(rows, WORKGROUP);
    this.shaderKey = `medtune_attention_${name}_${code.d4}_${code.unrolled}`;
  }

  get variableNames(): string[] {
    return this.inputs.map(([n]) => n);
  }

  getUserCode(): string {
    return `
      ${this.own.map(([reg]) => this.code.declareRow(reg)).join('\n')}
      ${this.dots.map(([reg, buffer]) => this.code.dotFunction(`dot_${reg}_${buffer}`, reg, buffer)).join('\n')}
      fn main(row : i32) {
        if (row >= uniforms.rows) { return; }
        ${this.own.map(([reg, buffer]) => this.code.loadRow(reg, buffer, 'row')).join('\n        ')}
        ${this.body}
      }`;
  }
}

function programs(code: RowCode, rowsQ: number, rowsK: number) {
  // a query row's batch entry starts its keys at b0; a key row's starts its queries there
  const keysOfQuery = 'let b0 = (row / uniforms.nq) * uniforms.nk;';
  const queriesOfKey = 'let b0 = (row / uniforms.nk) * uniforms.nq;';
  return {
    lse: new AttentionProgram('lse', code, rowsQ, [['q', 4], ['k', 4]], [['q', 'q']], [['q', 'k']], `
        ${keysOfQuery}
        var m = -3.402823e38;
        var l = 0.0;
        for (var j = b0; j < b0 + uniforms.nk; j++) {
          let s = dot_q_k(j) * uniforms.scale;
          let mNew = max(m, s);
          l = l * exp(m - mNew) + exp(s - mNew);
          m = mNew;
        }
        result[row] = m + log(l);`, false),
    out: new AttentionProgram('out', code, rowsQ, [['q', 4], ['k', 4], ['v', 4], ['lse', 1]], [['q', 'q']], [['q', 'k']], `
        ${keysOfQuery}
        let L = lse[row];
        ${code.declareAccumulator()}
        for (var j = b0; j < b0 + uniforms.nk; j++) {
          let p = exp(dot_q_k(j) * uniforms.scale - L);
          ${code.accumulate('p', 'v', 'j')}
        }
        ${code.writeAccumulator('1.0')}`, true),
    rowDot: new AttentionProgram('row_dot', code, rowsQ, [['dy', 4], ['o', 4]], [['dy', 'dy']], [['dy', 'o']], `
        result[row] = dot_dy_o(row);`, false),
    dq: new AttentionProgram('dq', code, rowsQ, [['q', 4], ['k', 4], ['v', 4], ['dy', 4], ['lse', 1], ['dd', 1]], [['q', 'q'], ['dy', 'dy']], [['q', 'k'], ['dy', 'v']], `
        ${keysOfQuery}
        let L = lse[row];
        let D = dd[row];
        ${code.declareAccumulator()}
        for (var j = b0; j < b0 + uniforms.nk; j++) {
          let p = exp(dot_q_k(j) * uniforms.scale - L);
          let ds = p * (dot_dy_v(j) - D);
          ${code.accumulate('ds', 'k', 'j')}
        }
        ${code.writeAccumulator('uniforms.scale')}`, true),
    dk: new AttentionProgram('dk', code, rowsK, [['q', 4], ['k', 4], ['v', 4], ['dy', 4], ['lse', 1], ['dd', 1]], [['k', 'k'], ['v', 'v']], [['k', 'q'], ['v', 'dy']], `
        ${queriesOfKey}
        ${code.declareAccumulator()}
        for (var i = b0; i < b0 + uniforms.nq; i++) {
          let p = exp(dot_k_q(i) * uniforms.scale - lse[i]);
          let ds = p * (dot_v_dy(i) - dd[i]);
          ${code.accumulate('ds', 'q', 'i')}
        }
        ${code.writeAccumulator('uniforms.scale')}`, true),
    dv: new AttentionProgram('dv', code, rowsK, [['q', 4], ['k', 4], ['dy', 4], ['lse', 1]], [['k', 'k']], [['k', 'q']], `
        ${queriesOfKey}
        ${code.declareAccumulator()}
        for (var i = b0; i < b0 + uniforms.nq; i++) {
          let p = exp(dot_k_q(i) * uniforms.scale - lse[i]);
          ${code.accumulate('p', 'dy', 'i')}
        }
        ${code.writeAccumulator('1.0')}`, true),
  };
}

type Programs = ReturnType<typeof programs>;

function runner(backend: WebGPUBackend, q: tf.TensorInfo, k: tf.TensorInfo, scale: number) {
  const [batch, nq, d] = q.shape;
  const nk = k.shape[1];
  const software = (backend as WebGPUBackend & { softwareAdapter?: boolean }).softwareAdapter === true;
  const p = programs(new RowCode(d / 4, !software || d <= UNROLLED_WIDTH_ON_SOFTWARE), batch * nq, batch * nk);
  const flat = (t: tf.TensorInfo) => ({ ...t, shape: [tf.util.sizeFromShape(t.shape)] });
  return {
    p,
    run(program: Programs[keyof Programs], inputs: tf.TensorInfo[], shape: number[]): tf.TensorInfo {
      const out = backend.runWebGPUProgram(program as never, inputs.map(flat), 'float32', [
        { type: 'int32', data: [program.rows] },
        { type: 'int32', data: [nq] },
        { type: 'int32', data: [nk] },
        { type: 'float32', data: [scale] },
        { type: 'int32', data: [d / 4] },
      ]);
      return { dataId: out.dataId, shape, dtype: 'float32' };
    },
  };
}

type AttentionInputs = { q: tf.TensorInfo; k: tf.TensorInfo; v: tf.TensorInfo };

const attentionKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { q, k, v } = inputs as AttentionInputs;
  const { p, run } = runner(backend as WebGPUBackend, q, k, (attrs as { scale: number }).scale);
  const lse = run(p.lse, [q, k], q.shape.slice(0, 2));
  return [run(p.out, [q, k, v, lse], q.shape), lse];
};

const attentionGradKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { q, k, v, out, lse, dy } = inputs as AttentionInputs & { out: tf.TensorInfo; lse: tf.TensorInfo; dy: tf.TensorInfo };
  const gpu = backend as WebGPUBackend;
  const { p, run } = runner(gpu, q, k, (attrs as { scale: number }).scale);
  const dd = run(p.rowDot, [dy, out], lse.shape);
  try {
    return [run(p.dq, [q, k, v, dy, lse, dd], q.shape), run(p.dk, [q, k, v, dy, lse, dd], k.shape), run(p.dv, [q, k, dy, lse], v.shape)];
  } finally {
    gpu.disposeData(dd.dataId);
  }
};

/** The fused attention's forward and gradient kernels, by name (webgpu-kernels.ts registers them). */
export const attentionKernels: Array<[string, tf.KernelFunc]> = [
  [FUSED_ATTENTION, attentionKernel],
  [FUSED_ATTENTION_GRAD, attentionGradKernel],
];
