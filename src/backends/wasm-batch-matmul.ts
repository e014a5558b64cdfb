/**
 * BatchMatMul and _FusedMatMul on the WASM backend, every product in XNNPACK on every thread.
 *
 * tfjs-backend-wasm 4.22 sends a product to XNNPACK only when it is unbatched and not transposed,
 * and then without its thread pool; everything else (attention's (B, heads, N, d) products, the
 * transposed products of the gradients) takes a scalar loop 4-10x slower. Its convolution, though,
 * runs on the pool, and a 1x1 convolution of an (M, K) image by a (K, N) filter is the product
 * itself, bit for bit. So these kernels materialize a transposed operand (a cheap copy), register
 * each batch entry as a view tensor on the same WASM memory (no copy) and call the backend's own
 * Conv2D export once per entry, writing straight into the output's memory. Small products and the
 * cases this does not cover go to the kernel each replaces. Gradients need nothing of their own:
 * tfjs's product gradients are made of products, which land here again.
 *
 * XNNPACK packs the convolution's filter on every call, and with new operands that packing, not
 * the multiply-adds, is most of the cost: it scales with the filter's size. So a product runs
 * either as a @ b (b packed) or as (b^T @ a^T)^T (a packed), whichever its first calls measure
 * faster (64x768 @ 768x3072 with a new b: 52.6 ms, against 2.4 ms through a). Both give the same
 * bits: each output is the same sum over K in the same order, and a bias is added after it.
 * Products of two activations with K in the thousands (the weight gradients, K the tokens) are
 * summed over K in chunks of ~256 instead, the way fixed by the shapes (splitProduct).
 */
import * as tf from '@tensorflow/tfjs-core';
import { isReplacedWasmKernel, offsetOf, replaceWasmKernel, runWasmKernel, type WasmInternals as Wasm } from './wasm-internals.js';
import { addRows } from './wasm-simd.js';

/** Below this many multiply-adds per entry of a batch the per-entry call (an operator set up and torn down) costs more than it saves. */
const XNN_MIN_MACS = 32 * 1024;

/** (x, batch, inH, inW, filter, fh, fw, pads t r b l, same, dilations h w, strides h w, inC, outC, out), as tfjs's Conv2D kernel calls it */
type Conv2dExport = (...a: number[]) => void;

const conv2dOf = new WeakMap<object, Conv2dExport>();

function conv2dExport(backend: Wasm): Conv2dExport {
  let conv2d = conv2dOf.get(backend.wasm);
  if (!conv2d) {
    conv2d = backend.wasm.cwrap(tf.Conv2D, null, Array<string>(19).fill('number'));
    conv2dOf.set(backend.wasm, conv2d);
  }
  return conv2d;
}

/** x with its last two axes swapped, through wasm's own Transpose kernel (a new tensor). */
function swapLastAxes(x: tf.TensorInfo, backend: Wasm): tf.TensorInfo {
  const r = x.shape.length;
  const perm = [...x.shape.keys()];
  [perm[r - 2], perm[r - 1]] = [perm[r - 1], perm[r - 2]];
  return runWasmKernel(tf.Transpose, { x }, { perm }, backend);
}

const product = (shape: number[]) => shape.reduce((p, d) => p * d, 1);

/** Registers `size` floats of wasm memory at `at` as a tensor of wasm's own (no copy); its id. */
function registerView(backend: Wasm, at: number, size: number): number {
  const id = backend.dataIdNextNumber++;
  backend.wasm.tfjs.registerTensor(id, size, at);
  return id;
}

/** x's data seen with another shape (wasm's Reshape: the same data, one more reference). */
function reshaped(x: tf.TensorInfo, shape: number[], backend: Wasm): tf.TensorInfo {
  return runWasmKernel(tf.Reshape, { x }, { shape }, backend);
}

/**
 * One product (rows, K) @ (K, N) as a 1x1 convolution in XNNPACK, on wasm memory at byte offsets:
 * the image at xAt, the filter at `filter.at` or a view the filter cache keeps (its id), the output at yAt.
 */
