/**
 * Gradients that give memory back as the backward pass goes.
 *
 * tfjs's own (`tf.grads`, `tf.variableGrads`) keep every intermediate gradient, and every tensor an
 * op saved for its backward pass, until the whole pass ends: the peak is the forward's activations
 * plus a gradient for each of them. These walk the same tape in the same order with the same
 * gradient functions, so the values are tfjs's bit for bit, but a tensor's gradient is freed once the
 * op that produced the tensor has passed it on, and an op's saved tensors once its gradient has run.
 */
import * as tf from '@tensorflow/tfjs-core';

/** A recorded op on tfjs's tape (tfjs-core's TapeNode, which its package does not export). */
interface TapeNode {
  id: number;
  kernelName: string;
  outputs: tf.Tensor[];
  inputs: Record<string, tf.Tensor>;
  gradient?: (dys: Array<tf.Tensor | null>) => Record<string, () => tf.Tensor>;
  saved?: tf.Tensor[];
}

/** The engine members the tape is run with (public in its JavaScript, private in its typings). */
interface TapeEngine {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  scopedRun<R>(start: () => void, end: () => void, f: () => R): R;
  startTape(): void;
  endTape(): void;
}

/**
 * The ops of `tape` on a path from one of `xs` to `y`, each with only its inputs that depend on
 * `xs` (the ones gradients flow to): tfjs's own filter.
 */
function pathsFromXsToY(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromX = new Set(xs.map((x) => x.id));
  const nodesFromX = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((t) => fromX.has(t.id))) {
      node.outputs.forEach((o) => fromX.add(o.id));
      nodesFromX.add(node.id);
    }
  }
  const toY = new Set([y.id]);
  const nodesToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i];
    if (node.outputs.some((o) => toY.has(o.id))) {
      Object.values(node.inputs).forEach((t) => toY.add(t.id));
      nodesToY.add(node.id);
    }
  }
  return tape
    .filter((node) => nodesFromX.has(node.id) && nodesToY.has(node.id))
    .map((node) => ({ ...node, inputs: Object.fromEntries(Object.entries(node.inputs).filter(([, t]) => fromX.has(t.id))) }));
}

/**
 * Accumulated gradients by tensor id. A gradient function may hand back a tensor it was given
 * (its dy, a saved input), so one tensor can be several ids' gradient: it is freed when the last
 * id lets go of it, and never when it is the caller's.
 */
class GradientMap {
  private readonly byId = new Map<number, tf.Tensor>();
  private readonly holders = new Map<tf.Tensor, number>();
  constructor(private readonly callers: Set<tf.Tensor>) {}

  get(id: number): tf.Tensor | undefined {
    return this.byId.get(id);
  }
  holds(t: tf.Tensor): boolean {
    return this.holders.has(t);
  }
  /** Adds `dx` to the gradient of tensor `id`. */
  accumulate(id: number, dx: tf.Tensor): void {
    const current = this.byId.get(id);
    this.set(id, current === undefined ? dx : tf.add(current, dx));
    if (current !== undefined) this.release(current);
  }
  /** Forgets the gradient of tensor `id`, freeing it unless something else holds it. */
  drop(id: number): void {
    const t = this.byId.get(id);
    if (t === undefined) return;
    this.byId.delete(id);
    this.release(t);
  }
  private set(id: number, t: tf.Tensor): void {
    this.byId.set(id, t);
    this.holders.set(t, (this.holders.get(t) ?? 0) + 1);
  }
  private release(t: tf.Tensor): void {
    const n = (this.holders.get(t) ?? 1) - 1;
    if (n > 0) {
      this.holders.set(t, n);
      return;
    }
    this.holders.delete(t);
    if (!this.callers.has(t)) t.dispose();
  }
}

/**
 * `f()` and its gradients with respect to `xs` (null for an x it does not depend on, which is an
 * error unless `allowNoGradients`), scaled by `dy` (default ones): tfjs's `engine.gradients`, freeing
 * as it goes. The engine's tape is left as it was found, so this can run inside another backward
 * pass (a checkpointed block's recomputation).
 */
