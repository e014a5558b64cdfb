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
 * lives only here (`selectMemory` and `VolumePropagator`). The numeric work is behind the small
 * async interface `Sam2FrameGraphs`, so the same loop drives the TensorFlow.js model
 * (`TfFrameGraphs`, tf-frame-graphs.ts) and exported ONNX graphs run by ONNX Runtime.
 *
 * Deviations from the official predictor that do not change results: the key slice's output
 * (and its memory) is computed once and reused by both directions (the official code recomputes
 * it identically after `reset_state`); image features are not cached across calls.
 */
import { IMAGENET_MEAN, IMAGENET_STD, type Sam2Config } from './config.js';
import { antialiasBilinearMatrix, type FrameFeatures, type MemoryContext, type MemoryFeatures } from './sam2.js';

export type { FrameFeatures, MemoryContext, MemoryFeatures } from './sam2.js';

// ───────────────────────────── the numeric interface ─────────────────────────────

/** What the SAM heads / mask-as-output step returns for one slice (batch 1, one object). */
export interface HeadsResult<H> {
  /** (1, 1, S/4, S/4) low-res mask logits (official `pred_masks`), already object-score gated */
  lowResMasks: H;
  /** (1, C) object pointer (official `obj_ptr`, after the no-object handling) */
  objPtr: H;
  /** (1, 1) object score logits */
  objectScoreLogits: H;
}

/** Prompts for the SAM heads, as host arrays. */
export interface HostPrompt {
  /** P points: coords (P * 2) x, y in model input pixels (0..S); labels (P) 0 neg, 1 pos, 2/3 box corners */
  points?: { coords: Float32Array; labels: Float32Array };
  /** (S * S) mask at model resolution, row-major (used as a dense prompt; resized to S/4 with antialias) */
  mask?: Float32Array;
}

/**
 * The numeric pieces of SAM2 that the propagation loop calls, one slice at a time, batch 1.
 *
 * `H` is an opaque tensor handle (a `tf.Tensor`, an `ort.Tensor`, ...). Every handle a method
 * returns belongs to the loop, which passes it back as an input any number of times and finally
 * hands it to `release` exactly once (FrameFeatures' four handles included). Methods must not
 * consume or free their inputs. Shapes below are channels-last like the TypeScript model:
 * S = config.image_size, h = S/16, C = hidden dim (neck d_model), Cm = memory dim (memory
 * encoder out_dim).
 *
 * Each method corresponds to a piece of the official `SAM2Base`, so each can be one exported graph:
 * | method             | official                                                         |
 * | encodeImage        | forward_image + _prepare_backbone_features (top level, no no_mem_embed) |
 * | conditionOnMemory  | the arithmetic of _prepare_memory_conditioned_features + memory_attention |
 * | samHeads           | _forward_sam_heads (prompt encoder, mask decoder, best-IoU pick, obj_ptr) |
 * | maskAsOutput       | _use_mask_as_output                                              |
 * | encodeMemory       | interpolate(pred_masks -> S) + _encode_new_memory, stored as bfloat16 |
 * | readMasks          | _get_orig_video_res_output (bilinear to the slice resolution)   |
 */
export interface Sam2FrameGraphs<H> {
  /** The model configuration (settings the loop needs: num_maskmem, obj-pointer flags, ...). */
  readonly config: Sam2Config;

  /**
   * Image encoder for one slice. `image`: (S, S, 3) row-major, channels-last, already
   * normalized (ImageNet mean/std). Returns visionFeats (1, h, h, C), visionPos (1, h, h, C),
   * highRes [(1, 4h, 4h, C/8), (1, 2h, 2h, C/4)] (after conv_s0 / conv_s1).
   */
  encodeImage(image: Float32Array): Promise<FrameFeatures<H>>;

  /**
   * The slice's features fused with its memory bank, (1, h, h, C) — `SAM2Base.conditionOnMemory`.
   * `memory === null`: an initial conditioning slice — `no_mem_embed` is added to visionFeats.
   * Otherwise memory attention over:
   *  - spatial memory tokens: for each `memory.memories[i]` in order, features (1, h, h, Cm)
   *    flattened row-major to h*h tokens, with position `posEnc + maskmem_tpos_enc[num_maskmem - tPos - 1]`;
   *  - then object-pointer tokens: each pointer (1, C) split into C/Cm tokens of Cm channels,
   *    with position `obj_ptr_tpos_proj(get_1d_sine_pe(tDiff / tDiffMax, C))` repeated per token
   *    (zeros without add_tpos_enc_to_obj_ptrs). These tokens are excluded from RoPE.
   * The query positions are visionPos; the memory-attention output is reshaped to (1, h, h, C).
   */
  conditionOnMemory(frame: FrameFeatures<H>, memory: MemoryContext<H> | null): Promise<H>;