function product1x1(backend: Wasm, xAt: number, rows: number, k: number, filter: number | { at: number }, n: number, yAt: number): void {
  const views: number[] = [];
  const view = (at: number, size: number) => {
    const id = registerView(backend, at, size);
    views.push(id);
    return id;
  };
  try {
    const x = view(xAt, rows * k);
    const f = typeof filter === 'number' ? filter : view(filter.at, k * n); // (1, 1, K, N): the product's (K, N)
    const y = view(yAt, rows * n);
    // the image is 1 x rows pixels of K channels; no padding, unit strides and dilations
    conv2dExport(backend)(x, 1, 1, rows, f, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, k, n, y);
  } finally {
    // unregistering the views also drops the XNNPACK operator cached on them
    for (const id of views) backend.wasm.tfjs.disposeData(id);
  }
}

/**
 * a (G, M, K) @ b (G, K, N), any leading shape G; b with leading size 1 is shared by every entry
 * (then all of a is one product). `kept`: the shared filter already registered by the filter cache, for b.
 */
function xnnProducts(a: tf.TensorInfo, b: tf.TensorInfo, backend: Wasm, kept?: KeptFilter): tf.TensorInfo {
  const r = a.shape.length;
  const [m, k] = a.shape.slice(-2);
  const n = b.shape[b.shape.length - 1];
  const shared = product(b.shape.slice(0, -2)) === 1;
  const entries = shared ? 1 : product(a.shape.slice(0, -2));
  const rows = shared ? product(a.shape.slice(0, -1)) : m;
  const out = backend.makeOutput([...a.shape.slice(0, r - 2), m, n], 'float32');
  const [aAt, bAt, outAt] = [a, b, out].map((t) => offsetOf(backend, t));
  for (let i = 0; i < entries; i++) {
    product1x1(backend, aAt + 4 * i * rows * k, rows, k, kept?.filter ?? { at: bAt + 4 * i * k * n }, n, outAt + 4 * i * rows * n);
  }
  return out;
}

/** Products whose K is at least this long sum it in chunks (splitProduct). */
const SPLIT_MIN_K = 1024;

/**
 * The chunk of K a long product sums at a time: the largest divisor of K from 256 down to 128, or
 * undefined (no split). XNNPACK's kernels run over all of K for each block of outputs, so with K
 * in the thousands (weight gradients, where K is the tokens) a block's operands fall out of the
 * cache. Chunks of 256 measured fastest of 256, 512 and 1024: K 4096, M 192, N 96 on two threads
 * took 15.0 ms whole and 8.7 ms in chunks.
 */
export function splitChunk(k: number): number | undefined {
  if (k < SPLIT_MIN_K) return undefined;
  for (let c = 256; c >= 128; c--) if (k % c === 0) return c;
  return undefined;
}

/**
 * a (G, M, K) @ b (G, K, N) (either transposed) summed over K in chunks: a laid out as
 * (G, K/chunk, M, chunk) so that each chunk's image is contiguous (one transpose, as a transposed a
 * needs anyway), one product per chunk into partial sums (G, K/chunk, M, N), which are added in
 * chunk order. b's chunks are the filters XNNPACK packs.
 */
function chunkedProduct(a: tf.TensorInfo, b: tf.TensorInfo, transposeA: boolean, transposeB: boolean, chunk: number, backend: Wasm): tf.TensorInfo {
  const r = a.shape.length;
  const batch = a.shape.slice(0, -2);
  const entries = product(batch);
  const [m, k] = transposeA ? [a.shape[r - 1], a.shape[r - 2]] : [a.shape[r - 2], a.shape[r - 1]];
  const n = transposeB ? b.shape[r - 2] : b.shape[r - 1];
  const parts = k / chunk;
  const temps: tf.TensorInfo[] = [];
  const temp = (t: tf.TensorInfo) => (temps.push(t), t);
  try {
    const chunks = temp(
      transposeA
        ? swapLastAxes(temp(reshaped(a, [entries, parts, chunk, m], backend)), backend)
        : runWasmKernel(tf.Transpose, { x: temp(reshaped(a, [entries, m, parts, chunk], backend)) }, { perm: [0, 2, 1, 3] }, backend),
    );
    const bRows = transposeB ? temp(swapLastAxes(b, backend)) : b; // (G, K, N): a chunk's rows are contiguous
    const partials = temp(backend.makeOutput([entries, parts, m, n], 'float32'));
    const [chunksAt, bAt, partialsAt] = [chunks, bRows, partials].map((t) => offsetOf(backend, t));
    for (let e = 0; e < entries; e++) {
      for (let j = 0; j < parts; j++) {
        const part = e * parts + j;
        product1x1(backend, chunksAt + 4 * part * m * chunk, m, chunk, { at: bAt + 4 * (e * k + j * chunk) * n }, n, partialsAt + 4 * part * m * n);
      }
    }
    const out = backend.makeOutput([...batch, m, n], 'float32');
    const outAt = offsetOf(backend, out);
    for (let e = 0; e < entries; e++) addRows(backend, partialsAt + 4 * e * parts * m * n, outAt + 4 * e * m * n, parts, m * n);
    return out;
  } finally {
    for (const t of temps) backend.disposeData(t.dataId);
  }
}

