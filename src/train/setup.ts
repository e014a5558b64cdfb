/**
 * Setting a run up: the model and its weights (resumed, from a checkpoint, or seeded), the
 * trainable parameters and AdamW, then the data (synthetic volumes generated on first use, the
 * prefetching train loader, the fixed validation set).
 */
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { createClipLoader, type ClipLoader } from '../data/clips.js';
import { modalityFamily, readDecathlon } from '../data/decathlon.js';
import { buildValSet, createTrainLoader, type TrainLoader } from '../data/loader.js';
import { prepareDirectories } from '../data/prepare.js';
import { isBoxOnly, type PromptSampling } from '../data/prompts.js';
import { resolveDataEntries, type DataEntry } from '../data/sampling.js';
import { splitByPatient, type PatientSplit } from '../data/split.js';
import type { Batch } from '../data/types.js';
import { readStateDict } from '../io/checkpoint-file.js';
import { resolveModelChoice, type Sam2Config } from '../model/config.js';
import { SAM2Base } from '../model/sam2.js';
import { isAdapterParam } from '../model/adapters.js';
import { TfOps } from '../model/tf-ops.js';
import { ADAPTER_FILE, adaptedStateDict, adapterRun, plannedAdapters, type AdapterRun } from './adapters.js';
import { initParams, loadStateDict, paramCount, toTfParams, type StateDict } from '../model/weights.js';
import { findCheckpoint, loadCheckpoint, type Checkpoint } from './checkpoint.js';
import type { TrainConfig } from './config.js';
import type { EmbeddingCache } from './embedding-cache.js';
import { readLabelNames as readFolderLabelNames } from '../eval/labels.js';
import { AdamW, buildParamGroups } from './optimizer.js';

export interface ModelSetup {
  modelConfig: Sam2Config;
  model: SAM2Base;
  ops: TfOps;
  params: Map<string, tf.Variable>;
  /** the trained parameters by state-dict key */
  trainable: Map<string, tf.Variable>;
  /** state-dict key of each trained variable's tfjs name (variableGrads keys its gradients so) */
  keyOfVar: Map<string, string>;
  optimizer: AdamW;
  /** the checkpoint the run continues from */
  resumed?: Checkpoint;
  /** the frozen image encoder's outputs by slice (train.embedding_cache), when on */
  embeddingCache?: EmbeddingCache;
  /** an adapter run: its adapters, what its checkpoints describe, the training dropout's seeding */
  adapter?: AdapterRun;
}

