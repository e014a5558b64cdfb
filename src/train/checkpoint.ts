/**
 * Run checkpoints: `<run-dir>/checkpoints/{latest,best,step-000500}/`, each a directory with
 *   model.safetensors      the full state dict (frozen parts included), official key names
 *                          (an adapter run instead: adapter.safetensors + adapter.json, see adapters.ts)
 *   optimizer.safetensors  AdamW moments as `exp_avg.<key>` / `exp_avg_sq.<key>`
 *   state.json             step, epoch, data-loader cursor (its RNG state included), best
 *                          validation Dice, AdamW's per-parameter step counts, ...
 *   config.yaml            the resolved run config
 * A checkpoint is written into a temporary directory and renamed into place; the previous
 * directory of that name is moved aside first and deleted only after the rename, so a crash at
 * any point leaves a complete `latest` (or its `.old-latest` twin, which loading falls back to).
 */
import { closeSync, cpSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { encodeSafetensors, readSafetensors, type StateDict } from '../io/safetensors.js';
import type { AdamWState } from './optimizer.js';
import { ADAPTER_FILE, ADAPTER_META_FILE, isAdapterCheckpoint, readAdapterMeta, type AdapterMeta } from './adapters.js';
import { writeFileSynced } from '../io/synced-write.js';

export const MODEL_FILE = 'model.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const STATE_FILE = 'state.json';
export const CONFIG_FILE = 'config.yaml';

/** Everything about the run's progress that is not a tensor. */
export interface TrainState {
  /** optimizer steps done */
  step: number;
  /** data epoch the loader is in */
  epoch: number;
  /** the training loader's cursor (order, position and RNG state) */
  loader: Record<string, unknown>;
  bestValDice: number | null;
  /** samples the loader skipped so far */
  skippedSamples: number;
  /** training samples consumed so far */
  samplesSeen: number;
}

export interface Checkpoint {
  /** the full state dict; of an adapter run, only what trains (adapter.safetensors) */
  model: StateDict;
  /** an adapter run's adapter.json: settings and the base weights `model` lays over */
  adapter?: AdapterMeta;
  optimizer: AdamWState;
  state: TrainState;
  configYaml: string;
}

export function checkpointsDir(runDir: string): string {
  return join(runDir, 'checkpoints');
}

export function stepName(step: number): string {
  return `step-${String(step).padStart(6, '0')}`;
}

function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // some file systems refuse fsync on directories; the renames are still atomic
  }
}

function encodeOptimizer(opt: AdamWState): Uint8Array {
  const tensors: StateDict = new Map();
  for (const [k, t] of opt.expAvg) tensors.set(`exp_avg.${k}`, t);
  for (const [k, t] of opt.expAvgSq) tensors.set(`exp_avg_sq.${k}`, t);
  return encodeSafetensors(tensors);
}

function readOptimizer(path: string, steps: Record<string, number>): AdamWState {
  const expAvg: StateDict = new Map();
  const expAvgSq: StateDict = new Map();
  for (const [k, t] of readSafetensors(path)) {
    if (k.startsWith('exp_avg_sq.')) expAvgSq.set(k.slice('exp_avg_sq.'.length), t);
    else if (k.startsWith('exp_avg.')) expAvg.set(k.slice('exp_avg.'.length), t);
    else throw new Error(`${path}: unexpected tensor '${k}'`);
  }
  return { steps, expAvg, expAvgSq };
}

/** Replace `dir/name` with the complete directory `tmp` (same file system), never leaving no copy. */
function swapIn(dir: string, tmp: string, name: string): void {
  const target = join(dir, name);
  const old = join(dir, `.old-${name}`);
  rmSync(old, { recursive: true, force: true });
  if (existsSync(target)) renameSync(target, old);
  renameSync(tmp, target);
  syncDir(dir);
  rmSync(old, { recursive: true, force: true });
}

/**
 * Write one checkpoint under every name in `names` (e.g. latest, step-000500, best), atomically
 * each, then prune `step-*` directories beyond the newest `keepLast`.
 */
export function saveCheckpoint(runDir: string, ckpt: Checkpoint, names: string[], keepLast: number): void {
  const dir = checkpointsDir(runDir);
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, `.tmp-${process.pid}-${Date.now().toString(36)}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  try {
    if (ckpt.adapter) {
      writeFileSynced(join(tmp, ADAPTER_FILE), encodeSafetensors(ckpt.model, { format: 'pt' }));
      writeFileSynced(join(tmp, ADAPTER_META_FILE), JSON.stringify(ckpt.adapter, null, 1));
    } else {
      writeFileSynced(join(tmp, MODEL_FILE), encodeSafetensors(ckpt.model, { format: 'pt' }));
    }
    writeFileSynced(join(tmp, OPTIMIZER_FILE), encodeOptimizer(ckpt.optimizer));
    const state = { ...ckpt.state, optimizerSteps: ckpt.optimizer.steps };
    writeFileSynced(join(tmp, STATE_FILE), JSON.stringify(state, null, 1));
    writeFileSynced(join(tmp, CONFIG_FILE), ckpt.configYaml);
    syncDir(tmp);
    names.forEach((name, i) => {
      const src = i === names.length - 1 ? tmp : `${tmp}-${name}`;
      if (src !== tmp) cpSync(tmp, src, { recursive: true });
      swapIn(dir, src, name);
    });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  pruneStepCheckpoints(dir, keepLast);
}

export function pruneStepCheckpoints(dir: string, keepLast: number): void {
  const steps = readdirSync(dir)
    .filter((n) => /^step-\d+$/.test(n))
    .sort();
  for (const n of steps.slice(0, Math.max(0, steps.length - keepLast))) rmSync(join(dir, n), { recursive: true, force: true });
}

/**
 * The directory of checkpoint `name` in a run, or undefined. Falls back to `.old-<name>` when a
 * crash came between moving the old one aside and renaming the new one in.
 */
export function findCheckpoint(runDir: string, name = 'latest'): string | undefined {
  const dir = checkpointsDir(runDir);
  for (const n of [name, `.old-${name}`]) {
    if (existsSync(join(dir, n, STATE_FILE)) && (existsSync(join(dir, n, MODEL_FILE)) || existsSync(join(dir, n, ADAPTER_FILE)))) return join(dir, n);
  }
  return undefined;
}

/** Read a checkpoint directory written by `saveCheckpoint`. */
export function loadCheckpoint(path: string): Checkpoint {
  const adapter = isAdapterCheckpoint(path) ? readAdapterMeta(path) : undefined;
  const weightsFile = adapter ? ADAPTER_FILE : MODEL_FILE;
  for (const f of [weightsFile, OPTIMIZER_FILE, STATE_FILE, CONFIG_FILE]) {
    if (!existsSync(join(path, f))) throw new Error(`${path}: not a training checkpoint (no ${f})`);
  }
  const { optimizerSteps, ...state } = JSON.parse(readFileSync(join(path, STATE_FILE), 'utf8')) as TrainState & {
    optimizerSteps: Record<string, number>;
  };
  return {
    model: readSafetensors(join(path, weightsFile)),
    adapter,
    optimizer: readOptimizer(join(path, OPTIMIZER_FILE), optimizerSteps ?? {}),
    state,
    configYaml: readFileSync(join(path, CONFIG_FILE), 'utf8'),
  };
}