/** A shared right operand registered once: XNNPACK keeps the operator it packed for it. */
interface KeptFilter {
  /** b as the product reads it, (K, N) */
  operand: tf.TensorInfo;
  /** wasm tensor id of the (1, 1, K, N) filter view */
  filter: number;
}

interface CacheEntry extends KeptFilter {
  /** what XNNPACK holds beside it: the packed filter and the kernel's own transposed copy */
  operatorBytes: number;
  /** b's data: the entry lives while it does */
  source: tf.DataId;
}

/*
 * The filter cache. Packing the right operand is most of a product's cost when it changes on
 * every call (64x3072x768: 37.7 ms with a new operand, 5.9 ms with a packed one on two threads).
 * tfjs's convolution keeps the operator it built for a filter tensor until that tensor is freed,
 * so a shared right operand stays registered as one filter while its data lives: a frozen weight
 * (LoRA's base weights, a frozen encoder) is packed once per run, a trained one once per step
 * (its update makes new data), each where the product reads it as is and where transposed. An
 * operand is kept from its second use on, so activations, used once, pass through.
 */
const entries = new Map<string, CacheEntry>();
const keysOfSource = new Map<tf.DataId, string[]>();
const usedOnce = new WeakSet<tf.DataId>();
const hooked = new WeakSet<object>();
let operatorBytes = 0;

/** Bytes XNNPACK holds for kept filters, outside the tensors (the heap guard counts them). */
export function keptFilterBytes(): number {
  return operatorBytes;
}

function dropEntry(key: string, backend: Wasm, free: (dataId: tf.DataId) => boolean): void {
  const entry = entries.get(key)!;
  entries.delete(key);
  operatorBytes -= entry.operatorBytes;
  // unregistering the view drops the operator tfjs keeps on it
  backend.wasm.tfjs.disposeData(entry.filter);
  // an operand that is not b's own data is b transposed, made for the entry
  if (entry.operand.dataId !== entry.source) free(entry.operand.dataId);
}

/** Frees the entries of data the backend frees (once per backend). */
function hookDisposal(backend: Wasm): void {
  if (hooked.has(backend)) return;
  hooked.add(backend);
  const free = backend.disposeData.bind(backend);
  backend.disposeData = (dataId: tf.DataId, force?: boolean) => {
    const freed = free(dataId, force);
    const keys = keysOfSource.get(dataId);
    if (freed && keys) {
      keysOfSource.delete(dataId);
      for (const key of keys) dropEntry(key, backend, free);
    }
    return freed;
  };
}

const keyOf = (b: tf.TensorInfo, transposeB: boolean, backend: Wasm) => `${backend.dataIdMap.get(b.dataId).id}${transposeB ? 't' : ''}`;

/** Whether keptFilter keeps b (already kept, or seen before): then packing it once beats packing anything anew. */
function keeps(b: tf.TensorInfo, transposeB: boolean, backend: Wasm): boolean {
  return usedOnce.has(b.dataId) || entries.has(keyOf(b, transposeB, backend));
}

/** b (as the product reads it) registered for good from b's second use on; else undefined. */
function keptFilter(b: tf.TensorInfo, transposeB: boolean, backend: Wasm): KeptFilter | undefined {
  hookDisposal(backend);
  const key = keyOf(b, transposeB, backend);
  const hit = entries.get(key);
  if (hit) return hit;
  if (!usedOnce.has(b.dataId)) {
    usedOnce.add(b.dataId);
    return undefined;
  }
  const r = b.shape.length;
  const [k, n] = transposeB ? [b.shape[r - 1], b.shape[r - 2]] : [b.shape[r - 2], b.shape[r - 1]];
  const operand = transposeB ? swapLastAxes(b, backend) : b;
  const entry: CacheEntry = {
    operand,
    filter: registerView(backend, backend.dataIdMap.get(operand.dataId).memoryOffset, k * n),
    operatorBytes: 2 * 4 * k * n,
    source: b.dataId,
  };
  entries.set(key, entry);
  operatorBytes += entry.operatorBytes;
  keysOfSource.set(b.dataId, [...(keysOfSource.get(b.dataId) ?? []), key]);
  return entry;
}

