/**
 * 3D inference: slice-by-slice propagation of one object through a volume, as the seed
 * pipeline (MedSAM2) runs the official `SAM2VideoPredictor` on CT/MR volumes:
 *
 *   add_new_mask / add_new_points_or_box on the key slice k
 *   propagate_in_video()               -> slices k, k+1, ..., D-1
 *   reset_state(); add the same prompt again
 *   propagate_in_video(reverse=True)   -> slices k, k-1, ..., 0
 *
 * with the predictor settings `binarize_mask_from_pts_for_mem_enc=True`, `fill_hole_area=0`,
 * `non_overlap_masks=False`, `clear_non_cond_mem_around_input=False`,
 * `add_all_frames_to_correct_as_cond=False`, one object, and every model setting from the config.
 *
 * Design: the *sequential control logic* — which frames are conditioning frames, which earlier
 * memories and object pointers a slice attends to, their temporal positions, the direction —
 * lives only in this loop and in memory-selection.ts. The numeric work is behind the small async
 * interface `Sam2FrameGraphs` (frame-graphs.ts), so the same loop drives the TensorFlow.js model
 * (tf-frame-graphs.ts) and exported ONNX graphs run by ONNX Runtime. Prompts are turned into
 * model inputs in slice-prompt.ts, results united in video-output.ts.
 *
 * Deviations from the official predictor that do not change results: the key slice's output
 * (and its memory) is computed once and reused by both directions (the official code recomputes
 * it identically after `reset_state`); image features are not cached across calls.
 */
import { IMAGENET_MEAN, IMAGENET_STD, type Sam2Config } from './config.js';
import type { HeadsResult, HostPrompt, Sam2FrameGraphs } from './frame-graphs.js';
import type { MemoryContext, MemoryFeatures } from './memory-bank.js';
import { memorySettings, selectMemory, type MemorySettings } from './memory-selection.js';
import { useMultimask, type FrameFeatures } from './sam2.js';
import { promptToModel, type SlicePrompt } from './slice-prompt.js';
import type { SliceResult } from './video-output.js';

/** The slices of a volume, as model inputs. */
export interface VolumeSource {
  numFrames: number;
  /** the slices' own resolution; outputs come back at it */
  height: number;
  width: number;
  /** slice i as an (S, S, 3) normalized, channels-last model input */
  image(i: number): Float32Array | Promise<Float32Array>;
}

export interface PropagationOptions {
  /** default ['forward', 'reverse'] (the seed's order) */
  directions?: Array<'forward' | 'reverse'>;
  /** at most this many slices per direction after the key slice (official max_frame_num_to_track) */
  maxFramesToTrack?: number;
  onSlice?: (r: SliceResult) => void | Promise<void>;
}

interface StoredOutput<H> {
  memory: MemoryFeatures<H>;
  objPtr: H;
}

/** A gray slice (S * S values in [0, 1]) -> (S, S, 3) normalized model input, as the seed prepares slices. */
export function grayToModelInput(gray: ArrayLike<number>): Float32Array {
  const n = gray.length;
  const out = new Float32Array(n * 3);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) out[i * 3 + c] = (gray[i] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
  }
  return out;
}

/**
 * Runs the seed's 3D inference over any `Sam2FrameGraphs` implementation: the key slice is
 * segmented from its prompt, encoded into memory, then tracked forward and in reverse, each
 * direction starting from a fresh state that holds only the key slice (the seed resets the
 * predictor between the two passes).
 */
export class VolumePropagator<H> {
  readonly settings: MemorySettings;

  constructor(readonly graphs: Sam2FrameGraphs<H>) {
    this.settings = memorySettings(graphs.config);
  }

  private get cfg(): Sam2Config {
    return this.graphs.config;
  }

  private releaseFrame(f: FrameFeatures<H>): void {
    this.graphs.release([f.visionFeats, f.visionPos, f.highRes[0], f.highRes[1]]);
  }

  private releaseStored(o: StoredOutput<H>): void {
    this.graphs.release([o.memory.features, o.memory.posEnc, o.objPtr]);
  }

  /**
   * One slice through the model, the official `track_step` with `run_mem_encoder`: a mask prompt
   * taken as the output (use_mask_input_as_output_without_sam), else the SAM heads on the
   * memory-conditioned features (`memory === null`: an initial conditioning slice); then the new
   * memory (binarized when `isMaskFromPts`) and the logits at the slice's resolution.
   */
  private async trackStep(
    volume: VolumeSource,
    frameIdx: number,
    step: { prompt: HostPrompt; memory: MemoryContext<H> | null; isMaskFromPts: boolean },
  ): Promise<{ stored: StoredOutput<H>; logits: Float32Array }> {
    const g = this.graphs;
    const frame = await g.encodeImage(await volume.image(frameIdx));
    let heads: HeadsResult<H>;
    if (step.prompt.mask && this.cfg.use_mask_input_as_output_without_sam) {
      heads = await g.maskAsOutput(frame, step.prompt.mask);
    } else {
      const pix = await g.conditionOnMemory(frame, step.memory);
      const numPoints = step.prompt.points ? step.prompt.points.labels.length : 0;
      heads = await g.samHeads(pix, frame, step.prompt, useMultimask(this.cfg, step.memory === null, numPoints));
      g.release([pix]);
    }
    const memory = await g.encodeMemory(frame, heads.lowResMasks, heads.objectScoreLogits, step.isMaskFromPts);
    const logits = await g.readMasks(heads.lowResMasks, [volume.height, volume.width]);
    g.release([heads.lowResMasks, heads.objectScoreLogits]);
    this.releaseFrame(frame);
    return { stored: { memory, objPtr: heads.objPtr }, logits };
  }

