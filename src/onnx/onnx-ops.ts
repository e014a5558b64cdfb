/**
 * `OnnxOps` records the model's forward code (written once over `Ops<T>`) as an ONNX graph.
 *
 * Every op appends nodes to a `GraphBuilder` and tracks the static shape of its result, so
 * `shape(x)` returns concrete numbers as the model code expects. Layout conventions follow
 * ops.ts: tensors are channels-last; convolutions and pooling wrap the NCHW ONNX op in a pair
 * of Transposes, which onnxruntime's transpose optimizer cancels between adjacent convolutions.
 * Shape-like integers go through the symbolic-dimension plan (symbolic.ts) so the batch and
 * other declared symbols stay dynamic without runtime shape arithmetic where the shape allows.
 */
import type { HostTensor } from '../io/safetensors.js';
import type { Conv2dOptions, LinearAdapters, Ops, Scalar } from '../model/ops.js';
import { GraphBuilder, type DeclaredDim, type ElemType } from './graph-builder.js';
import {
  buildPlan,
  collapseAxes,
  cubeCorners,
  emptyLog,
  monomialSymbols,
  traceValues,
  constExpr,
  exprAdd,
  exprEquals,
  exprKey,
  isConst,
  pureSymbol,
  type Expr,
  type ShapePlan,
  type TraceLog,
} from './symbolic.js';

export interface OnnxValue {
  /** creation index in the trace (keys the shape plan) */
  readonly id: number;
  readonly name: string;
  readonly shape: number[];
  readonly elem: ElemType;
}

const INT64_MAX = 9223372036854775807n;

function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function broadcastShapes(a: number[], b: number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new Error(`cannot broadcast shapes [${a}] and [${b}]`);
    out.push(da === 1 ? db : da);
  }
  return out;
}

function normAxis(axis: number, rank: number): number {
  return axis < 0 ? axis + rank : axis;
}

export interface OnnxOpsOptions {
  /** the state dict parameters are read from */
  params: ReadonlyMap<string, HostTensor>;
  /** values of the symbolic dimensions in this trace */
  symbols?: Record<string, number>;
  /** expressions from earlier traces; without it every dimension is static */
  plan?: ShapePlan;
  /** where a recording trace logs its shape-like integers */
  log?: TraceLog;
  /** bottleneck adapters, traced as nodes of the layers they adapt */
  adapters?: LinearAdapters<OnnxValue>;
}

export class OnnxOps implements Ops<OnnxValue> {
  readonly graph: GraphBuilder;
  private readonly params: ReadonlyMap<string, HostTensor>;
  private readonly symbols: Record<string, number>;
  private readonly plan?: ShapePlan;
  private readonly log?: TraceLog;
  readonly adapters?: LinearAdapters<OnnxValue>;
  private valueCount = 0;
  private intCount = 0;
  private readonly paramValues = new Map<string, OnnxValue>();
  private readonly transposedWeights = new Map<string, string>();
  private readonly scalarConsts = new Map<string, string>();
  private readonly intConsts = new Map<string, string>();
  private readonly runtimeDims = new Map<string, string>();
  /** where each symbol can be read at run time: a graph input and axis */
  private readonly symbolSources = new Map<string, { input: string; axis: number }>();

  constructor(name: string, opts: OnnxOpsOptions) {
    this.graph = new GraphBuilder(name);
    this.params = opts.params;
    this.symbols = opts.symbols ?? {};
    this.plan = opts.plan;
    this.log = opts.log;
    this.adapters = opts.adapters;
  }

  // ---- bookkeeping ---------------------------------------------------------------------------

  private value(name: string, shape: number[], elem: ElemType = 'float32'): OnnxValue {
    if (shape.some((d) => !Number.isInteger(d) || d < 0)) throw new Error(`invalid shape [${shape}]`);
    const v: OnnxValue = { id: this.valueCount++, name, shape, elem };
    this.log?.shapes.push(shape);
    return v;
  }

  private sig(op: string, detail?: unknown): void {
    this.log?.ops.push(detail === undefined ? op : `${op}${JSON.stringify(detail)}`);
  }

  /** Route a shape-like integer vector through the plan: its expressions in the symbols. */
  private ints(vec: number[]): Expr[] {
    const k = this.intCount++;
    this.log?.ints.push([...vec]);
    if (!this.plan) return vec.map(constExpr);
    const exprs = this.plan.ints[k];
    if (!exprs || exprs.length !== vec.length) throw new Error(`shape plan out of step at integer argument #${k}`);
    return exprs;
  }

