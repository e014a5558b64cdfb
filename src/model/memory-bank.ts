/**
 * A frame's memory bank, after the bank assembly of the official
 * `_prepare_memory_conditioned_features`: the memories and object pointers a frame attends to
 * (chosen by memory-selection.ts), their temporal encodings, and the tokens memory attention
 * reads. The eager model, the exported memory-attention graph and its onnxruntime feeds all pack
 * a bank here.
 */
import type { Sam2Config } from './config.js';
import { linear, type Ops } from './ops.js';
import { sine1dPosition } from './position-encoding.js';
import { tileToBatch } from './sam2-utils.js';

/** A memory-encoder output: (B, S/16, S/16, mem_dim) features and their position encoding. */
export interface MemoryFeatures<T> {
  features: T;
  posEnc: T;
}

/**
 * A spatial memory in a frame's memory bank. `tPos` is the official `t_pos`: 0 for conditioning
 * frames, 1..num_maskmem-1 for previous frames (num_maskmem-1 the most recent); the memory's
 * position encoding gets `maskmem_tpos_enc[num_maskmem - tPos - 1]` added.
 */
export interface MemoryBankEntry<T> extends MemoryFeatures<T> {
  tPos: number;
}

/** An object pointer (B, C) and its signed temporal distance to the current frame. */
export interface ObjPtrEntry<T> {
  ptr: T;
  tDiff: number;
}

/** What a non-initial frame attends to, selected by the propagation loop. */
export interface MemoryContext<T> {
  /** conditioning-frame memories first, then previous frames in increasing t_pos (the official order) */
  memories: MemoryBankEntry<T>[];
  /** conditioning-frame pointers first, then previous frames nearest first */
  objPtrs: ObjPtrEntry<T>[];
  /** normaliser of the pointers' temporal encoding: min(num_frames, max_obj_ptrs_in_encoder) - 1 */
  tDiffMax: number;
}

/**
 * A memory bank as tensors, the input of `SAM2Base.attendToMemory` (F memories, P pointers;
 * h, w the current frame's grid, C the hidden and Cm the memory dim).
 */
export interface MemoryBankInputs<T> {
  /** (B, h, w, C) the current frame's top-level features */
  curr: T;
  /** (B or 1, h, w, C) their position encoding */
  currPos: T;
  spatial: {
    /** (B, F, h*w, Cm) the memories' features, one row of h*w tokens per memory */
    features: T;
    /** (B or 1, F, h*w, Cm) their position encodings, without the temporal embedding */
    posEnc: T;
    /** (F, num_maskmem) one-hot: memory f takes `maskmem_tpos_enc[num_maskmem - t_pos - 1]` */
    tposOneHot: T;
  };
  /** present only when use_obj_ptrs_in_encoder */
  objPtrs?: {
    /** (B, P, C) */
    ptrs: T;
    /** (P, 1) the pointers' normalized temporal distance tDiff / tDiffMax */
    tpos: T;
  };
}

/**
 * The host numbers of a bank: each memory's `maskmem_tpos_enc` row as a one-hot row of
 * `tposOneHot` (F, num_maskmem), and each pointer's normalized temporal distance `objPtrTpos` (P).
 */
export function memoryBankTemporal(memory: MemoryContext<unknown>, numMaskmem: number): { tposOneHot: Float32Array; objPtrTpos: Float32Array } {
  if (memory.memories.length === 0) throw new Error('memory bank: a non-initial frame needs at least one spatial memory');
  const tposOneHot = new Float32Array(memory.memories.length * numMaskmem);
  memory.memories.forEach((m, f) => {
    const row = numMaskmem - m.tPos - 1;
    if (row < 0 || row >= numMaskmem) throw new Error(`memory bank: t_pos ${m.tPos} outside 0..${numMaskmem - 1}`);
    tposOneHot[f * numMaskmem + row] = 1;
  });
  return { tposOneHot, objPtrTpos: Float32Array.from(memory.objPtrs, (o) => o.tDiff / memory.tDiffMax) };
}

