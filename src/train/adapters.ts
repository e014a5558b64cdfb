/**
 * Adapter runs (config `adapters:`, src/model/adapters.ts): the checkpoint keeps only what
 * trains, `adapter.safetensors` (adapter weights and whatever model.trainable also unfreezes)
 * with `adapter.json` beside it (the adapter settings and a reference to the base weights: the
 * official checkpoint's path and sha256, or the seed of a from-scratch init), and the training
 * dropout's seeding, so a resumed run draws the masks an uninterrupted one would.
 */
import * as tf from '@tensorflow/tfjs-core';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ADAPTER_FILE, ADAPTER_META_FILE, readStateDict } from '../io/checkpoint-file.js';
import { readSafetensors, type StateDict } from '../io/safetensors.js';
import { adapterParamSpecs, Adapters, linearLayers, matchTargets, type AdapterSettings, type AdapterTable } from '../model/adapters.js';
import { resolveModelChoice, type Sam2Config } from '../model/config.js';
import { SAM2Base } from '../model/sam2.js';
import type { ParamSpec } from '../model/ops.js';
import { initParams, loadStateDict } from '../model/weights.js';
import type { TrainConfig } from './config.js';

export { ADAPTER_FILE, ADAPTER_META_FILE };

/** Where the frozen base weights of an adapter run come from. */
export type BaseWeights = { checkpoint: string; sha256: string } | { seed: number };

/** adapter.json: enough to rebuild the adapted model from the adapter file and its base. */
export interface AdapterMeta {
  format: 'medtune-adapter';
  version: 1;
  adapters: AdapterSettings;
  /** the adapted linear layers */
  layers: string[];
  base: BaseWeights;
  /** the run's model choice (preset, config overrides, image size) */
  model: TrainConfig['model'];
}

export function adapterSettings(a: NonNullable<TrainConfig['adapters']>): AdapterSettings {
  return { kind: a.kind, rank: a.rank, alpha: a.alpha ?? a.rank, dropout: a.dropout, targets: [...a.targets] };
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** The run's base weights: the official checkpoint it starts from (hashed), or its seeded init. */
export function baseWeightsOf(config: TrainConfig): BaseWeights {
  const ckpt = config.model.checkpoint;
  return ckpt ? { checkpoint: ckpt, sha256: sha256File(ckpt) } : { seed: config.seed };
}

/** The base model's weights for `specs`, checked against the reference's sha256. */
export function loadBaseWeights(base: BaseWeights, config: Sam2Config, source: string): StateDict {
  const specs = new SAM2Base(config).paramSpecs();
  if ('seed' in base) return initParams(specs, base.seed);
  if (!existsSync(base.checkpoint)) throw new Error(`${source}: its base weights ${base.checkpoint} are gone (the adapter only holds what trained)`);
  const sha = sha256File(base.checkpoint);
  if (sha !== base.sha256) {
    throw new Error(`${source}: base weights ${base.checkpoint} changed since training (sha256 ${sha.slice(0, 12)}…, expected ${base.sha256.slice(0, 12)}…)`);
  }
  return loadStateDict(specs, readStateDict(base.checkpoint), { source: base.checkpoint }).params;
}

export function isAdapterCheckpoint(dir: string): boolean {
  return existsSync(join(dir, ADAPTER_META_FILE));
}

export function readAdapterMeta(dir: string): AdapterMeta {
  const path = join(dir, ADAPTER_META_FILE);
  const meta = JSON.parse(readFileSync(path, 'utf8')) as AdapterMeta;
  if (meta.format !== 'medtune-adapter') throw new Error(`${path}: not a medtune adapter description`);
  return meta;
}

/** The base weights (verified) with an adapter checkpoint's trained tensors laid over them. */
export function adaptedStateDict(meta: AdapterMeta, trained: StateDict, config: Sam2Config, source: string): StateDict {
  const params = loadBaseWeights(meta.base, config, source);
  for (const [k, t] of trained) params.set(k, t);
  return params;
}

/** A full state dict (adapter parameters included) from an adapter checkpoint directory, and what describes it. */
export function readAdaptedStateDict(dir: string): { params: StateDict; meta: AdapterMeta; config: Sam2Config } {
  const meta = readAdapterMeta(dir);
  const config = resolveModelChoice(meta.model);
  return { params: adaptedStateDict(meta, readSafetensors(join(dir, ADAPTER_FILE)), config, dir), meta, config };
}

export interface PlannedAdapters extends AdapterTable {
  specs: ParamSpec[];
}

/** The adapters a config asks for on `specs`' model: settings, layers and parameter specs. */
export function plannedAdapters(a: NonNullable<TrainConfig['adapters']>, specs: ParamSpec[]): PlannedAdapters {
  const settings = adapterSettings(a);
  const { layers } = matchTargets(linearLayers(specs).keys(), settings.targets);
  return { settings, layers, specs: adapterParamSpecs({ settings, layers }, specs) };
}

export interface AdapterRun {
  adapters: Adapters<tf.Tensor>;
  meta: AdapterMeta;
  dropout?: AdapterDropout;
}

/** A training run's adapters on TfOps; its checkpoints reference the base weights it started from. */
export function adapterRun(planned: PlannedAdapters, config: TrainConfig, resumed?: AdapterMeta): AdapterRun {
  const { settings, layers } = planned;
  const meta: AdapterMeta = { format: 'medtune-adapter', version: 1, adapters: settings, layers, base: resumed?.base ?? baseWeightsOf(config), model: config.model };
  const dropout = settings.dropout > 0 ? new AdapterDropout(settings.dropout, config.seed) : undefined;
  return { adapters: new Adapters(settings, new Set(layers), dropout?.apply), meta, dropout };
}

/**
 * Dropout on the LoRA branch while training: masks seeded by run seed, step, micro-batch and
 * layer, drawn only between `begin` and `end` (validation runs without).
 */
export class AdapterDropout {
  private key?: string;

  constructor(
    private readonly rate: number,
    private readonly seed: number,
  ) {}

  begin(step: number, micro: number): void {
    this.key = `${this.seed}:${step}:${micro}`;
  }

  end(): void {
    this.key = undefined;
  }

  readonly apply = (x: tf.Tensor, prefix: string): tf.Tensor => (this.key === undefined ? x : tf.dropout(x, this.rate, undefined, `${this.key}:${prefix}`));
}