  private shapeExprs(x: OnnxValue): Expr[] {
    if (!this.plan) return x.shape.map(constExpr);
    const e = this.plan.shapes[x.id];
    if (!e || e.length !== x.shape.length) throw new Error(`shape plan out of step at value #${x.id}`);
    return e;
  }

  /** Declared dims of a value for graph inputs/outputs. */
  declaredDims(x: OnnxValue): DeclaredDim[] {
    return this.shapeExprs(x).map((e) => (isConst(e) ? e.c0 : (pureSymbol(e) ?? exprKey(e))));
  }

  private int64Const(values: number[]): string {
    const key = values.join(',');
    let name = this.intConsts.get(key);
    if (!name) {
      name = this.graph.fresh('const_i64');
      this.graph.initializer(name, 'int64', [values.length], BigInt64Array.from(values.map((v) => BigInt(v))));
      this.intConsts.set(key, name);
    }
    return name;
  }

  private scalar(v: number): string {
    const key = String(v);
    let name = this.scalarConsts.get(key);
    if (!name) {
      name = this.graph.fresh('const_f');
      this.graph.initializer(name, 'float32', [], Float32Array.from([v]));
      this.scalarConsts.set(key, name);
    }
    return name;
  }

  /** An int64 [1] tensor holding `e` at run time. */
  private runtimeDim(e: Expr): string {
    if (isConst(e)) return this.int64Const([e.c0]);
    const key = exprKey(e);
    const cached = this.runtimeDims.get(key);
    if (cached) return cached;
    let acc: string | undefined;
    for (const [mono, c] of Object.entries(e.coef)) {
      let t: string | undefined;
      for (const sym of monomialSymbols(mono)) {
        const src = this.symbolSources.get(sym);
        if (!src) throw new Error(`symbolic dimension '${sym}' is not the dimension of any graph input`);
        const d = this.graph.node('Shape', [src.input], { start: src.axis, end: src.axis + 1 })[0];
        t = t ? this.graph.node('Mul', [t, d])[0] : d;
      }
      if (c !== 1) t = this.graph.node('Mul', [t!, this.int64Const([c])])[0];
      acc = acc ? this.graph.node('Add', [acc, t!])[0] : t!;
    }
    if (e.c0 !== 0) acc = this.graph.node('Add', [acc!, this.int64Const([e.c0])])[0];
    this.runtimeDims.set(key, acc!);
    return acc!;
  }

  /** An int64 vector: a constant if every entry is, else a Concat of runtime dims. */
  private intVector(exprs: Expr[]): string {
    if (exprs.every(isConst)) return this.int64Const(exprs.map((e) => e.c0));
    const parts: string[] = [];
    let run: number[] = [];
    for (const e of exprs) {
      if (isConst(e)) {
        run.push(e.c0);
        continue;
      }
      if (run.length) parts.push(this.int64Const(run));
      run = [];
      parts.push(this.runtimeDim(e));
    }
    if (run.length) parts.push(this.int64Const(run));
    return this.graph.node('Concat', parts, { axis: 0 })[0];
  }

  // ---- graph interface -----------------------------------------------------------------------

  /** Declare a graph input; string dims are symbols whose trace value comes from `symbols`. */
  input(name: string, dims: DeclaredDim[], elem: ElemType = 'float32'): OnnxValue {
    const shape = dims.map((d) => {
      if (typeof d === 'number') return d;
      const v = this.symbols[d];
      if (v === undefined) throw new Error(`input '${name}' uses symbol '${d}' that has no trace value`);
      return v;
    });
    dims.forEach((d, axis) => {
      if (typeof d === 'string' && !this.symbolSources.has(d)) this.symbolSources.set(d, { input: name, axis });
    });
    this.sig('input', [name, dims]);
    this.graph.input(name, elem, dims);
    return this.value(name, shape, elem);
  }

  output(name: string, x: OnnxValue): void {
    this.graph.output(name, x.name, x.elem, this.declaredDims(x));
  }

  // ---- Ops<OnnxValue> ------------------------------------------------------------------------

