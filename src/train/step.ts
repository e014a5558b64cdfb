/**
 * One optimizer step: grad_accum micro-batches (batch -> [correction rounds planned without
 * gradient] -> forward over every prompt round -> loss -> gradients), gradient clipping, a stop
 * before the update on a non-finite loss or gradient, AdamW. Values are read back
 * asynchronously (`await t.data()`), never with a synchronous read.
 */
import * as tf from '@tensorflow/tfjs-core';
import { join } from 'node:path';
import seedrandom from 'seedrandom';
import type { TrainLoader } from '../data/loader.js';
import type { TrainConfig } from './config.js';
import { clipGradNorm, GradAccumulator } from './optimizer.js';
import { batchTensors, pointTensors, promptPoints } from './batch-tensors.js';
import { maskInputTensor, planCorrectionRounds, type PromptRound } from './corrections.js';
import { trainingObjective, type Objective } from './objective.js';
import { variableGrads } from '../model/gradients.js';
import type { ImageEmbeddings } from '../model/sam2.js';
import type { ModelSetup } from './setup.js';

export class NonFiniteLossError extends Error {}

/** Correction rounds (`prompts.correction_rounds`) for a micro-batch with `probability`, drawn from (seed, step, micro-batch). */
export interface Corrections {
  rounds: number;
  probability: number;
  seed: string;
}

const NO_CORRECTIONS: Corrections = { rounds: 0, probability: 0, seed: '' };

export interface StepStats {
  /** training loss and its named terms, averaged over the micro-batches */
  loss: number;
  terms: Record<string, number>;
  gradNorm: number;
  /** samples consumed */
  samples: number;
}

/** The step that takes `step` to `step + 1`, with the learning rate scaled by `lrScale`. */
export async function trainStep(
  run: ModelSetup,
  loader: TrainLoader,
  t: TrainConfig['train'],
  step: number,
  lrScale: number,
  runDir: string,
  corrections: Corrections = NO_CORRECTIONS,
): Promise<StepStats> {
  const { model, ops } = run;
  const accumulator = new GradAccumulator();
  const stats: StepStats = { loss: 0, terms: {}, gradNorm: 0, samples: 0 };
  for (let micro = 0; micro < t.grad_accum; micro++) {
    const batch = await loader.next();
    const x = batchTensors(batch);
    // a frozen encoder's outputs, from the embedding cache: then only the prompt encoder and decoder run
    const encoded = await run.embeddingCache?.features(batch);
    const embed = () => (encoded ? model.embeddingsFromFeatures(ops, encoded) : model.imageEmbeddings(ops, x.images));
    const correct = corrections.rounds > 0 && seedrandom(`${corrections.seed}/correct/${step}/${micro}`)() < corrections.probability;
    const rounds = correct
      ? await planCorrectionRounds(model, ops, x.images, promptPoints(batch), batch.fullMasks ?? missingFullMasks(), corrections.rounds, embed)
      : [{ points: promptPoints(batch) }];
    await accumulateMicroBatch(run, () => trainingObjective(forwardRounds(run, embed(), batch.batchSize, rounds), x.masks, t), accumulator, stats, t.grad_accum, step, micro);
    tf.dispose([x.images, x.boxes, x.masks, ...(encoded ?? [])]);
    stats.samples += batch.batchSize;
  }
  return applyGradients(run, accumulator, stats, t, step, lrScale, runDir);
}

/**
 * One micro-batch of an optimizer step: the gradients of `objective` (run under the tape) added to
 * `accumulator`, its loss and named terms averaged into `stats` over `gradAccum` micro-batches.
 * Adapter dropout is seeded by (step, micro-batch).
 */
export async function accumulateMicroBatch(
  run: ModelSetup,
  objective: () => Objective,
  accumulator: GradAccumulator,
  stats: StepStats,
  gradAccum: number,
  step: number,
  micro: number,
): Promise<void> {
  let terms: Record<string, tf.Scalar> = {};
  run.adapter?.dropout?.begin(step, micro);
  const { value, grads } = variableGrads(() => {
    const o = objective();
    terms = Object.fromEntries(Object.entries(o.terms).map(([k, v]) => [k, tf.keep(v)]));
    return o.loss;
  }, [...run.trainable.values()]);
  run.adapter?.dropout?.end();
  const names = Object.keys(terms);
  const [lv, ...tv] = await Promise.all([value, ...Object.values(terms)].map(async (s) => (await s.data())[0]));
  tf.dispose([value, ...Object.values(terms)]);
  accumulator.add(new Map(Object.entries(grads).map(([name, g]) => [run.keyOfVar.get(name)!, g])));
  stats.loss += lv / gradAccum;
  names.forEach((k, i) => (stats.terms[k] = (stats.terms[k] ?? 0) + tv[i] / gradAccum));
}

/**
 * The end of every optimizer step (slices or clips): the accumulated gradients clipped, a stop
 * before the update on a non-finite loss or gradient, AdamW. Returns `stats` with the gradient norm.
 */
export async function applyGradients(run: ModelSetup, accumulator: GradAccumulator, stats: StepStats, t: TrainConfig['train'], step: number, lrScale: number, runDir: string): Promise<StepStats> {
  const { optimizer } = run;
  const raw = accumulator.take();
  const { norm, scale } = await clipGradNorm(raw, t.grad_clip ?? undefined);
  if (!Number.isFinite(stats.loss) || !Number.isFinite(norm)) {
    tf.dispose([...raw.values()]);
    throw new NonFiniteLossError(
      `step ${step + 1}: ${!Number.isFinite(stats.loss) ? `loss is ${stats.loss}` : `gradient norm is ${norm}`}; stopping without updating the weights. ` +
        `The last good checkpoint stays in ${join(runDir, 'checkpoints')}. Try a lower train.lr or train.grad_clip.`,
    );
  }
  optimizer.step(raw, lrScale, scale);
  tf.dispose([...raw.values()]);
  stats.gradNorm = norm;
  return stats;
}

function missingFullMasks(): never {
  throw new Error('correction rounds need the full-resolution ground truth: create the loader with prompts beyond the box');
}

/** The decoder output of every prompt round, on one encoding of the batch's images. */
export function forwardRounds(run: Pick<ModelSetup, 'model' | 'ops'>, embeddings: ImageEmbeddings<tf.Tensor>, batch: number, rounds: PromptRound[]) {
  return rounds.map((r) => run.model.decodePrompts(run.ops, embeddings, pointTensors(r.points), r.maskInput && maskInputTensor(r.maskInput, batch)));
}

/**
 * tfjs-backend-wasm aborts ("Aborted()", "memory access out of bounds") when its 32-bit heap runs
 * out: that failure as a message saying what to change; any other error as it is.
 */
export function explainStepFailure(err: unknown, step: number, imageSize: number, t: TrainConfig['train'], runDir: string): unknown {
  if (!(err instanceof WebAssembly.RuntimeError && tf.getBackend() === 'wasm')) return err;
  const remedies = [
    ...(t.checkpoint_activations ? [] : ['set train.checkpoint_activations: true']),
    ...(t.batch_size > 1 ? ['lower train.batch_size (raise train.grad_accum to keep the effective batch)'] : []),
    'use backend cpu or tensorflow',
  ];
  return new Error(
    `the wasm backend failed during step ${step + 1} (${err.message}): its 4 GiB heap is too small for image size ` +
      `${imageSize} with batch ${t.batch_size}. To fix: ${remedies.join(', or ')} (medtune train --dry-run checks a config before training). ` +
      `The last checkpoint stays in ${join(runDir, 'checkpoints')}.`,
  );
}
