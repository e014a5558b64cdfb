/**
 * Which stored outputs a slice attends to: the frame selection of the official
 * `_prepare_memory_conditioned_features` (eval mode) and `select_closest_cond_frames`, on slice
 * indices. The propagation loop (video-predictor.ts) turns a selection into a `MemoryContext`.
 */
import type { Sam2Config } from './config.js';

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