/**
 * The tokens memory attention reads from a bank: spatial memories with their `maskmem_tpos_enc`
 * (picked by the one-hot rows, exactly), then object pointers split into C / Cm tokens each with
 * their projected 1-D sine temporal encoding. Returns (B, M, Cm) tokens, their positions and how
 * many trailing tokens are pointers.
 */
export function memoryBankTokens<T>(ops: Ops<T>, c: Sam2Config, bank: MemoryBankInputs<T>): { memory: T; memoryPos: T; numObjPtrTokens: number } {
  const C = c.image_encoder.neck.d_model;
  const memDim = c.memory_encoder.out_dim;
  const { curr, spatial, objPtrs } = bank;
  const [batch, h, w] = ops.shape(curr);
  const hw = h * w;
  const [fb, numMem, fhw, fc] = ops.shape(spatial.features);
  if (fb !== batch || fhw !== hw || fc !== memDim) {
    throw new Error(`memory bank: spatial memory features must be (${batch}, F, ${hw}, ${memDim}), got (${ops.shape(spatial.features).join(', ')})`);
  }
  const [tf0, tf1] = ops.shape(spatial.tposOneHot);
  if (tf0 !== numMem || tf1 !== c.num_maskmem) {
    throw new Error(`memory bank: tposOneHot must be (${numMem}, ${c.num_maskmem}), got (${ops.shape(spatial.tposOneHot).join(', ')})`);
  }
  const tposTable = ops.reshape(ops.param('maskmem_tpos_enc'), [c.num_maskmem, memDim]);
  const tpos = ops.reshape(ops.matMul(spatial.tposOneHot, tposTable), [-1, 1, memDim]); // (F, 1, Cm)
  const spatialPos = tileToBatch(ops, ops.add(spatial.posEnc, tpos), batch);
  const tokens = [ops.reshape(spatial.features, [-1, numMem * hw, memDim])];
  const tokenPos = [ops.reshape(spatialPos, [-1, numMem * hw, memDim])];
  let numObjPtrTokens = 0;
  if (objPtrs) {
    if (!c.use_obj_ptrs_in_encoder) throw new Error('memory bank: object pointers given but use_obj_ptrs_in_encoder is off');
    const [pb, p, pc] = ops.shape(objPtrs.ptrs);
    const [tp, t1] = ops.shape(objPtrs.tpos);
    if (pb !== batch || pc !== C || tp !== p || t1 !== 1) {
      throw new Error(`memory bank: object pointers must be (${batch}, P, ${C}) with tpos (P, 1), got (${ops.shape(objPtrs.ptrs).join(', ')}) and (${ops.shape(objPtrs.tpos).join(', ')})`);
    }
    let ptrPos: T; // (P, Cm)
    if (c.add_tpos_enc_to_obj_ptrs) {
      const pe = sine1dPosition(ops, objPtrs.tpos, c.proj_tpos_enc_in_obj_ptrs ? C : memDim);
      ptrPos = c.proj_tpos_enc_in_obj_ptrs ? linear(ops, pe, 'obj_ptr_tpos_proj') : pe;
    } else {
      ptrPos = ops.mul(ops.tile(objPtrs.tpos, [1, memDim]), 0); // zeros shaped by the (possibly dynamic) P
    }
    let ptrTokens = objPtrs.ptrs;
    if (memDim < C) {
      // each pointer becomes C / Cm tokens of Cm channels, pointer-major (the official split)
      const k = C / memDim;
      ptrTokens = ops.reshape(ptrTokens, [-1, p * k, memDim]);
      ptrPos = ops.reshape(ops.tile(ops.reshape(ptrPos, [p, 1, memDim]), [1, k, 1]), [p * k, memDim]);
    }
    numObjPtrTokens = ops.shape(ptrTokens)[1];
    tokens.push(ptrTokens);
    tokenPos.push(tileToBatch(ops, ops.reshape(ptrPos, [1, numObjPtrTokens, memDim]), batch));
  }
  return {
    memory: tokens.length === 1 ? tokens[0] : ops.concat(tokens, 1),
    memoryPos: tokenPos.length === 1 ? tokenPos[0] : ops.concat(tokenPos, 1),
    numObjPtrTokens,
  };
}
