/**
 * The fine-tuning loop, after MedSAM2's `finetune_sam2_img.py`: SAM2 on 2D slices with box
 * prompts, prompt encoder frozen, image encoder + mask decoder trained with Dice + BCE, AdamW.
 *
 *   setup.ts        build model -> load weights (checkpoint / resume / seeded init) -> data
 *   step.ts         grad_accum x (batch -> forward -> loss -> grads), clip, AdamW
 *   validate.ts     every val_every: mean Dice on the validation set
 *   run-progress.ts save latest / step-N / best; stop on a signal
 *
 * SIGINT/SIGTERM finish the current step, save `latest` and return normally. A non-finite loss or
 * gradient stops the run before the update, so the last saved checkpoint stays the last good one.
 */
import * as tf from '@tensorflow/tfjs-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { selectBackend } from '../backend.js';
import { meanEllipseDice } from '../eval/baseline.js';
import { configToYaml, type TrainConfig } from './config.js';
import { openEmbeddingCache } from './embedding-cache.js';
import { MetricsLog } from './metrics-log.js';
import { saveStepCheckpoints, watchStopSignals, type RunProgress } from './run-progress.js';
import { lrScale } from './schedule.js';
import { describeDropped, labelName, setupData, setupModel, type DataSetup, type DroppedSamples, type ModelSetup } from './setup.js';
import { clipTrainStep } from './clip-step.js';
import { explainStepFailure, trainStep, type StepStats } from './step.js';
import { validate } from './validate.js';

export { NonFiniteLossError } from './step.js';

export interface TrainOptions {
  config: TrainConfig;
  runDir: string;
  /** 'auto': continue from `<run-dir>/checkpoints/latest` when there is one; or a checkpoint directory */
  resume?: 'auto' | string;
  /** stop as if interrupted once this many steps are done (tests) */
  stopAfterStep?: number;
  /** catch SIGINT/SIGTERM (default true) */
  handleSignals?: boolean;
  /** console output: progress bar (default when a TTY), or none at all */
  progress?: boolean;
  quiet?: boolean;
  /** called after every optimizer step */
  onStep?: (info: { step: number; loss: number; numTensors: number }) => void;
}

