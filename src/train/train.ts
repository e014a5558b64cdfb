/**
 * The fine-tuning loop, after MedSAM2's `finetune_sam2_img.py`: SAM2 on 2D slices with box
 * prompts, prompt encoder frozen, image encoder + mask decoder trained with Dice + BCE, AdamW.
 *
 *   build model -> load weights (checkpoint / resume / seeded init) -> data loaders
 *   for each step: grad_accum x (batch -> forward -> loss -> grads), clip, AdamW, schedule
 *                  log; validate every val_every; save every save_every (latest, step-N, best)
 *
 * SIGINT/SIGTERM finish the current step, save `latest` and return normally. A non-finite loss or
 * gradient stops the run before the update, so the last saved checkpoint stays the last good one.
 */
import * as tf from '@tensorflow/tfjs-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { selectBackend } from '../backend.js';
import { buildValSet, createTrainLoader, type TrainLoader } from '../data/loader.js';
import type { Batch } from '../data/types.js';
import { readStateDict } from '../io/checkpoint-file.js';
import { resolveModelChoice } from '../model/config.js';
import { SAM2Base } from '../model/sam2.js';
import { TfOps } from '../model/tf-ops.js';
import { fromTfParams, initParams, loadStateDict, paramCount, toTfParams, type StateDict } from '../model/weights.js';
import { findCheckpoint, loadCheckpoint, saveCheckpoint, stepName, type TrainState } from './checkpoint.js';
import { configToYaml, type TrainConfig } from './config.js';
import { diceScores, segmentationLoss } from './loss.js';
import { MetricsLog, renderOverlay } from './metrics-log.js';
import { AdamW, buildParamGroups, clipGradNorm, GradAccumulator } from './optimizer.js';
import { lrScale } from './schedule.js';

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
  /** validation Dice by step, in order */
  valDice: Array<{ step: number; dice: number }>;
  bestValDice: number | null;
  /** validation Dice of the trivial answer, an ellipse filling each prompt box */
  ellipseDice: number | null;
  /** stopped by a signal or stopAfterStep before max_steps */
  interrupted: boolean;
  skippedSamples: number;
}

export class NonFiniteLossError extends Error {}


/**
 * Dice of the trivial answer "an ellipse filling the prompt box" against each sample's ground
 * truth, at the low-res mask size: the baseline a trained model should beat.
 */
export function ellipseInBoxDice(b: Batch): number[] {
  const m = b.maskSize;
  const scale = b.imageSize / m;
  const out: number[] = [];
  for (let n = 0; n < b.batchSize; n++) {
    const [x0, y0, x1, y1] = b.boxes.subarray(n * 4, n * 4 + 4);
    const cx = (x0 + x1) / 2;
    const cy = (y0 + y1) / 2;
    const rx = Math.max((x1 - x0) / 2, 1e-6);
    const ry = Math.max((y1 - y0) / 2, 1e-6);
    let inter = 0;
    let pred = 0;
    let gt = 0;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < m; j++) {
        const inside = (((j + 0.5) * scale - cx) / rx) ** 2 + (((i + 0.5) * scale - cy) / ry) ** 2 <= 1;
        const g = b.masks[n * m * m + i * m + j] > 0.5;
        if (inside) pred++;
        if (g) gt++;
        if (inside && g) inter++;
      }
    }
    out.push(pred + gt === 0 ? 1 : (2 * inter) / (pred + gt));
  }
  return out;
}

/** Batch -> the three input tensors (images NHWC, boxes, masks as (B, m, m, 1)). */
function batchTensors(b: Batch): { images: tf.Tensor; boxes: tf.Tensor; masks: tf.Tensor } {
  return {
    images: tf.tensor4d(b.images, [b.batchSize, b.imageSize, b.imageSize, 3]),
    boxes: tf.tensor2d(b.boxes, [b.batchSize, 4]),
    masks: tf.tensor4d(b.masks, [b.batchSize, b.maskSize, b.maskSize, 1]),
  };
}