/** a @ b with b packed: a (G, M, K) as XNNPACK's image, b (G or 1, K, N) its filter, kept from its second use when shared. */
function directProduct(a: tf.TensorInfo, b: tf.TensorInfo, transposeA: boolean, transposeB: boolean, sharedB: boolean, backend: Wasm): tf.TensorInfo {
  const at = transposeA ? swapLastAxes(a, backend) : a;
  const kept = sharedB ? keptFilter(b, transposeB, backend) : undefined;
  const bt = kept?.operand ?? (transposeB ? swapLastAxes(b, backend) : b);
  try {
    return xnnProducts(at, bt, backend, kept);
  } finally {
    if (at !== a) backend.disposeData(at.dataId);
    if (bt !== b && !kept) backend.disposeData(bt.dataId);
  }
}

/** a @ b as (b^T @ a^T)^T, a packed: b^T (G, N, K) the image, a^T (G or 1, K, M) the filter; a shared b folds a's batch into its rows. */
function swappedProduct(a: tf.TensorInfo, b: tf.TensorInfo, transposeA: boolean, transposeB: boolean, outShape: number[], backend: Wasm): tf.TensorInfo {
  const r = a.shape.length;
  const temps: tf.TensorInfo[] = [];
  const temp = (t: tf.TensorInfo) => (temps.push(t), t);
  try {
    const fold = product(b.shape.slice(0, -2)) === 1 && product(a.shape.slice(0, -2)) > 1;
    const a2 = fold ? temp(reshaped(a, [1, product(a.shape.slice(0, -1)), a.shape[r - 1]], backend)) : a;
    const b2 = fold ? temp(reshaped(b, [1, ...b.shape.slice(-2)], backend)) : b;
    const image = transposeB ? b2 : temp(swapLastAxes(b2, backend));
    const filter = transposeA ? a2 : temp(swapLastAxes(a2, backend));
    const outT = temp(xnnProducts(image, filter, backend));
    return reshaped(temp(swapLastAxes(outT, backend)), outShape, backend);
  } finally {
    for (const t of temps) backend.disposeData(t.dataId);
  }
}

/**
 * a @ b over K in chunks (chunkedProduct), packing the smaller side: b's chunks when M >= N, else
 * a's, as (b^T @ a^T)^T (with M 96 and N 4096, packing b's chunks took 5.7x as long). The way
 * depends on the shapes alone, so a run's bits do not depend on timing.
 */
function splitProduct(a: tf.TensorInfo, b: tf.TensorInfo, transposeA: boolean, transposeB: boolean, m: number, n: number, chunk: number, backend: Wasm): tf.TensorInfo {
  if (m >= n) return chunkedProduct(a, b, transposeA, transposeB, chunk, backend);
  const outT = chunkedProduct(b, a, !transposeB, !transposeA, chunk, backend);
  try {
    return swapLastAxes(outT, backend);
  } finally {
    backend.disposeData(outT.dataId);
  }
}

/** Timings of both ways, per product signature, until they settle which is faster. */
interface Trial {
  direct: number[];
  swapped: number[];
  swappedFaster?: boolean;
}

/** Calls each way is timed before a signature settles (the fastest of each counts). */
const TRIAL_CALLS = 2;
const trials = new Map<string, Trial>();
let forced: 'direct' | 'swapped' | undefined;

/** Runs every product one way (tests compare the two), or lets timing choose again (undefined). */
export function forceProductWay(way: 'direct' | 'swapped' | undefined): void {
  forced = way;
}

/** `run` one way: the way settled for `signature`, else the way with fewer timed calls, timed. */
function timedWay(signature: string, run: (swapped: boolean) => tf.TensorInfo): tf.TensorInfo {
  if (forced) return run(forced === 'swapped');
  let trial = trials.get(signature);
  if (!trial) trials.set(signature, (trial = { direct: [], swapped: [] }));
  if (trial.swappedFaster !== undefined) return run(trial.swappedFaster);
  const swapped = trial.swapped.length < trial.direct.length;
  const start = performance.now();
  const out = run(swapped);
  (swapped ? trial.swapped : trial.direct).push(performance.now() - start);
  if (trial.swapped.length === TRIAL_CALLS) trial.swappedFaster = Math.min(...trial.swapped) < Math.min(...trial.direct);
  return out;
}