export interface TrainResult {
  runDir: string;
  /** optimizer steps done */
  step: number;
  /** training loss of each step this call ran, in order */
  losses: number[];
  /** validation Dice by step, in order, overall and by label name */
  valDice: Array<{ step: number; dice: number; perLabel: Record<string, number> }>;
  bestValDice: number | null;
  /** validation Dice of the trivial answer, an ellipse filling each prompt box */
  ellipseDice: number | null;
  /** stopped by a signal or stopAfterStep before max_steps */
  interrupted: boolean;
  skippedSamples: number;
  /** every sample left out, by reason (skippedSamples is its trainSkipped) */
  dropped: DroppedSamples;
}

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const { config, runDir } = opts;
  const t = config.train;
  const say = (msg: string) => !opts.quiet && console.log(msg);
  await selectBackend(config.backend, { quiet: opts.quiet, threads: config.backend_threads ?? undefined });
  mkdirSync(runDir, { recursive: true });
  const configYaml = configToYaml(config);
  writeFileSync(join(runDir, 'config.yaml'), configYaml);
  const run = setupModel(config, runDir, opts.resume, say);
  run.embeddingCache = await openEmbeddingCache(config, run, runDir, say);
  const { loader, valSet, labelNames, dropped } = await setupData(config, run.modelConfig.image_size, runDir, run.resumed?.state.loader, say);
  const ellipseDice = meanEllipseDice(valSet);
  if (ellipseDice !== null) say(`validation baseline: an ellipse filling each box scores Dice ${ellipseDice.toFixed(4)}${config.data.val_native_resolution ? ' (at native resolution)' : ''}`);

  const p: RunProgress = { step: run.resumed?.state.step ?? 0, bestValDice: run.resumed?.state.bestValDice ?? null, samplesSeen: run.resumed?.state.samplesSeen ?? 0 };
  const result: TrainResult = { runDir, step: p.step, losses: [], valDice: [], bestValDice: p.bestValDice, ellipseDice, interrupted: false, skippedSamples: 0, dropped };
  const log = new MetricsLog(runDir, { maxSteps: t.max_steps, startStep: p.step, progress: opts.progress, quiet: opts.quiet });
  const stop = watchStopSignals(opts.handleSignals ?? true, (sig) => log.message(`${sig}: finishing step ${p.step + 1}, then saving a checkpoint (again to quit at once)`));
  /** validation at the current step; true when it is the best so far */
  const validateNow = async (note?: string) => {
    const v = await validate(run.model, run.ops, valSet, run.embeddingCache);
    const perLabel = Object.fromEntries([...v.perLabel].map(([l, s]) => [labelName(labelNames, l), s.dice]));
    result.valDice.push({ step: p.step, dice: v.dice, perLabel });
    log.val(p.step, v.dice, perLabel, v.overlay);
    const better = p.bestValDice === null || v.dice > p.bestValDice;
    if (better && !note) p.bestValDice = v.dice;
    const labels = v.perLabel.size > 1 ? `; ${[...v.perLabel].map(([l, s]) => `${labelName(labelNames, l)} ${s.dice.toFixed(4)} (${s.count})`).join(', ')}` : '';
    log.message(`step ${p.step}: val Dice ${v.dice.toFixed(4)}${note ?? (better ? ' (best)' : '')}${labels}`);
    return better && !note;
  };

  if (valSet.length > 0 && t.val_at_start && p.step === 0) await validateNow(' (before training)');
  let lastTime = performance.now();
  try {
    while (p.step < t.max_steps) {
      const scale = lrScale(p.step, { lr: t.lr, minLr: t.min_lr, warmupSteps: t.warmup_steps, maxSteps: t.max_steps });
      const s = await optimizerStep(run, loader, config, p.step, scale, runDir);
      p.step++;
      p.samplesSeen += s.samples;
      result.losses.push(s.loss);
      const now = performance.now();
      log.train(p.step, { loss: s.loss, terms: s.terms, lr: t.lr * scale, gradNorm: s.gradNorm, imgPerSec: (s.samples * 1000) / (now - lastTime) }, p.step % t.log_every === 0 || p.step === t.max_steps);
      opts.onStep?.({ step: p.step, loss: s.loss, numTensors: tf.memory().numTensors });
      const last = p.step === t.max_steps;
      const stopping = stop.requested() || (opts.stopAfterStep !== undefined && p.step >= opts.stopAfterStep);
      const better = valSet.length > 0 && ((t.val_every > 0 && p.step % t.val_every === 0) || last) && (await validateNow());
      await saveStepCheckpoints(run, loader, p, { better, last, stopping }, t, runDir, configYaml);
      lastTime = performance.now();
      if (stopping && !last) {
        result.interrupted = true;
        log.message(`stopped at step ${p.step}; continue with --resume auto`);
        break;
      }
    }
  } catch (err) {
    throw explainStepFailure(err, p.step, run.modelConfig.image_size, t, runDir);
  } finally {
    stop.dispose();
    log.close();
    await loader.close();
    run.optimizer.dispose();
    tf.dispose([...run.params.values()]);
  }
  dropped.trainSkipped = loader.skipped();
  Object.assign(result, { step: p.step, bestValDice: p.bestValDice, skippedSamples: dropped.trainSkipped });
  const left = describeDropped(dropped, run.modelConfig.image_size, config.data.val_native_resolution);
  if (left) say(`${left}${dropped.trainSkipped + dropped.valUnloadable > 0 ? ' (see the warnings above)' : ''}`);
  return result;
}

/** One optimizer step of the run's kind: clips of slices (train.clip_length > 1), or single slices with their prompt rounds. */
export function optimizerStep(run: ModelSetup, loader: DataSetup['loader'], config: TrainConfig, step: number, lrScale: number, runDir: string): Promise<StepStats> {
  if ('clipLength' in loader) return clipTrainStep(run, loader, config.train, step, lrScale, runDir);
  const corrections = { rounds: config.prompts.correction_rounds, probability: config.prompts.correction_prob, seed: String(config.seed) };
  return trainStep(run, loader, config.train, step, lrScale, runDir, corrections);
}