/** (B, 1, m, m) decoder logits as (B, m, m, 1); the same memory for one mask channel. */
function logitsNhwc(masks: tf.Tensor): tf.Tensor {
  const [b, c, h, w] = masks.shape;
  if (c !== 1) throw new Error(`expected one mask per prompt, got ${c}`);
  return tf.reshape(masks, [b, h, w, 1]);
}

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const { config, runDir } = opts;
  const t = config.train;
  await selectBackend(config.backend, { quiet: opts.quiet });
  mkdirSync(runDir, { recursive: true });
  const configYaml = configToYaml(config);
  writeFileSync(join(runDir, 'config.yaml'), configYaml);
  const say = (msg: string) => {
    if (!opts.quiet) console.log(msg);
  };

  // --- model and weights -------------------------------------------------------------------
  const modelConfig = resolveModelChoice(config.model);
  const model = new SAM2Base(modelConfig);
  const specs = model.paramSpecs();
  const resumeDir = opts.resume === 'auto' ? findCheckpoint(runDir) : opts.resume;
  if (opts.resume === 'auto' && !resumeDir) say(`no checkpoint in ${runDir}/checkpoints yet: starting from the beginning`);
  const resumed = resumeDir ? loadCheckpoint(resumeDir) : undefined;
  let weights: StateDict;
  if (resumed) {
    weights = loadStateDict(specs, resumed.model, { source: join(resumeDir!, 'model.safetensors') }).params;
    say(`resuming from ${resumeDir} at step ${resumed.state.step}`);
  } else if (config.model.checkpoint) {
    weights = loadStateDict(specs, readStateDict(config.model.checkpoint), { source: config.model.checkpoint }).params;
  } else {
    weights = initParams(specs, config.seed);
  }
  // the prompt encoder's random Fourier matrix is a buffer in PyTorch, never trained
  const isTrainable = (name: string) =>
    !name.endsWith('.positional_encoding_gaussian_matrix') && config.model.trainable.some((p) => name === p || name.startsWith(`${p}.`));
  const params = toTfParams(weights, { trainable: isTrainable });
  const trainable = new Map([...params].filter(([, v]) => v.trainable));
  if (trainable.size === 0) throw new Error(`model.trainable (${config.model.trainable.join(', ')}) matches no parameter`);
  const keyOfVar = new Map([...trainable].map(([k, v]) => [v.name, k]));
  const ops = new TfOps(params);
  say(
    `model: ${paramCount(specs).toLocaleString('en')} parameters, ${paramCount([...trainable.values()]).toLocaleString('en')} trained ` +
      `(${config.model.trainable.join(', ')}), image size ${modelConfig.image_size}`,
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

  // --- data ---------------------------------------------------------------------------------
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
  const loader: TrainLoader = createTrainLoader({
    files: d.train,
    imageSize: modelConfig.image_size,
    batchSize: t.batch_size,
    bboxShift: d.bbox_shift,
    seed: config.seed,
    augment,
    prefetch: d.prefetch,
    workers: d.workers,
    state: resumed?.state.loader,
  });
  const valSet = d.val
    ? await buildValSet({
        files: d.val,
        imageSize: modelConfig.image_size,
        maxSamples: d.val_samples > 0 ? d.val_samples : Number.MAX_SAFE_INTEGER,
        seed: config.seed,
        batchSize: t.batch_size,
      })
    : [];
  const valCount = valSet.reduce((n, b) => n + b.batchSize, 0);
  say(`data: ${loader.size} training samples per epoch${d.val ? `, ${valCount} validation samples` : ''}`);
  const ellipseDice = valCount > 0 ? valSet.flatMap(ellipseInBoxDice).reduce((a, v) => a + v, 0) / valCount : null;
  if (ellipseDice !== null) say(`validation baseline: an ellipse filling each box scores Dice ${ellipseDice.toFixed(4)}`);

  // --- state --------------------------------------------------------------------------------
  let step = resumed?.state.step ?? 0;
  let bestValDice = resumed?.state.bestValDice ?? null;
  let samplesSeen = resumed?.state.samplesSeen ?? 0;
  const result: TrainResult = { runDir, step, losses: [], valDice: [], bestValDice, ellipseDice, interrupted: false, skippedSamples: 0 };
  const log = new MetricsLog(runDir, { maxSteps: t.max_steps, startStep: step, progress: opts.progress, quiet: opts.quiet });

  let stopRequested = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopRequested) process.exit(130);
    stopRequested = true;
    log.message(`${sig}: finishing step ${step + 1}, then saving a checkpoint (again to quit at once)`);
  };
  if (opts.handleSignals ?? true) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }

  const save = async (names: string[]) => {
    const state: TrainState = {
      step,
      epoch: Number((loader.state() as { epoch?: number }).epoch ?? 0),
      loader: loader.state(),
      bestValDice,
      skippedSamples: loader.skipped(),
      samplesSeen,
    };
    saveCheckpoint(runDir, { model: await fromTfParams(params), optimizer: await optimizer.exportState(), state, configYaml }, names, t.keep_last);
  };

  /** Mean thresholded Dice over the validation set, and an overlay of its first sample. */
  const validate = async () => {
    let sum = 0;
    let overlay: ReturnType<typeof renderOverlay> | undefined;
    for (const [i, b] of valSet.entries()) {
      const x = batchTensors(b);
      const logits = tf.tidy(() => logitsNhwc(model.predictFromBoxes(ops, x.images, x.boxes).masks));
      sum += (await diceScores(logits, x.masks)).reduce((a, v) => a + v, 0);
      if (i === 0) {
        const m = b.maskSize;
        const pred = tf.tidy(() => tf.slice(logits, [0, 0, 0, 0], [1, m, m, 1]));
        overlay = renderOverlay({
          image: b.images.subarray(0, b.imageSize * b.imageSize * 3),
          imageSize: b.imageSize,
          gt: b.masks.subarray(0, m * m),
          pred: (await pred.data()) as Float32Array,
          maskSize: m,
          box: b.boxes.subarray(0, 4),
        });
        pred.dispose();
      }
      tf.dispose([logits, x.images, x.boxes, x.masks]);
    }
    return { dice: sum / valCount, overlay };
  };

  if (valSet.length > 0 && t.val_at_start && step === 0) {
    const v = await validate();
    result.valDice.push({ step, dice: v.dice });
    log.val(step, v.dice, v.overlay);
    log.message(`step 0: val Dice ${v.dice.toFixed(4)} (before training)`);
  }

  const trainVars = [...trainable.values()];
  const accumulator = new GradAccumulator();
  let lastTime = performance.now();
  try {
    while (step < t.max_steps) {
      const scale = lrScale(step, { lr: t.lr, minLr: t.min_lr, warmupSteps: t.warmup_steps, maxSteps: t.max_steps });
      let loss = 0;
      let dice = 0;
      let bce = 0;
      for (let micro = 0; micro < t.grad_accum; micro++) {
        const batch = await loader.next();
        const x = batchTensors(batch);
        let terms: tf.Scalar[] = [];
        const { value, grads } = tf.variableGrads(() => {
          const logits = logitsNhwc(model.predictFromBoxes(ops, x.images, x.boxes).masks);
          const l = segmentationLoss(logits, x.masks, t.dice_weight, t.bce_weight);
          terms = [tf.keep(l.dice), tf.keep(l.bce)];
          return l.loss;
        }, trainVars);
        const [lv, dv, bv] = (await Promise.all([value, ...terms].map((s) => s.data()))).map((d) => d[0]);
        tf.dispose([value, ...terms, x.images, x.boxes, x.masks]);
        accumulator.add(new Map(Object.entries(grads).map(([name, g]) => [keyOfVar.get(name)!, g])));
        loss += lv / t.grad_accum;
        dice += dv / t.grad_accum;
        bce += bv / t.grad_accum;
        samplesSeen += batch.batchSize;
      }
      const raw = accumulator.take();
      const { grads, norm } = await clipGradNorm(raw, t.grad_clip ?? undefined);
      if (!Number.isFinite(loss) || !Number.isFinite(norm)) {
        tf.dispose([...raw.values(), ...grads.values()]);
        throw new NonFiniteLossError(
          `step ${step + 1}: ${!Number.isFinite(loss) ? `loss is ${loss}` : `gradient norm is ${norm}`}; stopping without updating the weights. ` +
            `The last good checkpoint stays in ${join(runDir, 'checkpoints')}. Try a lower train.lr or train.grad_clip.`,
        );
      }
      optimizer.step(grads, scale);
      tf.dispose([...new Set([...raw.values(), ...grads.values()])]);
      step++;
      result.losses.push(loss);

      const now = performance.now();
      const imgPerSec = (t.batch_size * t.grad_accum * 1000) / (now - lastTime);
      lastTime = now;
      const logNow = step % t.log_every === 0 || step === t.max_steps;
      log.train(step, { loss, dice, bce, lr: t.lr * scale, gradNorm: norm, imgPerSec }, logNow);
      opts.onStep?.({ step, loss, numTensors: tf.memory().numTensors });

      const last = step === t.max_steps;
      const stopping = stopRequested || (opts.stopAfterStep !== undefined && step >= opts.stopAfterStep);
      const names: string[] = [];
      if (valSet.length > 0 && ((t.val_every > 0 && step % t.val_every === 0) || last)) {
        const v = await validate();
        result.valDice.push({ step, dice: v.dice });
        log.val(step, v.dice, v.overlay);
        const better = bestValDice === null || v.dice > bestValDice;
        if (better) {
          bestValDice = v.dice;
          names.push('best');
        }
        log.message(`step ${step}: val Dice ${v.dice.toFixed(4)}${better ? ' (best)' : ''}`);
        lastTime = performance.now();
      }
      if (t.save_every > 0 && step % t.save_every === 0) names.push(stepName(step));
      if (names.length > 0 || last || stopping) {
        names.push('latest');
        await save(names);
        lastTime = performance.now();
      }
      if (stopping && !last) {
        result.interrupted = true;
        log.message(`stopped at step ${step}; continue with --resume auto`);
        break;
      }
    }
  } catch (err) {
    // tfjs-backend-wasm aborts ("Aborted()", "memory access out of bounds") when its 32-bit heap runs out
    if (err instanceof WebAssembly.RuntimeError && tf.getBackend() === 'wasm') {
      throw new Error(
        `the wasm backend failed during step ${step + 1} (${err.message}): its 4 GiB heap is too small for image size ` +
          `${modelConfig.image_size} with batch ${t.batch_size}. ` +
          (t.batch_size > 1 ? 'Lower train.batch_size (raise train.grad_accum to keep the effective batch) or use' : 'Use') +
          ` backend cpu or tensorflow. The last checkpoint stays in ${join(runDir, 'checkpoints')}.`,
      );
    }
    throw err;
  } finally {
    if (opts.handleSignals ?? true) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    log.close();
    await loader.close();
    optimizer.dispose();
    tf.dispose([...params.values()]);
  }
  result.step = step;
  result.bestValDice = bestValDice;
  result.skippedSamples = loader.skipped();
  if (result.skippedSamples > 0) say(`${result.skippedSamples} bad sample(s) were skipped (see the warnings above)`);
  return result;
}