export function gradients(f: () => tf.Tensor, xs: tf.Tensor[], dy?: tf.Tensor, allowNoGradients = false): { value: tf.Tensor; grads: Array<tf.Tensor | null> } {
  if (xs.length === 0) throw new Error('gradients: no tensors to differentiate with respect to');
  const engine = tf.engine() as unknown as TapeEngine;
  const outerTape = engine.state.activeTape;
  const y = engine.scopedRun(() => engine.startTape(), () => engine.endTape(), () => tf.tidy('forward', f));
  if (!(y instanceof tf.Tensor)) throw new Error('gradients: f() must return a tensor');
  const tape = engine.state.activeTape ?? [];
  const path = pathsFromXsToY(tape, xs, y);
  if (!allowNoGradients && path.length === 0) {
    throw new Error('gradients: f() does not depend on the tensors asked for; all ops from them to its result must run inside f');
  }
  // a higher-order gradient would run the saved tensors' ops again: they stay until the end then
  const freeAsWeGo = engine.state.gradientDepth === 0;
  type Result = { value: tf.Tensor; grads: Array<tf.Tensor | null> };
  try {
    // (tidy keeps the tensors of what it returns; its typings leave out the nulls)
    return tf.tidy('backward', (): tf.TensorContainer => {
      const wanted = new Set(xs.map((x) => x.id));
      const grads = new GradientMap(new Set(dy ? [dy] : []));
      grads.accumulate(y.id, dy ?? tf.onesLike(y));
      for (let i = path.length - 1; i >= 0; i--) {
        const node = path[i];
        if (node.gradient == null) throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
        const inputGradients = node.gradient(node.outputs.map((o) => grads.get(o.id) ?? null));
        for (const [name, x] of Object.entries(node.inputs)) {
          if (!(name in inputGradients)) throw new Error(`Cannot backprop through input ${name} of ${node.kernelName}; gradients exist for ${Object.keys(inputGradients)}.`);
          const dx = tf.tidy(() => inputGradients[name]());
          if (dx.dtype !== 'float32') throw new Error(`Error in gradient for op ${node.kernelName}: the gradient of input ${name} is ${dx.dtype}, not float32`);
          if (!tf.util.arraysEqual(dx.shape, x.shape)) {
            throw new Error(`Error in gradient for op ${node.kernelName}: the gradient of input '${name}' has shape ${dx.shape}, its input ${x.shape}`);
          }
          grads.accumulate(x.id, dx);
        }
        // every tensor has one producer: its gradient is spent, and so is what the op saved
        for (const o of node.outputs) if (!wanted.has(o.id)) grads.drop(o.id);
        if (freeAsWeGo) for (const t of node.saved ?? []) if (!grads.holds(t)) t.dispose();
      }
      return { value: y, grads: xs.map((x) => grads.get(x.id) ?? null) } satisfies Result as unknown as tf.TensorContainer;
    }) as unknown as Result;
  } finally {
    if (freeAsWeGo) for (const node of tape) for (const t of node.saved ?? []) t.dispose();
    engine.state.activeTape = outerTape;
  }
}

/**
 * `f()` (a scalar) and its gradients with respect to `vars`, keyed by variable name (those it does
 * not depend on left out): `tf.variableGrads`, freeing as it goes.
 */
export function variableGrads(f: () => tf.Scalar, vars: tf.Variable[]): { value: tf.Scalar; grads: tf.NamedTensorMap } {
  const { value, grads } = gradients(f, vars, undefined, true);
  if (value.rank !== 0) {
    value.dispose();
    tf.dispose(grads.filter((g): g is tf.Tensor => g !== null));
    throw new Error(`variableGrads: f() must return a scalar, got shape [${value.shape}]`);
  }
  if (grads.every((g) => g === null)) {
    value.dispose();
    throw new Error('variableGrads: f() depends on none of the variables; all ops from them to the loss must run inside f');
  }
  const named: tf.NamedTensorMap = {};
  vars.forEach((v, i) => {
    if (grads[i] !== null) named[v.name] = grads[i]!;
  });
  return { value: value as tf.Scalar, grads: named };
}