  /**
   * `SAM2Base.forwardSamHeads` on `pixFeat` (1, h, h, C) with the slice's high-res features.
   * No points -> one padding point (label -1); no mask -> `no_mask_embed`. With `multimask` the
   * mask, and (use_multimask_token_for_obj_ptr) the pointer token, of the highest IoU estimate is
   * taken. Masks are gated to NO_OBJ_SCORE (-1024) where the object score is <= 0.
   */
  samHeads(pixFeat: H, frame: FrameFeatures<H>, prompt: HostPrompt, multimask: boolean): Promise<HeadsResult<H>>;

  /**
   * `SAM2Base.useMaskAsOutput`: the binary (S * S) mask becomes the output (logits +-10,
   * downsampled 4x with antialiased bilinear); the pointer comes from the SAM heads on the raw
   * visionFeats with the `mask_downsample`d mask as a dense prompt.
   */
  maskAsOutput(frame: FrameFeatures<H>, mask: Float32Array): Promise<HeadsResult<H>>;

  /**
   * A new memory from the slice's prediction: `lowResMasks` are upsampled to S x S (bilinear,
   * align_corners=False), binarized (> 0) when `isMaskFromPts` (and the config's
   * binarize_mask_from_pts_for_mem_enc) else sigmoid, scaled/biased, and fused with visionFeats
   * by the memory encoder; `no_obj_embed_spatial` is added when the object score is <= 0.
   * Features (1, h, h, Cm) must come back rounded to bfloat16 precision (round to nearest even),
   * as the official predictor stores them; posEnc (1, h, h, Cm) is the sine encoding.
   */
  encodeMemory(frame: FrameFeatures<H>, lowResMasks: H, objectScoreLogits: H, isMaskFromPts: boolean): Promise<MemoryFeatures<H>>;

  /** Mask logits resized (bilinear, align_corners=False, no antialias) to `size` = [rows, cols], as host data. */
  readMasks(lowResMasks: H, size: [number, number]): Promise<Float32Array>;

  /** Free handles the loop no longer needs. */
  release(handles: H[]): void;
}

// ───────────────────────────── memory selection (the control logic) ─────────────────────────────

/** The model settings that decide what a slice attends to (official SAM2Base attributes, eval mode). */
export interface MemorySettings {
  numMaskmem: number;
  memoryTemporalStrideForEval: number;
  maxCondFramesInAttn: number;
  useObjPtrsInEncoder: boolean;
  maxObjPtrsInEncoder: number;
  onlyObjPtrsInThePastForEval: boolean;
  useSignedTposEncToObjPtrs: boolean;
}

export function memorySettings(config: Sam2Config): MemorySettings {
  const extra = config as unknown as { max_cond_frames_in_attn?: number };
  return {
    numMaskmem: config.num_maskmem,
    memoryTemporalStrideForEval: config.memory_temporal_stride_for_eval,
    maxCondFramesInAttn: extra.max_cond_frames_in_attn ?? -1,
    useObjPtrsInEncoder: config.use_obj_ptrs_in_encoder,
    maxObjPtrsInEncoder: config.max_obj_ptrs_in_encoder,
    onlyObjPtrsInThePastForEval: config.only_obj_ptrs_in_the_past_for_eval,
    useSignedTposEncToObjPtrs: config.use_signed_tpos_enc_to_obj_ptrs,
  };
}

/** Which stored outputs a slice attends to, by slice index. */
export interface MemorySelection {
  /** conditioning memories (tPos 0) first, then earlier slices in increasing tPos */
  memories: Array<{ frameIdx: number; tPos: number; cond: boolean }>;
  objPtrs: Array<{ frameIdx: number; tDiff: number; cond: boolean }>;
  tDiffMax: number;
}

/** Official `select_closest_cond_frames`, on slice indices (insertion order kept). */
export function selectClosestCondFrames(frameIdx: number, condFrames: number[], maxCondFrameNum: number): { selected: number[]; unselected: number[] } {
  if (maxCondFrameNum === -1 || condFrames.length <= maxCondFrameNum) return { selected: [...condFrames], unselected: [] };
  if (maxCondFrameNum < 2) throw new Error('max_cond_frames_in_attn must allow 2+ conditioning frames');
  const selected: number[] = [];
  const before = condFrames.filter((t) => t < frameIdx);
  if (before.length) selected.push(Math.max(...before));
  const after = condFrames.filter((t) => t >= frameIdx);
  if (after.length) selected.push(Math.min(...after));
  const remain = condFrames
    .filter((t) => !selected.includes(t))
    .sort((a, b) => Math.abs(a - frameIdx) - Math.abs(b - frameIdx))
    .slice(0, maxCondFrameNum - selected.length);
  selected.push(...remain);
  return { selected, unselected: condFrames.filter((t) => !selected.includes(t)) };
}