/** The model, its weights and optimizer, resumed from `resume` ('auto': the run's latest checkpoint) when given. */
export function setupModel(config: TrainConfig, runDir: string, resume: string | undefined, say: (msg: string) => void): ModelSetup {
  const t = config.train;
  const modelConfig = resolveModelChoice(config.model);
  const model = new SAM2Base(modelConfig);
  const specs = model.paramSpecs();
  const resumeDir = resume === 'auto' ? findCheckpoint(runDir) : resume;
  if (resume === 'auto' && !resumeDir) say(`no checkpoint in ${runDir}/checkpoints yet: starting from the beginning`);
  const resumed = resumeDir ? loadCheckpoint(resumeDir) : undefined;
  const planned = config.adapters ? plannedAdapters(config.adapters, specs) : undefined;
  if (resumed && !resumed.adapter !== !planned) {
    throw new Error(`${resumeDir}: ${resumed.adapter ? 'an adapter checkpoint, but the config has no adapters' : 'a full checkpoint, but the config trains adapters'}: resume with the config it was trained with`);
  }
  let weights: StateDict;
  if (resumed) {
    const sd = resumed.adapter ? adaptedStateDict(resumed.adapter, resumed.model, modelConfig, resumeDir!) : resumed.model;
    weights = loadStateDict([...specs, ...(planned?.specs ?? [])], sd, { source: join(resumeDir!, resumed.adapter ? ADAPTER_FILE : 'model.safetensors') }).params;
    say(`resuming from ${resumeDir} at step ${resumed.state.step}`);
  } else if (config.model.checkpoint) {
    weights = loadStateDict(specs, readStateDict(config.model.checkpoint), { source: config.model.checkpoint }).params;
  } else {
    weights = initParams(specs, config.seed);
  }
  if (planned && !resumed) for (const [k, t] of initParams(planned.specs, config.seed)) weights.set(k, t);
  // the prompt encoder's random Fourier matrix is a buffer in PyTorch, never trained
  const isTrainable = (name: string) =>
    isAdapterParam(name) ||
    (!name.endsWith('.positional_encoding_gaussian_matrix') && config.model.trainable.some((p) => name === p || name.startsWith(`${p}.`)));
  const params = toTfParams(weights, { trainable: isTrainable });
  const trainable = new Map([...params].filter(([, v]) => v.trainable));
  if (trainable.size === 0) throw new Error(`model.trainable (${config.model.trainable.join(', ')}) matches no parameter`);
  const trainedWhat = [...(planned ? [`${planned.settings.kind} rank ${planned.settings.rank} on ${planned.layers.length} layers`] : []), ...config.model.trainable];
  say(
    `model: ${paramCount(specs).toLocaleString('en')} parameters, ${paramCount([...trainable.values()]).toLocaleString('en')} trained ` +
      `(${trainedWhat.join(', ')}), image size ${modelConfig.image_size}`,
  );
  const optimizer = new AdamW(
    trainable,
    buildParamGroups(trainable, {
      lr: t.lr,
      imageEncoderLr: t.image_encoder_lr ?? undefined,
      weightDecay: t.weight_decay,
      noDecayBiasNorm: t.no_decay_bias_norm,
      layerDecay: t.layer_decay,
    }),
    t.betas,
    t.eps,
  );
  if (resumed) optimizer.loadState(resumed.optimizer);
  const keyOfVar = new Map([...trainable].map(([k, v]) => [v.name, k]));
  const adapter = planned && adapterRun(planned, config, resumed?.adapter);
  const ops = new TfOps(params, { adapters: adapter?.adapters, checkpointActivations: t.checkpoint_activations });
  return { modelConfig, model, ops, params, trainable, keyOfVar, optimizer, resumed, adapter };
}

export interface DataSetup {
  /** single slices, or clips with train.clip_length > 1 */
  loader: TrainLoader | ClipLoader;
  valSet: Batch[];
  /** validation samples */
  valCount: number;
  /** label value -> name (labels.json beside the data) */
  labelNames: Map<number, string>;
  dropped: DroppedSamples;
}

export const SPLIT_FILE = 'split.json';

/**
 * data.train / data.val naming a Decathlon / nnU-Net folder (dataset.json, imagesTr/, labelsTr/):
 * its cases are prepared once, as `medtune prepare` does (the intensity recipe of dataset.json's
 * modality, label names kept), into `<run-dir>/prepared-<train|val>`, which the run then reads.
 */
async function withPreparedDecathlon(config: TrainConfig, runDir: string, say: (msg: string) => void): Promise<TrainConfig> {
  const data = { ...config.data };
  for (const key of ['train', 'val'] as const) {
    const root = data[key];
    if (typeof root !== 'string' || !existsSync(join(root, 'dataset.json'))) continue;
    const out = join(runDir, `prepared-${key}`);
    if (!existsSync(out)) {
      const ds = readDecathlon(root);
      const modality = modalityFamily(ds.modalityWord);
      const staging = `${out}.partial`;
      rmSync(staging, { recursive: true, force: true });
      say(`data.${key} is a Decathlon folder: preparing its ${ds.cases.length} case(s) (${ds.modalityWord} -> ${modality}) into ${out}`);
      await prepareDirectories({ root, out: staging, modality, overwrite: true, log: (line) => !line.includes('.npz: (') && say(line) });
      renameSync(staging, out);
    }
    data[key] = out;
  }
  return { ...config, data };
}