  /** A graph holds no activations for a backward pass: the block is traced inline. */
  checkpoint(_prefix: string, block: (ops: Ops<OnnxValue>, inputs: OnnxValue[]) => OnnxValue[], inputs: OnnxValue[]): OnnxValue[] {
    return block(this, inputs);
  }

  param(name: string): OnnxValue {
    const cached = this.paramValues.get(name);
    if (cached) return cached;
    const p = this.params.get(name);
    if (!p) throw new Error(`model parameter '${name}' is not in the checkpoint`);
    this.sig('param', name);
    this.graph.initializer(name, 'float32', p.shape, p.data);
    const v = this.value(name, [...p.shape]);
    this.paramValues.set(name, v);
    return v;
  }

  constant(values: Float32Array | number[], shape: number[]): OnnxValue {
    const data = values instanceof Float32Array ? values : Float32Array.from(values);
    if (data.length !== numel(shape)) throw new Error(`constant has ${data.length} values for shape [${shape}]`);
    this.sig('constant', shape.length);
    this.log?.consts.push({ data, shape: [...shape] });
    const exprs = this.ints(shape);
    const symAxes = exprs.map((e, a) => (isConst(e) ? -1 : a)).filter((a) => a >= 0);
    if (symAxes.length === 0) {
      return this.value(this.graph.constant([...shape], data), [...shape]);
    }
    const collapsed = collapseAxes(data, shape, symAxes);
    if (!collapsed) throw new Error(`constant of shape [${shape}] varies along a symbolic dimension`);
    const small = this.graph.constant(collapsed.shape, collapsed.data);
    const out = this.graph.node('Expand', [small, this.intVector(exprs)])[0];
    return this.value(out, [...shape]);
  }

  shape(x: OnnxValue): number[] {
    return [...x.shape];
  }

  private binary(op: string, a: OnnxValue, b: OnnxValue | Scalar): OnnxValue {
    this.sig(op);
    if (typeof b === 'number') {
      const out = this.graph.node(op, [a.name, this.scalar(b)])[0];
      return this.value(out, [...a.shape]);
    }
    const out = this.graph.node(op, [a.name, b.name])[0];
    return this.value(out, broadcastShapes(a.shape, b.shape));
  }

  private unary(op: string, x: OnnxValue, attrs?: Record<string, number>): OnnxValue {
    this.sig(op);
    return this.value(this.graph.node(op, [x.name], attrs)[0], [...x.shape]);
  }

  add(a: OnnxValue, b: OnnxValue | Scalar) {
    return this.binary('Add', a, b);
  }
  sub(a: OnnxValue, b: OnnxValue | Scalar) {
    return this.binary('Sub', a, b);
  }
  mul(a: OnnxValue, b: OnnxValue | Scalar) {
    return this.binary('Mul', a, b);
  }
  div(a: OnnxValue, b: OnnxValue | Scalar) {
    return this.binary('Div', a, b);
  }
  neg(x: OnnxValue) {
    return this.unary('Neg', x);
  }
  sqrt(x: OnnxValue) {
    return this.unary('Sqrt', x);
  }
  exp(x: OnnxValue) {
    return this.unary('Exp', x);
  }
  sin(x: OnnxValue) {
    return this.unary('Sin', x);
  }
  cos(x: OnnxValue) {
    return this.unary('Cos', x);
  }
  sigmoid(x: OnnxValue) {
    return this.unary('Sigmoid', x);
  }
  relu(x: OnnxValue) {
    return this.unary('Relu', x);
  }
  gelu(x: OnnxValue) {
    // 0.5 x (1 + erf(x / sqrt 2)), written as the pattern onnxruntime fuses into one Gelu kernel
    this.sig('gelu');
    const g = this.graph;
    const e = g.node('Erf', [g.node('Div', [x.name, this.scalar(Math.SQRT2)])[0]])[0];
    const out = g.node('Mul', [g.node('Mul', [x.name, g.node('Add', [e, this.scalar(1)])[0]])[0], this.scalar(0.5)])[0];
    return this.value(out, [...x.shape]);
  }
  equal(x: OnnxValue, value: Scalar) {
    this.sig('equal');
    const eq = this.graph.node('Equal', [x.name, this.scalar(value)])[0];
    return this.value(this.graph.node('Cast', [eq], { to: 1 })[0], [...x.shape]);
  }