/**
 * The frame-selection part of the official `_prepare_memory_conditioned_features` (eval mode) for
 * a non-initial slice: conditioning memories, the last num_maskmem-1 slices before it (in the
 * tracking direction, every `stride`-th slice but the nearest), and object pointers of the
 * conditioning slices (only past ones with only_obj_ptrs_in_the_past_for_eval) plus up to
 * max_obj_ptrs-1 previous slices, with signed or absolute temporal distances.
 */
export function selectMemory(args: {
  frameIdx: number;
  /** conditioning slices, in the order they were added */
  condFrames: number[];
  /** whether a slice has a stored non-conditioning output */
  hasNonCond: (t: number) => boolean;
  numFrames: number;
  reverse: boolean;
  settings: MemorySettings;
}): MemorySelection {
  const { frameIdx: f, condFrames, hasNonCond, numFrames, reverse, settings: s } = args;
  if (condFrames.length === 0) throw new Error('selectMemory: no conditioning slice');
  const { selected, unselected } = selectClosestCondFrames(f, condFrames, s.maxCondFramesInAttn);
  const memories: MemorySelection['memories'] = selected.map((t) => ({ frameIdx: t, tPos: 0, cond: true }));
  const lookup = (t: number): { frameIdx: number; cond: boolean } | undefined => {
    if (hasNonCond(t)) return { frameIdx: t, cond: false };
    if (unselected.includes(t)) return { frameIdx: t, cond: true };
    return undefined;
  };
  const r = s.memoryTemporalStrideForEval;
  for (let tPos = 1; tPos < s.numMaskmem; tPos++) {
    const tRel = s.numMaskmem - tPos;
    let prev: number;
    if (tRel === 1) prev = reverse ? f + 1 : f - 1;
    else if (!reverse) prev = Math.floor((f - 2) / r) * r - (tRel - 2) * r;
    else prev = -Math.floor(-(f + 2) / r) * r + (tRel - 2) * r;
    const hit = lookup(prev);
    if (hit) memories.push({ ...hit, tPos });
  }

  const objPtrs: MemorySelection['objPtrs'] = [];
  let tDiffMax = 0;
  if (s.useObjPtrsInEncoder) {
    const maxPtrs = Math.min(numFrames, s.maxObjPtrsInEncoder);
    tDiffMax = maxPtrs - 1;
    const sign = reverse ? -1 : 1;
    const ptrCond = s.onlyObjPtrsInThePastForEval ? selected.filter((t) => (reverse ? t >= f : t <= f)) : selected;
    for (const t of ptrCond) {
      objPtrs.push({ frameIdx: t, tDiff: s.useSignedTposEncToObjPtrs ? (f - t) * sign : Math.abs(f - t), cond: true });
    }
    for (let d = 1; d < maxPtrs; d++) {
      const t = reverse ? f + d : f - d;
      if (t < 0 || t >= numFrames) break;
      const hit = lookup(t);
      if (hit) objPtrs.push({ ...hit, tDiff: d });
    }
  }
  return { memories, objPtrs, tDiffMax };
}

// ───────────────────────────── the propagation loop ─────────────────────────────

/** The slices of a volume, as model inputs. */
export interface VolumeSource {
  numFrames: number;
  /** the slices' own resolution; outputs come back at it */
  height: number;
  width: number;
  /** slice i as an (S, S, 3) normalized, channels-last model input */
  image(i: number): Float32Array | Promise<Float32Array>;
}

/** A prompt on one slice: a binary mask (height * width), or a box / points in slice pixels. */
export interface SlicePrompt {
  frameIdx: number;
  /** (height * width) row-major, > 0 = object (official `add_new_mask`) */
  mask?: ArrayLike<number>;
  /** x0, y0, x1, y1 in slice pixels (official `add_new_points_or_box(box=...)`) */
  box?: [number, number, number, number];
  /** extra points in slice pixels, after the box: x, y, label (1 positive, 0 negative) */
  points?: Array<[number, number, number]>;
}