/**
 * The product through XNNPACK, or null where it does not apply: not float32, batch shapes other
 * than equal or b's of size 1 (a transposed a then cannot be folded), a bias that is not one value
 * per column, or a batch of small unbiased products. The bias is added after the product.
 */
function viaXnn(a: tf.TensorInfo, b: tf.TensorInfo, transposeA: boolean, transposeB: boolean, bias: tf.TensorInfo | undefined, backend: Wasm): tf.TensorInfo | null {
  const r = a.shape.length;
  if (r < 2 || b.shape.length !== r || a.dtype !== 'float32' || b.dtype !== 'float32') return null;
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const sameBatch = batchA.every((d, i) => d === batchB[i]);
  const sharedB = product(batchB) === 1 && !transposeA;
  if (!sameBatch && !sharedB) return null;
  const [m, k] = transposeA ? [a.shape[r - 1], a.shape[r - 2]] : [a.shape[r - 2], a.shape[r - 1]];
  const n = transposeB ? b.shape[r - 2] : b.shape[r - 1];
  if (bias && (bias.dtype !== 'float32' || bias.shape.length !== 1 || bias.shape[0] !== n)) return null;
  // one call whatever its size, and never a bias in wasm's own loop (it adds the bias of the
  // last column to every row after the first, once per block of K)
  if (m * k * n < XNN_MIN_MACS && !sharedB && !bias) return null;
  const outShape = [...batchA, m, n];
  const direct = () => directProduct(a, b, transposeA, transposeB, sharedB, backend);
  const swapped = () => {
    if (sharedB) usedOnce.add(b.dataId); // its next use keeps it
    return swappedProduct(a, b, transposeA, transposeB, outShape, backend);
  };
  // a shared b is a weight (kept packed from its second use); a long K between two activations is summed in chunks
  const chunk = sharedB ? undefined : splitChunk(k);
  const out = sharedB && keeps(b, transposeB, backend)
    ? direct()
    : chunk
      ? splitProduct(a, b, transposeA, transposeB, m, n, chunk, backend)
      : timedWay(`${batchA}|${m}x${k}x${n}|${transposeA}${transposeB}${sharedB}`, (swap) => (swap ? swapped() : direct()));
  if (!bias) return out;
  try {
    return runWasmKernel(tf.Add, { a: out, b: bias }, {}, backend);
  } finally {
    backend.disposeData(out.dataId);
  }
}

function batchMatMulKernel(replaced: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as unknown as tf.BatchMatMulAttrs;
    return viaXnn(a, b, transposeA, transposeB, undefined, args.backend as unknown as Wasm) ?? replaced.kernelFunc(args);
  };
}

function fusedMatMulKernel(replaced: tf.KernelConfig): tf.KernelFunc {
  return (args) => {
    const { a, b, bias, preluActivationWeights } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo; bias?: tf.TensorInfo; preluActivationWeights?: tf.TensorInfo };
    const { transposeA, transposeB, activation } = args.attrs as unknown as tf._FusedMatMulAttrs;
    if ((activation ?? 'linear') !== 'linear' || preluActivationWeights) return replaced.kernelFunc(args);
    const backend = args.backend as unknown as Wasm;
    const fused = viaXnn(a, b, transposeA, transposeB, bias ?? undefined, backend);
    if (fused || !bias) return fused ?? replaced.kernelFunc(args);
    // wasm's own loop gets the bias wrong: the product, then the bias added
    const plain = runWasmKernel(tf.BatchMatMul, { a, b }, { transposeA, transposeB }, backend);
    try {
      return runWasmKernel(tf.Add, { a: plain, b: bias }, {}, backend);
    } finally {
      backend.disposeData(plain.dataId);
    }
  };
}

/** Replaces wasm's BatchMatMul and _FusedMatMul. */
export function registerXnnBatchMatMul(): void {
  replaceWasmKernel(tf.BatchMatMul, batchMatMulKernel);
  replaceWasmKernel(tf._FusedMatMul, fusedMatMulKernel);
}

/** True when wasm's BatchMatMul and _FusedMatMul are this file's kernels. */
export function xnnBatchMatMulRegistered(): boolean {
  return [tf.BatchMatMul, tf._FusedMatMul].every(isReplacedWasmKernel);
}
