/**
 * The small op interface every SAM2 module is written against.
 *
 * Each forward pass exists once, as code over `Ops<T>`. `TfOps` runs it eagerly on
 * TensorFlow.js (training, evaluation); `OnnxOps` records it as ONNX nodes (export).
 *
 * Conventions shared by all implementations:
 * - Spatial tensors are channels-last: (B, H, W, C). PyTorch's channels-first LayerNorm2d is
 *   therefore a plain last-axis `layerNorm`.
 * - Weights stay in their official PyTorch layout (Linear (out, in); Conv2d (out, in/groups, kh, kw);
 *   ConvTranspose2d (in, out, kh, kw)); the implementation rearranges them if it must.
 * - In `reshape`, write the batch dimension as -1 so exported graphs keep a dynamic batch.
 * - Shapes are static and known: `shape(x)` always returns concrete numbers.
 */
export type Scalar = number;

export interface Conv2dOptions {
  stride?: number;
  /** symmetric zero padding on H and W */
  pad?: number;
  groups?: number;
}

export interface Ops<T> {
  /** A parameter by its official state-dict key. */
  param(name: string): T;
  /** A constant tensor (not trained), e.g. an interpolation matrix or a position table. */
  constant(values: Float32Array | number[], shape: number[]): T;
  shape(x: T): number[];

  add(a: T, b: T | Scalar): T;
  sub(a: T, b: T | Scalar): T;
  mul(a: T, b: T | Scalar): T;
  div(a: T, b: T | Scalar): T;
  neg(x: T): T;
  sqrt(x: T): T;
  exp(x: T): T;
  sin(x: T): T;
  cos(x: T): T;
  sigmoid(x: T): T;
  relu(x: T): T;
  /** exact GELU, 0.5 x (1 + erf(x / sqrt 2)) */
  gelu(x: T): T;
  /** 1 where x == value, else 0 (float) — used to select embeddings by point label */
  equal(x: T, value: Scalar): T;

  /** Batched matrix product over the last two axes; leading axes broadcast. */
  matMul(a: T, b: T, transposeA?: boolean, transposeB?: boolean): T;
  /** x @ W^T + b with W in PyTorch (out, in) layout; x of any rank. */
  linear(x: T, weight: T, bias?: T): T;
  /** Softmax over the last axis. */
  softmax(x: T): T;
  /**
   * Scaled dot-product attention, softmax(q k^T / sqrt(d)) v, with q (B, h, Nq, d),
   * k and v (B, h, Nk, d). Implementations may chunk over queries to bound memory.
   */
  attention(q: T, k: T, v: T): T;
  /** Normalize over the last axis, then scale and shift. */
  layerNorm(x: T, weight: T, bias: T, eps: number): T;

  reshape(x: T, shape: number[]): T;
  transpose(x: T, perm: number[]): T;
  /** size -1 means "to the end" */
  slice(x: T, begin: number[], size: number[]): T;
  concat(xs: T[], axis: number): T;
  /** zero padding, [before, after] per axis */
  pad(x: T, paddings: Array<[number, number]>): T;
  tile(x: T, reps: number[]): T;
  mean(x: T, axes: number[], keepDims?: boolean): T;
  sum(x: T, axes: number[], keepDims?: boolean): T;

  /** NHWC input, PyTorch-layout weight. */
  conv2d(x: T, weight: T, bias: T | undefined, opts?: Conv2dOptions): T;
  /** ConvTranspose2d with kernel == stride (the only kind SAM2 uses); NHWC, PyTorch weight (in, out, k, k). */
  convTranspose2d(x: T, weight: T, bias: T | undefined, stride: number): T;
  /** kernel == stride max pool, floor (SAM2's q-pooling) */
  maxPool2d(x: T, size: number): T;
  /** nearest-neighbour resize of an NHWC tensor to (h, w) */
  resizeNearest(x: T, size: [number, number]): T;
  /** bilinear resize, align_corners=False, half-pixel centres, no antialias */
  resizeBilinear(x: T, size: [number, number]): T;

  /** Parameter-efficient adapters (LoRA, bottleneck) that the `linear` helpers apply by layer prefix. */
  readonly adapters?: LinearAdapters<T>;

  /**
   * `block(ops, inputs)`: a module's forward whose parameters all live under `prefix` (and it
   * reads no other). A training implementation may keep only the inputs and recompute the block in
   * the backward pass (gradient checkpointing); others simply call it.
   */
  checkpoint(prefix: string, block: (ops: Ops<T>, inputs: T[]) => T[], inputs: T[]): T[];
}

/** Rows [start, start + count) of a linear layer's output: one part of a fused projection. */
export interface OutputRows {
  start: number;
  count: number;
}