export interface SliceResult {
  frameIdx: number;
  direction: 'forward' | 'reverse';
  /** (height * width) mask logits; > 0 is the object */
  logits: Float32Array;
  /** milliseconds spent on this slice (encode + track + memory + read) */
  ms: number;
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

/** Host antialiased bilinear resize of one (h, w) map (PyTorch `interpolate(..., antialias=True)`). */
export function resizeAntialiasHost(src: ArrayLike<number>, h: number, w: number, oh: number, ow: number): Float32Array {
  const rx = antialiasBilinearMatrix(w, ow);
  const ry = antialiasBilinearMatrix(h, oh);
  const tmp = new Float32Array(h * ow);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < ow; x++) {
      let acc = 0;
      for (let j = 0; j < w; j++) {
        const wt = rx[x * w + j];
        if (wt !== 0) acc += wt * src[y * w + j];
      }
      tmp[y * ow + x] = acc;
    }
  }
  const out = new Float32Array(oh * ow);
  for (let y = 0; y < oh; y++) {
    for (let j = 0; j < h; j++) {
      const wt = ry[y * h + j];
      if (wt === 0) continue;
      for (let x = 0; x < ow; x++) out[y * ow + x] += wt * tmp[j * ow + x];
    }
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

  /** Official `_use_multimask`. */
  private useMultimask(isInitCondFrame: boolean, numPoints: number): boolean {
    const c = this.cfg;
    return c.multimask_output_in_sam && (isInitCondFrame || c.multimask_output_for_tracking) && c.multimask_min_pt_num <= numPoints && numPoints <= c.multimask_max_pt_num;
  }

  /** The prompt in model coordinates (official add_new_mask / add_new_points_or_box preprocessing). */
  private promptToModel(volume: VolumeSource, prompt: SlicePrompt): HostPrompt {
    const S = this.cfg.image_size;
    if (prompt.mask !== undefined) {
      if (prompt.box || prompt.points) throw new Error('a slice prompt is either a mask or a box/points, not both');
      const { height: h, width: w } = volume;
      if (prompt.mask.length !== h * w) throw new Error(`mask prompt has ${prompt.mask.length} values for a ${h}x${w} slice`);
      const binary = new Float32Array(h * w);
      for (let i = 0; i < binary.length; i++) binary[i] = prompt.mask[i] > 0 ? 1 : 0;
      if (h === S && w === S) return { mask: binary };
      const resized = resizeAntialiasHost(binary, h, w, S, S);
      for (let i = 0; i < resized.length; i++) resized[i] = resized[i] >= 0.5 ? 1 : 0;
      return { mask: resized };
    }
    const pts: Array<[number, number, number]> = [];
    if (prompt.box) {
      const [x0, y0, x1, y1] = prompt.box;
      pts.push([x0, y0, 2], [x1, y1, 3]);
    }
    pts.push(...(prompt.points ?? []));
    if (pts.length === 0) throw new Error('a slice prompt needs a mask, a box or points');
    const coords = new Float32Array(pts.length * 2);
    const labels = new Float32Array(pts.length);
    pts.forEach(([x, y, l], i) => {
      coords[2 * i] = Math.fround(Math.fround(x / volume.width) * S);
      coords[2 * i + 1] = Math.fround(Math.fround(y / volume.height) * S);
      labels[i] = l;
    });
    return { points: { coords, labels } };
  }

  private releaseFrame(f: FrameFeatures<H>): void {
    this.graphs.release([f.visionFeats, f.visionPos, f.highRes[0], f.highRes[1]]);
  }

  private releaseStored(o: StoredOutput<H>): void {
    this.graphs.release([o.memory.features, o.memory.posEnc, o.objPtr]);
  }

  /** Segment the key slice from its prompt and encode its memory (add_new_* + propagate_in_video_preflight). */
  private async conditioningSlice(volume: VolumeSource, prompt: SlicePrompt): Promise<{ stored: StoredOutput<H>; logits: Float32Array; ms: number }> {
    const t0 = performance.now();
    const g = this.graphs;
    const hostPrompt = this.promptToModel(volume, prompt);
    const frame = await g.encodeImage(await volume.image(prompt.frameIdx));
    let heads: HeadsResult<H>;
    if (hostPrompt.mask && this.cfg.use_mask_input_as_output_without_sam) {
      heads = await g.maskAsOutput(frame, hostPrompt.mask);
    } else {
      const pix = await g.conditionOnMemory(frame, null);
      const numPoints = hostPrompt.points ? hostPrompt.points.labels.length : 0;
      heads = await g.samHeads(pix, frame, hostPrompt, this.useMultimask(true, numPoints));
      g.release([pix]);
    }
    // preflight: the memory of an interacted slice is encoded from its low-res output, binarized
    const memory = await g.encodeMemory(frame, heads.lowResMasks, heads.objectScoreLogits, true);
    const logits = await g.readMasks(heads.lowResMasks, [volume.height, volume.width]);
    g.release([heads.lowResMasks, heads.objectScoreLogits]);
    this.releaseFrame(frame);
    return { stored: { memory, objPtr: heads.objPtr }, logits, ms: performance.now() - t0 };
  }

  /** Track one non-conditioning slice given the stored outputs (track_step with run_mem_encoder). */
  private async trackSlice(
    volume: VolumeSource,
    frameIdx: number,
    reverse: boolean,
    cond: Map<number, StoredOutput<H>>,
    nonCond: Map<number, StoredOutput<H>>,
  ): Promise<{ stored: StoredOutput<H>; logits: Float32Array }> {
    const g = this.graphs;
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
    const context: MemoryContext<H> = {
      memories: sel.memories.map((m) => ({ ...get(m.frameIdx, m.cond).memory, tPos: m.tPos })),
      objPtrs: sel.objPtrs.map((p) => ({ ptr: get(p.frameIdx, p.cond).objPtr, tDiff: p.tDiff })),
      tDiffMax: sel.tDiffMax,
    };
    const frame = await g.encodeImage(await volume.image(frameIdx));
    const pix = await g.conditionOnMemory(frame, context);
    const heads = await g.samHeads(pix, frame, {}, this.useMultimask(false, 0));
    g.release([pix]);
    const memory = await g.encodeMemory(frame, heads.lowResMasks, heads.objectScoreLogits, false);
    const logits = await g.readMasks(heads.lowResMasks, [volume.height, volume.width]);
    g.release([heads.lowResMasks, heads.objectScoreLogits]);
    this.releaseFrame(frame);
    return { stored: { memory, objPtr: heads.objPtr }, logits };
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

    const key = await this.conditioningSlice(volume, prompt);
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
            const out = await this.trackSlice(volume, f, reverse, cond, nonCond);
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

/**
 * The seed's volume result: the union of `logits > 0` over both directions, (D * height * width)
 * bytes (1 = object). The seed then keeps the largest 3D connected component (`largestComponent`).
 */
export function unionMasks(results: SliceResult[], numFrames: number, height: number, width: number): Uint8Array {
  const n = height * width;
  const seg = new Uint8Array(numFrames * n);
  for (const r of results) {
    for (let i = 0; i < n; i++) if (r.logits[i] > 0) seg[r.frameIdx * n + i] = 1;
  }
  return seg;
}

/** Keep the largest 26-connected component of a (D, H, W) binary volume (skimage `label` default for 3D). */
export function largestComponent(seg: Uint8Array, d: number, h: number, w: number): Uint8Array {
  const labels = new Int32Array(seg.length);
  let best = 0;
  let bestSize = 0;
  let next = 0;
  const stack: number[] = [];
  for (let start = 0; start < seg.length; start++) {
    if (!seg[start] || labels[start]) continue;
    next++;
    let size = 0;
    labels[start] = next;
    stack.push(start);
    while (stack.length) {
      const v = stack.pop()!;
      size++;
      const z = Math.floor(v / (h * w));
      const y = Math.floor((v % (h * w)) / w);
      const x = v % w;
      for (let dz = -1; dz <= 1; dz++) {
        const zz = z + dz;
        if (zz < 0 || zz >= d) continue;
        for (let dy = -1; dy <= 1; dy++) {
          const yy = y + dy;
          if (yy < 0 || yy >= h) continue;
          for (let dx = -1; dx <= 1; dx++) {
            const xx = x + dx;
            if (xx < 0 || xx >= w) continue;
            const u = (zz * h + yy) * w + xx;
            if (seg[u] && !labels[u]) {
              labels[u] = next;
              stack.push(u);
            }
          }
        }
      }
    }
    if (size > bestSize) {
      bestSize = size;
      best = next;
    }
  }
  const out = new Uint8Array(seg.length);
  if (best) for (let i = 0; i < seg.length; i++) out[i] = labels[i] === best ? 1 : 0;
  return out;
}

/**
 * Round float32 values to bfloat16 precision (round to nearest even, like torch's
 * `.to(torch.bfloat16)`): the official predictor stores memory features in bfloat16, and every
 * `Sam2FrameGraphs` implementation must do the same to match it.
 */
export function roundToBfloat16(values: Float32Array): Float32Array {
  const out = new Float32Array(values);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < u.length; i++) {
    const x = u[i];
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x007fffff) !== 0) {
      u[i] = (x | 0x00400000) & 0xffff0000; // NaN stays NaN
      continue;
    }
    u[i] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 0) & 0xffff0000;
  }
  return out;
}