/** The loader's prompt sampling; none for the seed recipe's box alone (its batches stay as they were). */
function promptSampling(config: TrainConfig): PromptSampling | undefined {
  const p = config.prompts;
  const sampling: PromptSampling = { box: p.box, points: p.points, numPoints: p.num_points };
  return isBoxOnly(sampling) && p.correction_rounds === 0 ? undefined : sampling;
}

/**
 * data.val_fraction: data.train's volumes (one npz file a patient) split by patient, seeded; the
 * split is written to the run directory and read back from there on resume, so it never moves.
 */
function patientSplit(config: TrainConfig, runDir: string, say: (msg: string) => void): { train: string[]; val: string[] } {
  const d = config.data;
  if (d.val !== null) throw new Error('data.val_fraction holds out part of data.train: leave data.val unset (null)');
  const entries = resolveDataEntries(d.train);
  const notNpz = entries.find((e) => e.kind !== 'npz');
  if (notNpz) throw new Error(`data.val_fraction splits npz volumes by patient; ${JSON.stringify(d.train)} holds an npy folder`);
  const byId = new Map(entries.map((e) => [basename(e.path, '.npz'), e.path]));
  const seed = d.split_seed ?? config.seed;
  const path = join(runDir, SPLIT_FILE);
  let split: PatientSplit;
  if (existsSync(path)) {
    split = JSON.parse(readFileSync(path, 'utf8')) as PatientSplit;
    if (split.seed !== String(seed) || split.valFraction !== d.val_fraction) {
      throw new Error(`${path} was made with split seed ${split.seed} and val_fraction ${split.valFraction}, not ${seed} and ${d.val_fraction}: use another run directory or the same settings`);
    }
    const gone = [...split.train, ...split.val].filter((id) => !byId.has(id));
    if (gone.length > 0) throw new Error(`${path} names patients no longer in data.train: ${gone.slice(0, 5).join(', ')}${gone.length > 5 ? ', ...' : ''}`);
  } else {
    split = splitByPatient([...byId.keys()], d.val_fraction, seed);
    writeFileSync(path, `${JSON.stringify(split, null, 2)}\n`);
  }
  say(`patients: ${split.train.length} train, ${split.val.length} validation (${path})`);
  return { train: split.train.map((id) => byId.get(id)!), val: split.val.map((id) => byId.get(id)!) };
}