  /** The stored outputs slice `frameIdx` attends to (selectMemory), as a memory context. */
  private memoryFor(volume: VolumeSource, frameIdx: number, reverse: boolean, cond: Map<number, StoredOutput<H>>, nonCond: Map<number, StoredOutput<H>>): MemoryContext<H> {
    const sel = selectMemory({
      frameIdx,
      condFrames: [...cond.keys()],
      hasNonCond: (t) => nonCond.has(t),
      numFrames: volume.numFrames,
      reverse,
      settings: this.settings,
    });
    const get = (t: number, isCond: boolean) => {
      const o = (isCond ? cond : nonCond).get(t);
      if (!o) throw new Error(`internal: no stored output for slice ${t}`);
      return o;
    };
    return {
      memories: sel.memories.map((m) => ({ ...get(m.frameIdx, m.cond).memory, tPos: m.tPos })),
      objPtrs: sel.objPtrs.map((p) => ({ ptr: get(p.frameIdx, p.cond).objPtr, tDiff: p.tDiff })),
      tDiffMax: sel.tDiffMax,
    };
  }

  /** Whether a stored slice can still be selected by a later slice of this direction. */
  private stillNeeded(t: number, current: number): boolean {
    const s = this.settings;
    const memReach = (s.numMaskmem + 1) * s.memoryTemporalStrideForEval + 2;
    const ptrReach = s.useObjPtrsInEncoder ? s.maxObjPtrsInEncoder : 0;
    return Math.abs(current - t) < Math.max(memReach, ptrReach);
  }

  /**
   * Propagate the prompt through the volume. Returns the logits of every visited slice per
   * direction (the key slice appears in both, as in the seed). Slices are also reported to
   * `onSlice` as they finish.
   */
  async propagate(volume: VolumeSource, prompt: SlicePrompt, options: PropagationOptions = {}): Promise<SliceResult[]> {
    const { numFrames } = volume;
    const k = prompt.frameIdx;
    if (!(Number.isInteger(k) && k >= 0 && k < numFrames)) throw new Error(`prompt slice ${k} is outside 0..${numFrames - 1}`);
    const directions = options.directions ?? ['forward', 'reverse'];
    const maxTrack = options.maxFramesToTrack ?? numFrames;
    const results: SliceResult[] = [];
    const emit = async (r: SliceResult) => {
      results.push(r);
      await options.onSlice?.(r);
    };

    // the key slice from its prompt; its memory is encoded binarized, as propagate_in_video_preflight does
    const t0 = performance.now();
    const hostPrompt = promptToModel(prompt, volume, this.cfg.image_size);
    const key = { ...(await this.trackStep(volume, k, { prompt: hostPrompt, memory: null, isMaskFromPts: true })), ms: performance.now() - t0 };
    try {
      for (const direction of directions) {
        const reverse = direction === 'reverse';
        if (reverse && k === 0) continue; // the official reverse pass from slice 0 yields nothing
        await emit({ frameIdx: k, direction, logits: key.logits, ms: key.ms });
        const cond = new Map([[k, key.stored]]);
        const nonCond = new Map<number, StoredOutput<H>>();
        try {
          const end = reverse ? Math.max(k - maxTrack, 0) : Math.min(k + maxTrack, numFrames - 1);
          for (let f = reverse ? k - 1 : k + 1; reverse ? f >= end : f <= end; f += reverse ? -1 : 1) {
            const t0 = performance.now();
            const memory = this.memoryFor(volume, f, reverse, cond, nonCond);
            const out = await this.trackStep(volume, f, { prompt: {}, memory, isMaskFromPts: false });
            nonCond.set(f, out.stored);
            for (const [t, o] of nonCond) {
              if (!this.stillNeeded(t, f)) {
                this.releaseStored(o);
                nonCond.delete(t);
              }
            }
            await emit({ frameIdx: f, direction, logits: out.logits, ms: performance.now() - t0 });
          }
        } finally {
          for (const o of nonCond.values()) this.releaseStored(o);
        }
      }
    } finally {
      this.releaseStored(key.stored);
    }
    return results;
  }
}