/** Adapters on linear layers (src/model/adapters.ts), written once over `Ops<T>`. */
export interface LinearAdapters<T> {
  /** The output `y` of linear layer `prefix` on input `x` (only `rows` of it, when given), adapted. */
  apply(ops: Ops<T>, prefix: string, x: T, y: T, rows?: OutputRows): T;
}

/** Parameter initialisers, used to build a model from scratch (the demo, tests). */
export type Init =
  | { kind: 'zeros' }
  | { kind: 'ones' }
  | { kind: 'constant'; value: number }
  | { kind: 'normal'; std: number }
  | { kind: 'truncNormal'; std: number }
  | { kind: 'uniform'; bound: number };

export interface ParamSpec {
  name: string;
  shape: number[];
  init: Init;
  /** the weight of a Linear layer (the layers adapters can target) */
  linear?: boolean;
}

/** A module: owns a prefix in the state dict and lists its parameters. */
export interface Module {
  readonly prefix: string;
  paramSpecs(): ParamSpec[];
}

/** Join a module prefix and a local name the way PyTorch names state-dict keys. */
export function key(prefix: string, name: string): string {
  return prefix ? `${prefix}.${name}` : name;
}

/** PyTorch's default init for Linear and Conv: kaiming-uniform weights, uniform(1/sqrt(fan_in)) bias. */
export function linearSpecs(prefix: string, inDim: number, outDim: number, bias = true): ParamSpec[] {
  const bound = 1 / Math.sqrt(inDim);
  const specs: ParamSpec[] = [{ name: key(prefix, 'weight'), shape: [outDim, inDim], init: { kind: 'uniform', bound }, linear: true }];
  if (bias) specs.push({ name: key(prefix, 'bias'), shape: [outDim], init: { kind: 'uniform', bound } });
  return specs;
}

export function conv2dSpecs(prefix: string, inDim: number, outDim: number, kernel: number, groups = 1, bias = true): ParamSpec[] {
  const fanIn = (inDim / groups) * kernel * kernel;
  const bound = 1 / Math.sqrt(fanIn);
  const specs: ParamSpec[] = [
    { name: key(prefix, 'weight'), shape: [outDim, inDim / groups, kernel, kernel], init: { kind: 'uniform', bound } },
  ];
  if (bias) specs.push({ name: key(prefix, 'bias'), shape: [outDim], init: { kind: 'uniform', bound } });
  return specs;
}

export function convTranspose2dSpecs(prefix: string, inDim: number, outDim: number, kernel: number): ParamSpec[] {
  const bound = 1 / Math.sqrt(outDim * kernel * kernel);
  return [
    { name: key(prefix, 'weight'), shape: [inDim, outDim, kernel, kernel], init: { kind: 'uniform', bound } },
    { name: key(prefix, 'bias'), shape: [outDim], init: { kind: 'uniform', bound } },
  ];
}

export function layerNormSpecs(prefix: string, dim: number): ParamSpec[] {
  return [
    { name: key(prefix, 'weight'), shape: [dim], init: { kind: 'ones' } },
    { name: key(prefix, 'bias'), shape: [dim], init: { kind: 'zeros' } },
  ];
}

/** Shorthand used inside forwards: `linear(ops, x, 'a.b')` reads `a.b.weight` and `a.b.bias`. */
export function linear<T>(ops: Ops<T>, x: T, prefix: string, bias = true): T {
  const y = ops.linear(x, ops.param(key(prefix, 'weight')), bias ? ops.param(key(prefix, 'bias')) : undefined);
  return ops.adapters ? ops.adapters.apply(ops, prefix, x, y) : y;
}

/**
 * A fused projection (e.g. Hiera's qkv) as `parts` products with row blocks of its weight:
 * slicing the weight is contiguous and cheap, slicing the (..., parts * out) activation is not.
 */
export function linearParts<T>(ops: Ops<T>, x: T, prefix: string, parts: number): T[] {
  const weight = ops.param(key(prefix, 'weight'));
  const bias = ops.param(key(prefix, 'bias'));
  const [out, inDim] = ops.shape(weight);
  const count = out / parts;
  return Array.from({ length: parts }, (_, j) => {
    const rows = { start: j * count, count };
    const y = ops.linear(x, ops.slice(weight, [rows.start, 0], [count, inDim]), ops.slice(bias, [rows.start], [count]));
    return ops.adapters ? ops.adapters.apply(ops, prefix, x, y, rows) : y;
  });
}

export function layerNorm<T>(ops: Ops<T>, x: T, prefix: string, eps: number): T {
  return ops.layerNorm(x, ops.param(key(prefix, 'weight')), ops.param(key(prefix, 'bias')), eps);
}

export function conv2d<T>(ops: Ops<T>, x: T, prefix: string, opts?: Conv2dOptions, bias = true): T {
  return ops.conv2d(x, ops.param(key(prefix, 'weight')), bias ? ops.param(key(prefix, 'bias')) : undefined, opts);
}
