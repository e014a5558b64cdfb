/**
 * Training the memory path on clips (`train.clip_length` N > 1), as the official SAM2Train's
 * `forward_tracking` trains on video: the first slice of each clip is the (only) conditioning
 * slice, prompted with its box; every later slice is segmented from memory: memory attention over
 * the memories and object pointers that memory-selection.ts picks (the inference rules), the SAM
 * heads, and a new memory from the memory encoder on the output. Everything runs eagerly through
 * the model's own forward code under variableGrads (model/gradients.ts), so memory encoder, memory attention,
 * obj_ptr_proj, maskmem_tpos_enc, ... train with the rest (when `model.trainable` lists them).
 *
 * Loss: SAM2's loss on every slice, summed over the clip as the official trainer sums over frames;
 * on slices where the label is absent only its object-score term counts.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ClipBatch, ClipLoader } from '../data/clips.js';
import type { MemoryContext, MemoryFeatures } from '../model/memory-bank.js';
import { predictorStability } from '../model/mask-decoder.js';
import { memorySettings, selectMemory, type MemorySettings } from '../model/memory-selection.js';
import type { Ops } from '../model/ops.js';
import { boxPoints, useMultimask, type SAM2Base } from '../model/sam2.js';
import type { TrainConfig } from './config.js';
import type { Objective } from './objective.js';
import { GradAccumulator } from './optimizer.js';
import { sam2Loss } from './sam2-loss.js';
import type { ModelSetup } from './setup.js';
import { accumulateMicroBatch, applyGradients, type StepStats } from './step.js';

/** One slice's outputs along a clip. */
export interface ClipFrameOutput<T> {
  /** (B, M, S/4, S/4) every output mask (object-score gated); M = 3 under multimask output */
  masks: T;
  /** (B, M) their IoU estimates */
  ious: T;
  /** (B, 1) */
  objectScoreLogits: T;
  /** (B, 1, S, S) the chosen mask, upsampled: what propagation outputs for the slice */
  highResMasks: T;
}

/**
 * The official `self.training` switch: training takes every earlier slice as memory (stride 1),
 * pointers of all conditioning slices, and encodes the prompted slice's memory from sigmoid
 * probabilities (differentiable); eval mode does as inference does (VolumePropagator), binarizing it.
 */
export interface ClipMode {
  training: boolean;
}

function clipSettings(model: SAM2Base, mode: ClipMode): MemorySettings {
  const s = memorySettings(model.config);
  return mode.training ? { ...s, memoryTemporalStrideForEval: 1, onlyObjPtrsInThePastForEval: false } : s;
}

/**
 * A clip through the model, slice after slice, batch B (each clip its own object). `frames`: N
 * images (B, S, S, 3) in clip order; `boxes`: (B, 4) the prompt on frames[0], in input pixels.
 */
export function clipForward<T>(model: SAM2Base, ops: Ops<T>, frames: T[], boxes: T, mode: ClipMode = { training: true }): ClipFrameOutput<T>[] {
  const c = model.config;
  const settings = clipSettings(model, mode);
  const stored: Array<{ memory: MemoryFeatures<T>; objPtr: T }> = [];
  const outputs: ClipFrameOutput<T>[] = [];
  frames.forEach((image, f) => {
    const frame = model.encodeFrame(ops, image);
    let memory: MemoryContext<T> | null = null;
    if (f > 0) {
      const sel = selectMemory({ frameIdx: f, condFrames: [0], hasNonCond: (t) => t > 0 && t < f, numFrames: frames.length, reverse: false, settings });
      memory = {
        memories: sel.memories.map((m) => ({ ...stored[m.frameIdx].memory, tPos: m.tPos })),
        objPtrs: sel.objPtrs.map((p) => ({ ptr: stored[p.frameIdx].objPtr, tDiff: p.tDiff })),
        tDiffMax: sel.tDiffMax,
      };
    }
    const points = f === 0 ? boxPoints(ops, boxes) : undefined;
    const heads = model.forwardSamHeads(ops, {
      backboneFeatures: model.conditionOnMemory(ops, frame, memory),
      highRes: frame.highRes,
      points,
      multimaskOutput: useMultimask(c, f === 0, f === 0 ? 2 : 0),
      // as the official decoder: the single-mask stability fallback outside training only
      stability: mode.training ? undefined : predictorStability(c.sam_mask_decoder_extra_args),
    });
    const isMaskFromPts = f === 0 && !mode.training;
    stored.push({ memory: model.encodeNewMemory(ops, frame, heads.highResMasks, heads.objectScoreLogits, isMaskFromPts), objPtr: heads.objPtr });
    outputs.push({ masks: heads.lowResMultimasks, ious: heads.ious, objectScoreLogits: heads.objectScoreLogits, highResMasks: heads.highResMasks });
  });
  return outputs;
}

/** SAM2's loss summed over the clip's slices; `targets` (B, N, m, m) binary at the low-res mask size. */
export function clipObjective(outputs: ClipFrameOutput<tf.Tensor>[], targets: tf.Tensor): Objective {
  const [b, n, m] = targets.shape;
  if (n !== outputs.length) throw new Error(`clipObjective: ${outputs.length} outputs for clips of ${n} slices`);
  const [loss, focal, dice, iou, objectScore] = tf.tidy(() => {
    const perFrame = outputs.map((o, f) => {
      const target = tf.reshape(tf.slice(targets, [0, f, 0, 0], [b, 1, m, m]), [b, 1, m, m]);
      return sam2Loss([{ masks: o.masks, ious: o.ious, objectScores: o.objectScoreLogits }], target);
    });
    return (['loss', 'focal', 'dice', 'iou', 'objectScore'] as const).map((k) => tf.addN(perFrame.map((l) => l[k])) as tf.Scalar);
  });
  return { loss, terms: { focal, dice, iou, object_score: objectScore } };
}

/** A clip batch as tensors: N frames (B, S, S, 3), boxes (B, 4), targets (B, N, m, m). */
export function clipTensors(batch: ClipBatch): { frames: tf.Tensor[]; boxes: tf.Tensor; targets: tf.Tensor } {
  const { batchSize: b, clipLength: n, imageSize: s, maskSize: m } = batch;
  const images = tf.tensor5d(batch.images, [b, n, s, s, 3]);
  const frames = tf.unstack(images, 1);
  images.dispose();
  return { frames, boxes: tf.tensor2d(batch.boxes, [b, 4]), targets: tf.tensor4d(batch.masks, [b, n, m, m]) };
}

/** The optimizer step on clips: grad_accum clip batches -> clip forward -> loss -> gradients, then as step.ts. */
export async function clipTrainStep(run: ModelSetup, loader: ClipLoader, t: TrainConfig['train'], step: number, lrScale: number, runDir: string): Promise<StepStats> {
  const { model, ops } = run;
  const accumulator = new GradAccumulator();
  const stats: StepStats = { loss: 0, terms: {}, gradNorm: 0, samples: 0 };
  for (let micro = 0; micro < t.grad_accum; micro++) {
    const batch = await loader.next();
    const x = clipTensors(batch);
    await accumulateMicroBatch(run, () => clipObjective(clipForward(model, ops, x.frames, x.boxes), x.targets), accumulator, stats, t.grad_accum, step, micro);
    tf.dispose([...x.frames, x.boxes, x.targets]);
    stats.samples += batch.batchSize * batch.clipLength;
  }
  return applyGradients(run, accumulator, stats, t, step, lrScale, runDir);
}