  private transposeLast2(x: OnnxValue): string {
    const r = x.shape.length;
    const perm = [...Array(r).keys()];
    [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
    return this.graph.node('Transpose', [x.name], { perm })[0];
  }

  matMul(a: OnnxValue, b: OnnxValue, transposeA = false, transposeB = false) {
    this.sig('matMul', [transposeA, transposeB]);
    if (a.shape.length < 2 || b.shape.length < 2) throw new Error('matMul needs rank >= 2 operands');
    const an = transposeA ? this.transposeLast2(a) : a.name;
    const bn = transposeB ? this.transposeLast2(b) : b.name;
    const [m, ka] = transposeA ? a.shape.slice(-2).reverse() : a.shape.slice(-2);
    const [kb, n] = transposeB ? b.shape.slice(-2).reverse() : b.shape.slice(-2);
    if (ka !== kb) throw new Error(`matMul inner dimensions differ: [${a.shape}] x [${b.shape}]`);
    const lead = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
    return this.value(this.graph.node('MatMul', [an, bn])[0], [...lead, m, n]);
  }

  linear(x: OnnxValue, weight: OnnxValue, bias?: OnnxValue) {
    this.sig('linear', bias ? 1 : 0);
    const [outDim, inDim] = weight.shape;
    if (x.shape[x.shape.length - 1] !== inDim) throw new Error(`linear: input [${x.shape}] does not match weight [${weight.shape}]`);
    // a parameter weight is stored pre-transposed, (in, out), so the graph holds a plain MatMul
    let wt = this.transposedWeights.get(weight.name);
    if (!wt) {
      const p = this.paramValues.get(weight.name) === weight ? this.params.get(weight.name) : undefined;
      if (p) {
        const t = new Float32Array(p.data.length);
        for (let o = 0; o < outDim; o++) for (let i = 0; i < inDim; i++) t[i * outDim + o] = p.data[o * inDim + i];
        wt = this.graph.initializer(`${weight.name}.T`, 'float32', [inDim, outDim], t);
        this.transposedWeights.set(weight.name, wt);
      } else {
        wt = this.graph.node('Transpose', [weight.name], { perm: [1, 0] })[0];
      }
    }
    const outShape = [...x.shape.slice(0, -1), outDim];
    if (!bias) return this.value(this.graph.node('MatMul', [x.name, wt])[0], outShape);
    if (x.shape.length === 2) return this.value(this.graph.node('Gemm', [x.name, wt, bias.name])[0], outShape);
    // rank > 2: flatten to 2-D so the bias is fused into Gemm, then restore the leading dims
    const flat = this.graph.node('Reshape', [x.name, this.int64Const([-1, inDim])])[0];
    const y = this.graph.node('Gemm', [flat, wt, bias.name])[0];
    const lead = this.shapeExprs(x).slice(0, -1);
    const open = lead.filter((e) => !isConst(e)).length;
    const target =
      open <= 1 ? this.int64Const([...lead.map((e) => (isConst(e) ? e.c0 : -1)), outDim]) : this.intVector([...lead, constExpr(outDim)]);
    return this.value(this.graph.node('Reshape', [y, target])[0], outShape);
  }

  softmax(x: OnnxValue) {
    return this.unary('Softmax', x, { axis: -1 });
  }

  attention(q: OnnxValue, k: OnnxValue, v: OnnxValue) {
    this.sig('attention');
    const [, , nq, d] = q.shape;
    const g = this.graph;
    // scale q (Nq x d) rather than the scores (Nq x Nk)
    const qs = g.node('Mul', [q.name, this.scalar(1 / Math.sqrt(d))])[0];
    const kt = this.transposeLast2(k);
    const p = g.node('Softmax', [g.node('MatMul', [qs, kt])[0]], { axis: -1 })[0];
    const out = g.node('MatMul', [p, v.name])[0];
    const lead = broadcastShapes(q.shape.slice(0, -2), v.shape.slice(0, -2));
    return this.value(out, [...lead, nq, v.shape[v.shape.length - 1]]);
  }

  layerNorm(x: OnnxValue, weight: OnnxValue, bias: OnnxValue, eps: number) {
    this.sig('layerNorm', eps);
    const out = this.graph.node('LayerNormalization', [x.name, weight.name, bias.name], { axis: -1, epsilon: { float: eps } })[0];
    return this.value(out, [...x.shape]);
  }

  reshape(x: OnnxValue, shape: number[]) {
    this.sig('reshape', shape.length);
    const total = numel(x.shape);
    const known = shape.filter((d) => d !== -1);
    const inferred = shape.map((d) => (d === -1 ? total / numel(known) : d));
    if (shape.filter((d) => d === -1).length > 1 || numel(inferred) !== total || !inferred.every(Number.isInteger)) {
      throw new Error(`cannot reshape [${x.shape}] to [${shape}]`);
    }
    const exprs = this.ints(shape);
    let target: string;
    if (exprs.every(isConst)) {
      target = this.int64Const(shape);
    } else {
      // keep the target static: copy a dimension that equals the input's at the same index (0),
      // and let one remaining symbolic dimension be inferred (-1)
      const inExprs = this.shapeExprs(x);
      const dims = exprs.map((e, i) => (isConst(e) ? e.c0 : i < inExprs.length && exprEquals(e, inExprs[i]) ? 0 : null));
      const open = dims.filter((d) => d === null).length;
      if (open === 0 || (open === 1 && !dims.includes(-1))) {
        target = this.int64Const(dims.map((d) => d ?? -1));
      } else {
        target = this.intVector(exprs.map((e, i) => (dims[i] === null ? e : constExpr(dims[i]!))));
      }
    }
    return this.value(this.graph.node('Reshape', [x.name, target])[0], inferred);
  }

  transpose(x: OnnxValue, perm: number[]) {
    this.sig('transpose', perm);
    return this.value(this.graph.node('Transpose', [x.name], { perm })[0], perm.map((p) => x.shape[p]));
  }

  slice(x: OnnxValue, begin: number[], size: number[]) {
    this.sig('slice', begin.length);
    const outShape = x.shape.map((d, i) => (size[i] === -1 ? d - begin[i] : size[i]));
    if (outShape.some((d, i) => d < 0 || begin[i] < 0 || begin[i] + d > x.shape[i])) {
      throw new Error(`slice [${begin}] + [${size}] is outside [${x.shape}]`);
    }
    const b = this.ints(begin);
    const s = this.ints(size);
    const inExprs = this.shapeExprs(x);
    const axes: number[] = [];
    const starts: Expr[] = [];
    const ends: Array<Expr | null> = []; // null: to the end
    for (let i = 0; i < x.shape.length; i++) {
      const toEnd = (isConst(s[i]) && s[i].c0 === -1) || exprEquals(exprAdd(b[i], s[i]), inExprs[i]);
      if (isConst(b[i]) && b[i].c0 === 0 && toEnd) continue;
      axes.push(i);
      starts.push(b[i]);
      ends.push(toEnd ? null : exprAdd(b[i], s[i]));
    }
    if (axes.length === 0) return this.value(this.graph.node('Identity', [x.name])[0], outShape);
    const out = this.graph.node('Slice', [x.name, this.intVector(starts), this.endsVector(ends), this.int64Const(axes)])[0];
    return this.value(out, outShape);
  }

  /** Slice ends; null entries run to the end of the axis (INT64_MAX). */
  private endsVector(ends: Array<Expr | null>): string {
    if (ends.every((e) => e === null || isConst(e))) {
      const key = `ends:${ends.map((e) => (e === null ? 'max' : e.c0)).join(',')}`;
      let name = this.intConsts.get(key);
      if (!name) {
        name = this.graph.fresh('const_i64');
        const values = BigInt64Array.from(ends.map((e) => (e === null ? INT64_MAX : BigInt(e.c0))));
        this.graph.initializer(name, 'int64', [ends.length], values);
        this.intConsts.set(key, name);
      }
      return name;
    }
    const parts = ends.map((e) => (e === null ? this.endsVector([null]) : this.runtimeDim(e)));
    return this.graph.node('Concat', parts, { axis: 0 })[0];
  }

  concat(xs: OnnxValue[], axis: number) {
    const rank = xs[0].shape.length;
    const a = normAxis(axis, rank);
    this.sig('concat', [xs.length, a]);
    const shape = [...xs[0].shape];
    shape[a] = xs.reduce((s, x) => s + x.shape[a], 0);
    for (const x of xs) {
      if (x.shape.length !== rank || x.shape.some((d, i) => i !== a && d !== shape[i])) {
        throw new Error(`concat on axis ${a}: shapes [${xs.map((t) => `[${t.shape}]`).join(', ')}] do not match`);
      }
    }
    if (xs.length === 1) return this.value(this.graph.node('Identity', [xs[0].name])[0], shape);
    return this.value(this.graph.node('Concat', xs.map((x) => x.name), { axis: a })[0], shape);
  }

  pad(x: OnnxValue, paddings: Array<[number, number]>) {
    this.sig('pad', paddings.length);
    const flat = this.ints(paddings.flat());
    if (!flat.every(isConst)) throw new Error('pad amounts cannot depend on a symbolic dimension');
    const pads = [...paddings.map((p) => p[0]), ...paddings.map((p) => p[1])];
    const shape = x.shape.map((d, i) => d + paddings[i][0] + paddings[i][1]);
    return this.value(this.graph.node('Pad', [x.name, this.int64Const(pads)])[0], shape);
  }

  tile(x: OnnxValue, reps: number[]) {
    this.sig('tile', reps.length);
    const exprs = this.ints(reps);
    const out = this.graph.node('Tile', [x.name, this.intVector(exprs)])[0];
    return this.value(out, x.shape.map((d, i) => d * reps[i]));
  }

  private reduce(op: 'ReduceMean' | 'ReduceSum', x: OnnxValue, axes: number[], keepDims: boolean): OnnxValue {
    const rank = x.shape.length;
    const ax = axes.map((a) => normAxis(a, rank));
    this.sig(op, [ax, keepDims]);
    const shape = keepDims ? x.shape.map((d, i) => (ax.includes(i) ? 1 : d)) : x.shape.filter((_, i) => !ax.includes(i));
    const keepdims = keepDims ? 1 : 0;
    // opset 17: ReduceMean takes axes as an attribute, ReduceSum as an input
    const out =
      op === 'ReduceMean'
        ? this.graph.node(op, [x.name], { axes: ax, keepdims })[0]
        : this.graph.node(op, [x.name, this.int64Const(ax)], { keepdims })[0];
    return this.value(out, shape);
  }
  mean(x: OnnxValue, axes: number[], keepDims = false) {
    return this.reduce('ReduceMean', x, axes, keepDims);
  }
  sum(x: OnnxValue, axes: number[], keepDims = false) {
    return this.reduce('ReduceSum', x, axes, keepDims);
  }

  /** NHWC -> NCHW, run `op`, NCHW -> NHWC. */
  private nchw(x: OnnxValue, op: string, extraInputs: string[], attrs: Record<string, number | number[]>, outHWC: number[]): OnnxValue {
    const g = this.graph;
    const t = g.node('Transpose', [x.name], { perm: [0, 3, 1, 2] })[0];
    const y = g.node(op, [t, ...extraInputs], attrs)[0];
    const back = g.node('Transpose', [y], { perm: [0, 2, 3, 1] })[0];
    return this.value(back, [x.shape[0], ...outHWC]);
  }

  conv2d(x: OnnxValue, weight: OnnxValue, bias: OnnxValue | undefined, opts: Conv2dOptions = {}) {
    const { stride = 1, pad = 0, groups = 1 } = opts;
    this.sig('conv2d', [stride, pad, groups]);
    const [outDim, inPerGroup, kh, kw] = weight.shape;
    const [, h, w, c] = x.shape;
    if (c !== inPerGroup * groups) throw new Error(`conv2d: input channels ${c} do not match weight [${weight.shape}] with groups=${groups}`);
    const oh = Math.floor((h + 2 * pad - kh) / stride) + 1;
    const ow = Math.floor((w + 2 * pad - kw) / stride) + 1;
    return this.nchw(
      x,
      'Conv',
      bias ? [weight.name, bias.name] : [weight.name],
      { kernel_shape: [kh, kw], strides: [stride, stride], pads: [pad, pad, pad, pad], group: groups, dilations: [1, 1] },
      [oh, ow, outDim],
    );
  }

  convTranspose2d(x: OnnxValue, weight: OnnxValue, bias: OnnxValue | undefined, stride: number) {
    this.sig('convTranspose2d', stride);
    const [cin, cout, k] = weight.shape;
    if (k !== stride) throw new Error(`convTranspose2d needs kernel == stride, got ${k} and ${stride}`);
    if (x.shape[3] !== cin) throw new Error(`convTranspose2d: input channels ${x.shape[3]} do not match weight [${weight.shape}]`);
    return this.nchw(
      x,
      'ConvTranspose',
      bias ? [weight.name, bias.name] : [weight.name],
      { kernel_shape: [k, k], strides: [k, k] },
      [x.shape[1] * k, x.shape[2] * k, cout],
    );
  }

  maxPool2d(x: OnnxValue, size: number) {
    this.sig('maxPool2d', size);
    const [, h, w, c] = x.shape;
    return this.nchw(x, 'MaxPool', [], { kernel_shape: [size, size], strides: [size, size] }, [Math.floor(h / size), Math.floor(w / size), c]);
  }

  private resize(x: OnnxValue, size: [number, number], attrs: Record<string, string>): OnnxValue {
    const [b, h, w, c] = x.shape;
    const sz = this.ints(size);
    if (!sz.every(isConst)) throw new Error('resize sizes cannot depend on a symbolic dimension');
    const [oh, ow] = size;
    const pow2 = (r: number) => Number.isInteger(Math.log2(r));
    let out: string;
    if (pow2(oh / h) && pow2(ow / w)) {
      // exact float scales: no sizes vector, so a dynamic batch needs no shape arithmetic
      const scales = this.graph.constant([4], Float32Array.from([1, oh / h, ow / w, 1]));
      out = this.graph.node('Resize', [x.name, '', scales], attrs)[0];
    } else {
      const sizes = this.intVector([...this.shapeExprs(x).slice(0, 1), constExpr(oh), constExpr(ow), constExpr(c)]);
      out = this.graph.node('Resize', [x.name, '', '', sizes], attrs)[0];
    }
    return this.value(out, [b, oh, ow, c]);
  }

  resizeNearest(x: OnnxValue, size: [number, number]) {
    this.sig('resizeNearest');
    return this.resize(x, size, { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' });
  }

  resizeBilinear(x: OnnxValue, size: [number, number]) {
    this.sig('resizeBilinear');
    return this.resize(x, size, { mode: 'linear', coordinate_transformation_mode: 'half_pixel' });
  }
}

/** Graph inputs and outputs, for any op implementation (OnnxOps records them, TfOps feeds them). */
export interface GraphIO<T> {
  /** string dims are symbolic (dynamic) dimensions */
  input(name: string, dims: DeclaredDim[]): T;
  output(name: string, x: T): void;
}

/**
 * A graph to export: `build` declares inputs, runs model code over the ops and declares outputs.
 * Written over `Ops<T>`, so the same definition runs on TfOps for parity.
 */
export interface GraphDef {
  name: string;
  /**
   * symbolic dimensions and the value each takes in the base trace; choose 2 or more so model
   * code that special-cases a size of 1 takes its general path
   */
  symbols?: Record<string, number>;
  build<T>(ops: Ops<T>, io: GraphIO<T>): void;
}

function onnxIO(ops: OnnxOps): GraphIO<OnnxValue> {
  return { input: (name, dims) => ops.input(name, dims), output: (name, x) => ops.output(name, x) };
}

/**
 * Trace `def` into an ONNX graph. With symbols, the model is traced at every corner of the unit
 * cube above the base values and once with all symbols two larger (the check), to fit the shape
 * plan; a final trace at the base values emits the graph.
 */
export function traceGraph(def: GraphDef, params: ReadonlyMap<string, HostTensor>, adapters?: LinearAdapters<OnnxValue>): OnnxOps {
  const symbols = def.symbols ?? {};
  const names = Object.keys(symbols);
  let plan: ShapePlan | undefined;
  if (names.length > 0) {
    const record = (values: Record<string, number>): TraceLog => {
      const log = emptyLog();
      const ops = new OnnxOps(def.name, { params, symbols: values, log, adapters });
      def.build(ops, onnxIO(ops));
      return log;
    };
    const traces = cubeCorners(names).map((corner) => ({ corner, log: record(traceValues(symbols, corner)) }));
    const checkValues = Object.fromEntries(names.map((s) => [s, symbols[s] + 2]));
    plan = buildPlan(symbols, traces, { values: checkValues, log: record(checkValues) });
  }
  const ops = new OnnxOps(def.name, { params, symbols, plan, adapters });
  def.build(ops, onnxIO(ops));
  return ops;
}