/** The train loader (continuing the resumed cursor) and the validation set; generates synthetic data first when configured. */
export async function setupData(runConfig: TrainConfig, imageSize: number, runDir: string, loaderState: Record<string, unknown> | undefined, say: (msg: string) => void): Promise<DataSetup> {
  const config = await withPreparedDecathlon(runConfig, runDir, say);
  const d = config.data;
  if (d.generate) {
    const { ensureSyntheticVolumes } = await import('../data/synthetic.js');
    const g = d.generate;
    for (const [split, dir, count] of [['train', d.train, g.train_volumes], ['val', d.val, g.val_volumes]] as const) {
      if (dir === null) continue;
      if (typeof dir !== 'string') throw new Error(`data.generate needs data.${split} to be one directory, not a list`);
      const made = ensureSyntheticVolumes(dir, { count, depth: g.depth, size: g.size, organs: g.organs, noise: g.noise, seed: `${config.seed}/${split}` });
      if (made) say(`generated ${count} synthetic ${split} volumes in ${dir}`);
    }
  }
  const augment = d.augment.flip_h || d.augment.flip_v || d.augment.max_rotation > 0
    ? { flipH: d.augment.flip_h, flipV: d.augment.flip_v, maxRotation: d.augment.max_rotation }
    : false;
  const split = d.val_fraction > 0 ? patientSplit(config, runDir, say) : undefined;
  const trainFiles = split?.train ?? d.train;
  const valFiles = split?.val ?? d.val;
  const sampling = { files: trainFiles, imageSize, batchSize: config.train.batch_size, bboxShift: d.bbox_shift, seed: config.seed, augment, state: loaderState };
  const clipLength = config.train.clip_length;
  const loader =
    clipLength > 1
      ? createClipLoader({ ...sampling, clipLength })
      : createTrainLoader({ ...sampling, prompts: promptSampling(config), balanceLabels: d.balance_labels, prefetch: d.prefetch, workers: d.workers });
  const val = valFiles
    ? await buildValSet({
        files: valFiles,
        imageSize,
        maxSamples: d.val_samples > 0 ? d.val_samples : Number.MAX_SAFE_INTEGER,
        seed: config.seed,
        batchSize: config.train.batch_size,
        native: d.val_native_resolution,
      })
    : undefined;
  const valSet = val?.batches ?? [];
  const valCount = valSet.reduce((n, b) => n + b.batchSize, 0);
  const dropped: DroppedSamples = {
    trainTooSmall: 'tooSmall' in loader.index ? loader.index.tooSmall : 0,
    valTooSmall: val?.tooSmall ?? 0,
    valUnloadable: val?.unloadable ?? 0,
    trainSkipped: loader.skipped(),
  };
  const labelNames = readLabelNames(resolveDataEntries(trainFiles));
  say(`data: ${loader.size} training ${clipLength > 1 ? `clips of ${clipLength} slices` : 'samples'} per epoch${valFiles ? `, ${valCount} validation samples` : ''}${describeLabels(loader.index.label, labelNames)}`);
  const left = describeDropped(dropped, imageSize, d.val_native_resolution);
  if (left) say(left);
  return { loader, valSet, valCount, labelNames, dropped };
}

/**
 * Every (slice, label) sample left out, counted in one place: at indexing (too small to see at
 * the resolution trained or scored at), validation samples that failed to load, and training
 * samples skipped (and replaced) while the run went on.
 */
export interface DroppedSamples {
  trainTooSmall: number;
  valTooSmall: number;
  valUnloadable: number;
  /** as of the loader's cursor (resumed runs count from the start) */
  trainSkipped: number;
}

/** One line on the samples left out, or '' when none was. */
export function describeDropped(d: DroppedSamples, imageSize: number, valNative: boolean): string {
  const parts: string[] = [];
  if (d.trainTooSmall > 0) parts.push(`${d.trainTooSmall} training (slice, label) sample(s) too small to see in the ${imageSize / 4} px masks`);
  if (d.valTooSmall > 0) parts.push(`${d.valTooSmall} validation sample(s) too small to see at ${valNative ? `${imageSize} px` : `${imageSize / 4} px (data.val_native_resolution scores them)`}`);
  if (d.valUnloadable > 0) parts.push(`${d.valUnloadable} validation sample(s) that failed to load`);
  if (d.trainSkipped > 0) parts.push(`${d.trainSkipped} training sample(s) skipped and replaced while training`);
  return parts.length > 0 ? `left out: ${parts.join('; ')}` : '';
}

/** Label value -> name from the labels.json (or dataset.json) beside the volumes. */
export function readLabelNames(entries: DataEntry[]): Map<number, string> {
  return new Map([...new Set(entries.map((e) => dirname(e.path)))].flatMap((dir) => [...readFolderLabelNames(dir)]));
}

/** A label's name for logs and tags: its labels.json name, or "label N". */
export function labelName(names: Map<number, string>, value: number): string {
  return names.get(value) ?? `label ${value}`;
}

/** " (label: count, ...)" of the training samples. */
function describeLabels(labels: Int32Array, names: Map<number, string>): string {
  const counts = new Map<number, number>();
  for (const l of labels) counts.set(l, (counts.get(l) ?? 0) + 1);
  return ` (${[...counts].sort((a, b) => a[0] - b[0]).map(([l, n]) => `${labelName(names, l)} ${n}`).join(', ')})`;
}
