/**
 * Model parameters on the host and in TensorFlow.js: seeded initialisation, strict
 * checkpoint loading by official key names, and counting.
 */
import * as tf from '@tensorflow/tfjs-core';
import seedrandom from 'seedrandom';
import type { HostTensor, StateDict } from '../io/safetensors.js';
import type { Init, ParamSpec } from './ops.js';

export type { HostTensor, StateDict };

function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** PyTorch's `trunc_normal_` default cut-off: [-2, 2] in absolute value, not in std units. */
const TRUNC_BOUND = 2;

function fill(out: Float32Array, init: Init, rng: () => number): void {
  const gaussian = () => {
    // Box-Muller; 1 - u keeps log() away from 0
    const u = 1 - rng();
    const v = rng();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
  switch (init.kind) {
    case 'zeros':
      out.fill(0);
      return;
    case 'ones':
      out.fill(1);
      return;
    case 'constant':
      out.fill(init.value);
      return;
    case 'uniform':
      for (let i = 0; i < out.length; i++) out[i] = (2 * rng() - 1) * init.bound;
      return;
    case 'normal':
      for (let i = 0; i < out.length; i++) out[i] = gaussian() * init.std;
      return;
    case 'truncNormal':
      for (let i = 0; i < out.length; i++) {
        let x: number;
        do x = gaussian() * init.std;
        while (Math.abs(x) > TRUNC_BOUND);
        out[i] = x;
      }
      return;
    default: {
      const never: never = init;
      throw new Error(`unknown init ${JSON.stringify(never)}`);
    }
  }
}

/**
 * Fresh parameters for `specs`, following each spec's `init`. Deterministic per seed, and each
 * parameter draws from its own stream (seeded by seed and name), so adding or reordering
 * parameters does not change the others.
 */
export function initParams(specs: ParamSpec[], seed: number): StateDict {
  const out: StateDict = new Map();
  for (const spec of specs) {
    if (out.has(spec.name)) throw new Error(`initParams: duplicate parameter '${spec.name}'`);
    const data = new Float32Array(numel(spec.shape));
    fill(data, spec.init, seedrandom.alea(`${seed}:${spec.name}`));
    out.set(spec.name, { data, shape: [...spec.shape] });
  }
  return out;
}

export interface ShapeMismatch {
  name: string;
  expected: number[];
  got: number[];
}

export interface LoadReport {
  /** model parameters the checkpoint lacks */
  missing: string[];
  /** checkpoint tensors the model has no parameter for */
  unexpected: string[];
  /** present in both with different shapes */
  mismatched: ShapeMismatch[];
}

/**
 * Compare a state dict with the model's parameter specs (names and shapes). The report is the
 * same either way; `strict` is accepted so callers can pass their load options through.
 */
export function checkStateDict(specs: ParamSpec[], sd: ReadonlyMap<string, { shape: number[] }>, _opts: { strict?: boolean } = {}): LoadReport {
  const wanted = new Set<string>();
  const missing: string[] = [];
  const mismatched: ShapeMismatch[] = [];
  for (const spec of specs) {
    wanted.add(spec.name);
    const t = sd.get(spec.name);
    if (!t) missing.push(spec.name);
    else if (!sameShape(t.shape, spec.shape)) mismatched.push({ name: spec.name, expected: [...spec.shape], got: [...t.shape] });
  }
  const unexpected = [...sd.keys()].filter((k) => !wanted.has(k));
  return { missing, unexpected, mismatched };
}

const LIST_LIMIT = 40;

function listNames(names: string[]): string {
  const shown = names.slice(0, LIST_LIMIT).map((n) => `    ${n}`);
  if (names.length > LIST_LIMIT) shown.push(`    ... and ${names.length - LIST_LIMIT} more`);
  return shown.join('\n');
}

/** A readable summary of a load report, naming the keys. Empty when everything matched. */
export function formatLoadReport(report: LoadReport): string {
  const parts: string[] = [];
  if (report.missing.length) parts.push(`  missing keys (${report.missing.length}):\n${listNames(report.missing)}`);
  if (report.unexpected.length) parts.push(`  unexpected keys (${report.unexpected.length}):\n${listNames(report.unexpected)}`);
  if (report.mismatched.length) {
    const lines = report.mismatched.map((m) => `${m.name}: checkpoint [${m.got.join(', ')}], model [${m.expected.join(', ')}]`);
    parts.push(`  shape mismatches (${report.mismatched.length}):\n${listNames(lines)}`);
  }
  return parts.join('\n');
}

export interface LoadOptions {
  /** throw on any missing, unexpected or mismatched key (default true) */
  strict?: boolean;
  /** the file the state dict came from, named in errors */
  source?: string;
  /** non-strict: seed for initialising the parameters the checkpoint does not supply (default 0) */
  seed?: number;
}

export interface LoadResult {
  /** exactly the model's parameters, in spec order */
  params: StateDict;
  /** what did not match; when not strict, missing and mismatched parameters were initialised, unexpected ones ignored */
  report: LoadReport;
}

/**
 * Take the model's parameters from `sd` by their official names. Strict (the default): any
 * missing, unexpected or shape-mismatched key throws an Error naming them and the source.
 * Not strict: matching tensors are loaded, the rest of the model is initialised from its specs
 * (seeded), unexpected tensors are skipped, and the report says which.
 */
export function loadStateDict(specs: ParamSpec[], sd: StateDict, opts: LoadOptions = {}): LoadResult {
  const { strict = true, source = 'state dict', seed = 0 } = opts;
  const report = checkStateDict(specs, sd, { strict });
  const bad = report.missing.length + report.unexpected.length + report.mismatched.length;
  if (strict && bad > 0) {
    throw new Error(`${source}: does not match the model's parameters (strict load):\n${formatLoadReport(report)}`);
  }
  const skipped = new Set([...report.missing, ...report.mismatched.map((m) => m.name)]);
  const fresh = skipped.size ? initParams(specs.filter((s) => skipped.has(s.name)), seed) : new Map<string, HostTensor>();
  const params: StateDict = new Map();
  for (const spec of specs) {
    const t = skipped.has(spec.name) ? fresh.get(spec.name)! : sd.get(spec.name)!;
    if (t.data.length !== numel(spec.shape)) {
      throw new Error(`${source}: tensor '${spec.name}' holds ${t.data.length} values, not the ${numel(spec.shape)} of shape [${spec.shape}]`);
    }
    params.set(spec.name, t);
  }
  return { params, report };
}

/**
 * Upload host tensors as tf.Variables (float32). `trainable(name)` decides which are trained;
 * default all. Variables are left unnamed, so several models can coexist in one tfjs engine.
 */
export function toTfParams(sd: StateDict, opts: { trainable?: (name: string) => boolean } = {}): Map<string, tf.Variable> {
  const out = new Map<string, tf.Variable>();
  for (const [name, t] of sd) {
    const trainable = opts.trainable ? opts.trainable(name) : true;
    const value = tf.tensor(t.data, t.shape, 'float32');
    out.set(name, tf.variable(value, trainable));
    value.dispose();
  }
  return out;
}

/** Download tensors (variables or not) to host float32 arrays. */
export async function fromTfParams(params: ReadonlyMap<string, tf.Tensor>): Promise<StateDict> {
  const out: StateDict = new Map();
  for (const [name, t] of params) {
    if (t.dtype !== 'float32') throw new Error(`parameter '${name}' is ${t.dtype}, expected float32`);
    const data = (await t.data()) as Float32Array;
    // data() may hand out the backend's own buffer: copy so the result never aliases it
    out.set(name, { data: Float32Array.from(data), shape: [...t.shape] });
  }
  return out;
}

/** Total number of parameter values. */
export function paramCount(specs: ReadonlyArray<{ shape: number[] }>): number {
  return specs.reduce((n, s) => n + numel(s.shape), 0);
}

/** Parameter values per top-level module (the key's text before the first '.'), in first-seen order. */
export function countByModule(specs: ReadonlyArray<{ name: string; shape: number[] }>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of specs) {
    const dot = s.name.indexOf('.');
    const mod = dot < 0 ? s.name : s.name.slice(0, dot);
    out[mod] = (out[mod] ?? 0) + numel(s.shape);
  }
  return out;
}
