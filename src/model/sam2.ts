/**
 * SAM2Base: the whole model, composed as the official `sam2/modeling/sam2_base.py` does.
 * This file holds the composition, the top-level parameters and the image path used by
 * fine-tuning and the image predictor; the memory path (3D propagation) builds on it.
 */
import type { Sam2Config } from './config.js';
import { ImageEncoder } from './fpn-neck.js';
import { MaskDecoder, type MaskDecoderOutput } from './mask-decoder.js';
import { MemoryAttention } from './memory-attention.js';
import { MemoryEncoder } from './memory-encoder.js';
import { conv2d, conv2dSpecs, linear, linearSpecs, type Module, type Ops, type ParamSpec } from './ops.js';
import { PromptEncoder } from './prompt-encoder.js';
import { MLP } from './sam2-utils.js';

/** Stride of the image embedding the decoder works on. */
export const BACKBONE_STRIDE = 16;

export interface ImageEmbeddings<T> {
  /** (B, S/16, S/16, C) with `no_mem_embed` added, as the image predictor and fine-tuning use it */
  imageEmbed: T;
  /** [(B, S/4, S/4, C/8), (B, S/8, S/8, C/4)] after conv_s0 / conv_s1 */
  highRes: [T, T];
}

export class SAM2Base implements Module {
  readonly prefix = '';
  readonly imageEncoder: ImageEncoder;
  readonly promptEncoder: PromptEncoder;
  readonly maskDecoder: MaskDecoder;
  readonly memoryEncoder: MemoryEncoder;
  readonly memoryAttention: MemoryAttention;
  readonly hiddenDim: number;
  readonly memDim: number;

  constructor(readonly config: Sam2Config) {
    this.hiddenDim = config.image_encoder.neck.d_model;
    this.memDim = config.memory_encoder.out_dim;
    const embedSize = config.image_size / BACKBONE_STRIDE;
    this.imageEncoder = new ImageEncoder(config.image_encoder, 'image_encoder');
    this.promptEncoder = new PromptEncoder(
      {
        embed_dim: this.hiddenDim,
        image_embedding_size: [embedSize, embedSize],
        input_image_size: [config.image_size, config.image_size],
        mask_in_chans: 16,
      },
      'sam_prompt_encoder',
    );
    this.maskDecoder = new MaskDecoder(
      {
        num_multimask_outputs: 3,
        transformer_dim: this.hiddenDim,
        transformer: { depth: 2, embedding_dim: this.hiddenDim, mlp_dim: 2048, num_heads: 8 },
        iou_head_depth: 3,
        iou_head_hidden_dim: 256,
        use_high_res_features: config.use_high_res_features_in_sam,
        iou_prediction_use_sigmoid: config.iou_prediction_use_sigmoid,
        pred_obj_scores: config.pred_obj_scores,
        pred_obj_scores_mlp: config.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr: config.use_multimask_token_for_obj_ptr,
      },
      'sam_mask_decoder',
    );
    this.memoryEncoder = new MemoryEncoder(config.memory_encoder, 'memory_encoder');
    this.memoryAttention = new MemoryAttention(config.memory_attention, 'memory_attention');
  }

  /** Parameters that belong to SAM2Base itself rather than to a submodule. */
  private topLevelSpecs(): ParamSpec[] {
    const c = this.config;
    const d = this.hiddenDim;
    const m = this.memDim;
    const specs: ParamSpec[] = [
      { name: 'maskmem_tpos_enc', shape: [c.num_maskmem, 1, 1, m], init: { kind: 'truncNormal', std: 0.02 } },
      { name: 'no_mem_embed', shape: [1, 1, d], init: { kind: 'truncNormal', std: 0.02 } },
      { name: 'no_mem_pos_enc', shape: [1, 1, d], init: { kind: 'truncNormal', std: 0.02 } },
    ];
    if (c.pred_obj_scores && c.use_obj_ptrs_in_encoder) {
      specs.push({ name: 'no_obj_ptr', shape: [1, d], init: { kind: 'truncNormal', std: 0.02 } });
    }
    if (c.no_obj_embed_spatial) specs.push({ name: 'no_obj_embed_spatial', shape: [1, m], init: { kind: 'truncNormal', std: 0.02 } });
    specs.push(...conv2dSpecs('mask_downsample', 1, 1, 4));
    if (c.use_mlp_for_obj_ptr_proj) {
      for (let i = 0; i < 3; i++) specs.push(...linearSpecs(`obj_ptr_proj.layers.${i}`, d, d));
    } else {
      specs.push(...linearSpecs('obj_ptr_proj', d, d));
    }
    if (c.proj_tpos_enc_in_obj_ptrs) specs.push(...linearSpecs('obj_ptr_tpos_proj', d, m));
    return specs;
  }

  /** Every state-dict key of the official model, with shape and initialiser. */
  paramSpecs(): ParamSpec[] {
    return [
      ...this.topLevelSpecs(),
      ...this.imageEncoder.paramSpecs(),
      ...this.memoryAttention.paramSpecs(),
      ...this.memoryEncoder.paramSpecs(),
      ...this.promptEncoder.paramSpecs(),
      ...this.maskDecoder.paramSpecs(),
    ];
  }

  /**
   * `forward_image` + `_prepare_backbone_features` for a single frame, with `no_mem_embed`
   * added directly (directly_add_no_mem_embed), as the image predictor and MedSAM2 fine-tuning do.
   * `image`: (B, S, S, 3) normalized, channels-last.
   */
  imageEmbeddings<T>(ops: Ops<T>, image: T): ImageEmbeddings<T> {
    const enc = this.imageEncoder.forward(ops, image);
    const [s0, s1, top] = enc.backboneFpn;
    const highRes: [T, T] = this.config.use_high_res_features_in_sam
      ? [this.maskDecoder.convS0(ops, s0), this.maskDecoder.convS1(ops, s1)]
      : [s0, s1];
    const imageEmbed = ops.add(top, ops.reshape(ops.param('no_mem_embed'), [1, 1, 1, this.hiddenDim]));
    return { imageEmbed, highRes };
  }

  /**
   * The fine-tuning forward: image + box prompts -> low-res mask logits, as MedSAM2's
   * `finetune_sam2_img.py` runs it (box as two corner points with labels 2 and 3, no mask input).
   * `boxes`: (B, 4) x0, y0, x1, y1 in input pixels. Shapes are checked in JS; box values are
   * checked (inside [0, image_size]) only when they are concrete (an eager tensor), never on a
   * symbolic graph input.
   */
  predictFromBoxes<T>(ops: Ops<T>, image: T, boxes: T, multimaskOutput = false): MaskDecoderOutput<T> {
    const size = this.config.image_size;
    const imageShape = ops.shape(image);
    if (imageShape.length !== 4 || imageShape[1] !== size || imageShape[2] !== size || imageShape[3] !== 3) {
      throw new Error(`predictFromBoxes: image must be (B, ${size}, ${size}, 3), got (${imageShape.join(', ')})`);
    }
    const boxShape = ops.shape(boxes);
    if (boxShape.length !== 2 || boxShape[1] !== 4) throw new Error(`predictFromBoxes: boxes must be (B, 4), got (${boxShape.join(', ')})`);
    const batch = boxShape[0];
    if (batch !== imageShape[0]) throw new Error(`predictFromBoxes: ${batch} boxes for a batch of ${imageShape[0]} images`);
    const values = concreteValues(boxes);
    if (values) {
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        if (!(v >= 0 && v <= size)) {
          const b = Math.floor(i / 4);
          const box = Array.from({ length: 4 }, (_, j) => values[4 * b + j]);
          throw new Error(`predictFromBoxes: box ${b} [${box.join(', ')}] lies outside the ${size}x${size} image (x0, y0, x1, y1 in pixels)`);
        }
      }
    }
    const { imageEmbed, highRes } = this.imageEmbeddings(ops, image);
    const coords = ops.reshape(boxes, [-1, 2, 2]);
    const labels = ops.constant(Array.from({ length: batch }, () => [2, 3]).flat(), [batch, 2]);
    const { sparse, dense } = this.promptEncoder.forward(ops, { points: { coords, labels } });
    return this.maskDecoder.forward(ops, {
      imageEmbeddings: imageEmbed,
      imagePe: this.promptEncoder.densePe(ops),
      sparse,
      dense,
      multimaskOutput,
      highResFeatures: highRes,
    });
  }

  // ───────────────────────── Memory path (video tracking / 3D propagation) ─────────────────────────
  // The numeric pieces of the official SAM2Base memory path. Which memories and object pointers a
  // frame attends to (and their temporal positions) is decided by the caller — the propagation
  // loop in `video-predictor.ts` — and passed in as a `MemoryContext`.

  /**
   * `forward_image` + `_prepare_backbone_features` for tracking: the top-level features *without*
   * `no_mem_embed`, their position encoding, and the high-res maps. `image`: (B, S, S, 3).
   */
  encodeFrame<T>(ops: Ops<T>, image: T): FrameFeatures<T> {
    const enc = this.imageEncoder.forward(ops, image);
    const levels = enc.backboneFpn;
    const [s0, s1] = levels;
    const highRes: [T, T] = this.config.use_high_res_features_in_sam
      ? [this.maskDecoder.convS0(ops, s0), this.maskDecoder.convS1(ops, s1)]
      : [s0, s1];
    return { visionFeats: levels[levels.length - 1], visionPos: enc.visionPosEnc[enc.visionPosEnc.length - 1], highRes };
  }

  /**
   * The arithmetic of `_prepare_memory_conditioned_features`: the current frame's top-level
   * features fused with the given memory bank through memory attention, (B, h, w, C).
   * `memory === null` marks an initial conditioning frame (no memory): `no_mem_embed` is added
   * directly (directly_add_no_mem_embed) or attended to as a single dummy memory token.
   * A non-initial frame's bank is turned into tensors here and fused by `attendToMemory`.
   */
  conditionOnMemory<T>(ops: Ops<T>, frame: FrameFeatures<T>, memory: MemoryContext<T> | null): T {
    const c = this.config;
    const C = this.hiddenDim;
    const memDim = this.memDim;
    const [batch, h, w] = ops.shape(frame.visionFeats);
    if (c.num_maskmem === 0) return frame.visionFeats;
    if (memory === null) {
      if (c.directly_add_no_mem_embed) return ops.add(frame.visionFeats, ops.reshape(ops.param('no_mem_embed'), [1, 1, 1, C]));
      if (C !== memDim) throw new Error('conditionOnMemory: a no-memory token needs hidden_dim == mem_dim');
      const out = this.memoryAttention.forward(ops, {
        curr: ops.reshape(frame.visionFeats, [-1, h * w, C]),
        currPos: ops.reshape(tileToBatch(ops, frame.visionPos, batch), [-1, h * w, C]),
        memory: ops.tile(ops.reshape(ops.param('no_mem_embed'), [1, 1, C]), [batch, 1, 1]),
        memoryPos: ops.tile(ops.reshape(ops.param('no_mem_pos_enc'), [1, 1, C]), [batch, 1, 1]),
        numObjPtrTokens: 0,
      });
      return ops.reshape(out, [-1, h, w, C]);
    }
    const numMem = memory.memories.length;
    if (numMem === 0) throw new Error('conditionOnMemory: a non-initial frame needs at least one spatial memory');
    const tposOneHot = new Float32Array(numMem * c.num_maskmem);
    memory.memories.forEach((m, f) => {
      const [mb, mh, mw] = ops.shape(m.features);
      if (mb !== batch || mh !== h || mw !== w) {
        throw new Error(`conditionOnMemory: memory ${f} is (${ops.shape(m.features).join(', ')}), the frame needs (${batch}, ${h}, ${w}, ${memDim})`);
      }
      const row = c.num_maskmem - m.tPos - 1;
      if (row < 0 || row >= c.num_maskmem) throw new Error(`conditionOnMemory: t_pos ${m.tPos} outside 0..${c.num_maskmem - 1}`);
      tposOneHot[f * c.num_maskmem + row] = 1;
    });
    const perMemory = (x: T) => ops.reshape(x, [-1, 1, h * w, memDim]);
    const spatial = {
      features: ops.concat(memory.memories.map((m) => perMemory(m.features)), 1),
      posEnc: ops.concat(memory.memories.map((m) => perMemory(m.posEnc)), 1),
      tposOneHot: ops.constant(tposOneHot, [numMem, c.num_maskmem]),
    };
    const ptrs = memory.objPtrs;
    const objPtrs =
      c.use_obj_ptrs_in_encoder && ptrs.length > 0
        ? {
            ptrs: ops.concat(ptrs.map((o) => ops.reshape(o.ptr, [-1, 1, C])), 1),
            tpos: ops.constant(Float32Array.from(ptrs.map((o) => o.tDiff / memory.tDiffMax)), [ptrs.length, 1]),
          }
        : undefined;
    return this.attendToMemory(ops, { curr: frame.visionFeats, currPos: frame.visionPos, spatial, objPtrs });
  }

  /**
   * Memory attention of the current frame over a memory bank given as tensors, (B, h, w, C): the
   * bank assembly of `_prepare_memory_conditioned_features` (spatial memories with their
   * `maskmem_tpos_enc`, object pointers with their projected 1-D sine temporal encoding, split
   * into C / Cm tokens each) followed by `memory_attention`. Both the eager propagation
   * (`conditionOnMemory`) and the exported memory-attention graph run this; see `MemoryBankInputs`.
   */
  attendToMemory<T>(ops: Ops<T>, bank: MemoryBankInputs<T>): T {
    const c = this.config;
    const C = this.hiddenDim;
    const memDim = this.memDim;
    const { curr, currPos, spatial, objPtrs } = bank;
    const [batch, h, w, ch] = ops.shape(curr);
    const hw = h * w;
    if (ch !== C) throw new Error(`attendToMemory: current features must have ${C} channels, got (${ops.shape(curr).join(', ')})`);
    const [fb, numMem, fhw, fc] = ops.shape(spatial.features);
    if (fb !== batch || fhw !== hw || fc !== memDim) {
      throw new Error(`attendToMemory: spatial memory features must be (${batch}, F, ${hw}, ${memDim}), got (${ops.shape(spatial.features).join(', ')})`);
    }
    const [tf0, tf1] = ops.shape(spatial.tposOneHot);
    if (tf0 !== numMem || tf1 !== c.num_maskmem) {
      throw new Error(`attendToMemory: tposOneHot must be (${numMem}, ${c.num_maskmem}), got (${ops.shape(spatial.tposOneHot).join(', ')})`);
    }
    // spatial memories: pos + maskmem_tpos_enc[num_maskmem - tPos - 1], picked by the one-hot rows (exact)
    const tposTable = ops.reshape(ops.param('maskmem_tpos_enc'), [c.num_maskmem, memDim]);
    const tpos = ops.reshape(ops.matMul(spatial.tposOneHot, tposTable), [-1, 1, memDim]); // (F, 1, Cm)
    const spatialPos = tileToBatch(ops, ops.add(spatial.posEnc, tpos), batch);
    const tokens = [ops.reshape(spatial.features, [-1, numMem * hw, memDim])];
    const tokenPos = [ops.reshape(spatialPos, [-1, numMem * hw, memDim])];
    let numObjPtrTokens = 0;
    if (objPtrs) {
      if (!c.use_obj_ptrs_in_encoder) throw new Error('attendToMemory: object pointers given but use_obj_ptrs_in_encoder is off');
      const [pb, p, pc] = ops.shape(objPtrs.ptrs);
      const [tp, t1] = ops.shape(objPtrs.tpos);
      if (pb !== batch || pc !== C || tp !== p || t1 !== 1) {
        throw new Error(`attendToMemory: object pointers must be (${batch}, P, ${C}) with tpos (P, 1), got (${ops.shape(objPtrs.ptrs).join(', ')}) and (${ops.shape(objPtrs.tpos).join(', ')})`);
      }
      let ptrPos: T; // (P, Cm)
      if (c.add_tpos_enc_to_obj_ptrs) {
        const tposDim = c.proj_tpos_enc_in_obj_ptrs ? C : memDim;
        const pe = sine1dPosition(ops, objPtrs.tpos, tposDim);
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
    const out = this.memoryAttention.forward(ops, {
      curr: ops.reshape(curr, [-1, hw, C]),
      currPos: ops.reshape(tileToBatch(ops, currPos, batch), [-1, hw, C]),
      memory: tokens.length === 1 ? tokens[0] : ops.concat(tokens, 1),
      memoryPos: tokenPos.length === 1 ? tokenPos[0] : ops.concat(tokenPos, 1),
      numObjPtrTokens,
    });
    return ops.reshape(out, [-1, h, w, C]);
  }

  /**
   * `_forward_sam_heads`: prompt encoder + mask decoder on (memory-conditioned) features, the
   * best-IoU choice under multimask output, object-score gating of the masks and the object
   * pointer (obj_ptr_proj, no_obj_ptr, fixed_no_obj_ptr / soft_no_obj_ptr).
   * - `backboneFeatures`: (B, h, w, C);
   * - `points`: coords (B, P, 2) in input pixels and labels (B, P); absent: one padding point;
   * - `maskInputs`: (B, 1, H, W) or (B, H, W, 1) logits/probabilities; resized to the prompt
   *   encoder's mask input size with antialiased bilinear when it differs.
   * The official high-res *multi*-mask output is not computed (nothing in tracking reads it).
   */
  forwardSamHeads<T>(
    ops: Ops<T>,
    args: { backboneFeatures: T; highRes?: [T, T]; points?: PointInputs<T>; maskInputs?: T; multimaskOutput: boolean },
  ): SamHeadsOutput<T> {
    const c = this.config;
    const C = this.hiddenDim;
    const { backboneFeatures, highRes, multimaskOutput } = args;
    const [b, h, w, ch] = ops.shape(backboneFeatures);
    if (ch !== C || h !== c.image_size / BACKBONE_STRIDE || w !== h) {
      throw new Error(`forwardSamHeads: backbone features must be (B, ${c.image_size / BACKBONE_STRIDE}, ${c.image_size / BACKBONE_STRIDE}, ${C}), got (${[b, h, w, ch].join(', ')})`);
    }
    const points = args.points ?? {
      coords: ops.constant(new Float32Array(b * 2), [b, 1, 2]),
      labels: ops.constant(new Float32Array(b).fill(-1), [b, 1]),
    };
    let masks: T | undefined;
    if (args.maskInputs !== undefined) {
      const [mh, mw] = this.promptEncoder.maskInputSize;
      const m = toMaskNhwc(ops, args.maskInputs);
      const [, ih, iw] = ops.shape(m);
      masks = ih === mh && iw === mw ? m : resizeBilinearAntialias(ops, m, [mh, mw]);
    }
    const { sparse, dense } = this.promptEncoder.forward(ops, { points, masks });
    const dec = this.maskDecoder.forward(ops, {
      imageEmbeddings: backboneFeatures,
      imagePe: this.promptEncoder.densePe(ops),
      sparse,
      dense,
      multimaskOutput,
      highResFeatures: c.use_high_res_features_in_sam ? highRes : undefined,
    });
    let lowResMultimasks = dec.masks; // (B, M, 4h, 4w)
    const objectScoreLogits = dec.objectScoreLogits; // (B, 1)
    const appearing = c.pred_obj_scores ? greaterThanZero(ops, objectScoreLogits) : undefined; // (B, 1)
    if (appearing) {
      // torch.where(is_obj_appearing, masks, NO_OBJ_SCORE), exact for finite values
      const a = ops.reshape(appearing, [-1, 1, 1, 1]);
      lowResMultimasks = ops.add(ops.mul(lowResMultimasks, a), ops.mul(oneMinus(ops, a), NO_OBJ_SCORE));
    }
    const [, numMasks, lh, lw] = ops.shape(lowResMultimasks);
    let lowResMasks: T;
    let token: T;
    const tokens = dec.samTokensOut; // (B, M', C)
    const numTokens = ops.shape(tokens)[1];
    if (multimaskOutput && numMasks > 1) {
      const sel = argmaxOneHot(ops, dec.iouPred); // (B, M), first maximum like torch.argmax
      lowResMasks = ops.sum(ops.mul(lowResMultimasks, ops.reshape(sel, [-1, numMasks, 1, 1])), [1], true);
      token = numTokens > 1 ? ops.sum(ops.mul(tokens, ops.reshape(sel, [-1, numMasks, 1])), [1]) : ops.reshape(ops.slice(tokens, [0, 0, 0], [-1, 1, C]), [-1, C]);
    } else {
      lowResMasks = ops.slice(lowResMultimasks, [0, 0, 0, 0], [-1, 1, lh, lw]);
      token = ops.reshape(ops.slice(tokens, [0, 0, 0], [-1, 1, C]), [-1, C]);
    }
    const highResMasks = upsampleMasks(ops, lowResMasks, [c.image_size, c.image_size]);

    let objPtr: T;
    if (!c.use_obj_ptrs_in_encoder) {
      objPtr = token; // official obj_ptr_proj is the identity then
    } else if (c.use_mlp_for_obj_ptr_proj) {
      objPtr = new MLP('obj_ptr_proj', C, C, C, 3).forward(ops, token);
    } else {
      objPtr = linear(ops, token, 'obj_ptr_proj');
    }
    if (c.pred_obj_scores && appearing) {
      const lambda = c.soft_no_obj_ptr ? ops.sigmoid(objectScoreLogits) : appearing; // (B, 1)
      objPtr = this.mixNoObjPtr(ops, objPtr, lambda);
    }
    return { lowResMultimasks, ious: dec.iouPred, lowResMasks, highResMasks, objPtr, objectScoreLogits };
  }

  /** fixed_no_obj_ptr scaling and the no_obj_ptr mix-in, lambda (B, 1) */
  private mixNoObjPtr<T>(ops: Ops<T>, objPtr: T, lambda: T): T {
    if (!this.config.use_obj_ptrs_in_encoder) return objPtr; // the official model has no no_obj_ptr then
    if (this.config.fixed_no_obj_ptr) objPtr = ops.mul(lambda, objPtr);
    return ops.add(objPtr, ops.mul(oneMinus(ops, lambda), ops.param('no_obj_ptr')));
  }

  /**
   * `_use_mask_as_output`: a mask prompt taken directly as the output (logits +-10), with the
   * object pointer from the SAM heads fed the `mask_downsample`d mask. `maskInputs`: (B, 1, S, S)
   * or (B, S, S, 1), binary; `backboneFeatures` are the raw top-level features (no memory).
   */
  useMaskAsOutput<T>(ops: Ops<T>, backboneFeatures: T, highRes: [T, T] | undefined, maskInputs: T): SamHeadsOutput<T> {
    const c = this.config;
    const outScale = 20;
    const outBias = -10;
    const mask = toMaskNhwc(ops, maskInputs); // (B, S, S, 1)
    const [b, hh, ww] = ops.shape(mask);
    const highResNhwc = ops.add(ops.mul(mask, outScale), outBias);
    const lowResNhwc = resizeBilinearAntialias(ops, highResNhwc, [Math.floor(hh / 4), Math.floor(ww / 4)]);
    const highResMasks = ops.reshape(highResNhwc, [-1, 1, hh, ww]);
    const lowResMasks = ops.reshape(lowResNhwc, [-1, 1, Math.floor(hh / 4), Math.floor(ww / 4)]);
    const ious = ops.constant(new Float32Array(b).fill(1), [b, 1]);
    let objPtr: T;
    if (!c.use_obj_ptrs_in_encoder) {
      objPtr = ops.constant(new Float32Array(b * this.hiddenDim), [b, this.hiddenDim]);
    } else {
      const down = conv2d(ops, mask, 'mask_downsample', { stride: 4 });
      objPtr = this.forwardSamHeads(ops, { backboneFeatures, highRes, maskInputs: down, multimaskOutput: false }).objPtr;
    }
    // any(mask > 0) per sample decides whether the object appears
    const anyPositive = greaterThanZero(ops, ops.sum(greaterThanZero(ops, ops.reshape(mask, [-1, hh * ww])), [1], true)); // (B, 1)
    const objectScoreLogits = ops.add(ops.mul(anyPositive, outScale), outBias);
    if (c.pred_obj_scores) objPtr = this.mixNoObjPtr(ops, objPtr, anyPositive);
    return { lowResMultimasks: lowResMasks, ious, lowResMasks, highResMasks, objPtr, objectScoreLogits };
  }

  /**
   * `_encode_new_memory`: the frame's top-level features fused with its predicted mask.
   * `highResMasks`: (B, 1, S, S) logits; with `isMaskFromPts` and binarize_mask_from_pts_for_mem_enc
   * they are binarized (> 0), else passed through a sigmoid; then scaled and biased for the
   * memory encoder. Frames predicted to have no object get `no_obj_embed_spatial` added.
   */
  encodeNewMemory<T>(ops: Ops<T>, frame: FrameFeatures<T>, highResMasks: T, objectScoreLogits: T, isMaskFromPts: boolean): MemoryFeatures<T> {
    const c = this.config;
    const masks = toMaskNhwc(ops, highResMasks);
    let m = c.binarize_mask_from_pts_for_mem_enc && isMaskFromPts ? greaterThanZero(ops, masks) : ops.sigmoid(masks);
    if (c.sigmoid_scale_for_mem_enc !== 1) m = ops.mul(m, c.sigmoid_scale_for_mem_enc);
    if (c.sigmoid_bias_for_mem_enc !== 0) m = ops.add(m, c.sigmoid_bias_for_mem_enc);
    const out = this.memoryEncoder.forward(ops, frame.visionFeats, m, true);
    let features = out.visionFeatures;
    if (c.no_obj_embed_spatial) {
      const absent = oneMinus(ops, greaterThanZero(ops, objectScoreLogits)); // (B, 1)
      const embed = ops.reshape(ops.param('no_obj_embed_spatial'), [1, 1, 1, this.memDim]);
      features = ops.add(features, ops.mul(ops.reshape(absent, [-1, 1, 1, 1]), embed));
    }
    return { features, posEnc: out.visionPosEnc };
  }

  /** `_use_multimask`: whether the SAM heads give 3 masks for this frame. */
  useMultimask(isInitCondFrame: boolean, numPoints: number): boolean {
    const c = this.config;
    return (
      c.multimask_output_in_sam &&
      (isInitCondFrame || c.multimask_output_for_tracking) &&
      c.multimask_min_pt_num <= numPoints &&
      numPoints <= c.multimask_max_pt_num
    );
  }

  /**
   * `track_step` for one frame, given the memory the caller selected (`memory` is ignored on
   * initial conditioning frames). A mask prompt is used directly as the output when
   * use_mask_input_as_output_without_sam is set; otherwise the (memory-conditioned) features go
   * through the SAM heads with the prompts. With `runMemEncoder` the prediction is also encoded
   * into a new memory (from `highResMasks`, binarized when the frame had point prompts).
   */
  trackStep<T>(
    ops: Ops<T>,
    args: {
      frame: FrameFeatures<T>;
      isInitCondFrame: boolean;
      points?: PointInputs<T>;
      maskInputs?: T;
      memory: MemoryContext<T> | null;
      runMemEncoder: boolean;
    },
  ): TrackStepOutput<T> {
    const { frame, isInitCondFrame, points, maskInputs } = args;
    let heads: SamHeadsOutput<T>;
    if (maskInputs !== undefined && this.config.use_mask_input_as_output_without_sam) {
      heads = this.useMaskAsOutput(ops, frame.visionFeats, frame.highRes, maskInputs);
    } else {
      const pixFeat = this.conditionOnMemory(ops, frame, isInitCondFrame ? null : args.memory);
      const numPoints = points ? ops.shape(points.labels)[1] : 0;
      heads = this.forwardSamHeads(ops, {
        backboneFeatures: pixFeat,
        highRes: frame.highRes,
        points,
        maskInputs,
        multimaskOutput: this.useMultimask(isInitCondFrame, numPoints),
      });
    }
    const out: TrackStepOutput<T> = {
      predMasks: heads.lowResMasks,
      predMasksHighRes: heads.highResMasks,
      objPtr: heads.objPtr,
      objectScoreLogits: heads.objectScoreLogits,
    };
    if (args.runMemEncoder && this.config.num_maskmem > 0) {
      out.memory = this.encodeNewMemory(ops, frame, heads.highResMasks, heads.objectScoreLogits, points !== undefined);
    }
    return out;
  }
}

/** The values of an eager tensor (anything with `dataSync`), or undefined for a symbolic one. */
function concreteValues(x: unknown): ArrayLike<number> | undefined {
  const t = x as { dataSync?: () => ArrayLike<number> } | null;
  return t && typeof t.dataSync === 'function' ? t.dataSync() : undefined;
}

// ───────────────────────── Memory path: types and helpers ─────────────────────────

/** Official NO_OBJ_SCORE: mask logits of frames predicted to have no object. */
export const NO_OBJ_SCORE = -1024;

/** One frame's image features as the memory path uses them. */
export interface FrameFeatures<T> {
  /** (B, S/16, S/16, C) top-level backbone features, without no_mem_embed */
  visionFeats: T;
  /** (1 or B, S/16, S/16, C) their sine position encoding */
  visionPos: T;
  /** [(B, S/4, S/4, C/8), (B, S/8, S/8, C/4)] after conv_s0 / conv_s1 */
  highRes: [T, T];
}

/** Point prompts: coords (B, P, 2) x, y in input pixels; labels (B, P) float (-1 pad, 0, 1, 2/3 box corners). */
export interface PointInputs<T> {
  coords: T;
  labels: T;
}

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

/** `_forward_sam_heads` / `_use_mask_as_output` outputs (masks channels-first like the official ones). */
export interface SamHeadsOutput<T> {
  /** (B, M, S/4, S/4) */
  lowResMultimasks: T;
  /** (B, M) */
  ious: T;
  /** (B, 1, S/4, S/4) the chosen mask */
  lowResMasks: T;
  /** (B, 1, S, S) the chosen mask upsampled (bilinear, align_corners=False) */
  highResMasks: T;
  /** (B, C) */
  objPtr: T;
  /** (B, 1) */
  objectScoreLogits: T;
}

export interface TrackStepOutput<T> {
  /** (B, 1, S/4, S/4) low-res mask logits */
  predMasks: T;
  /** (B, 1, S, S) */
  predMasksHighRes: T;
  /** (B, C) */
  objPtr: T;
  /** (B, 1) */
  objectScoreLogits: T;
  /** present when the memory encoder ran */
  memory?: MemoryFeatures<T>;
}

/** (B, 1, H, W) or (B, H, W, 1) -> (B, H, W, 1) (the same memory layout). */
function toMaskNhwc<T>(ops: Ops<T>, x: T): T {
  const s = ops.shape(x);
  if (s.length !== 4 || (s[1] !== 1 && s[3] !== 1)) throw new Error(`expected a (B, 1, H, W) mask, got (${s.join(', ')})`);
  return s[3] === 1 ? x : ops.reshape(x, [-1, s[2], s[3], 1]);
}

/** 1 - x */
function oneMinus<T>(ops: Ops<T>, x: T): T {
  return ops.add(ops.neg(x), 1);
}

/** 1 where x > 0, else 0 (float; exact). */
function greaterThanZero<T>(ops: Ops<T>, x: T): T {
  return oneMinus(ops, ops.equal(ops.relu(x), 0));
}

/** One-hot (B, M) of the first maximum along the last axis of x (B, M), like torch.argmax. */
function argmaxOneHot<T>(ops: Ops<T>, x: T): T {
  const m = ops.shape(x)[1];
  const col = (i: number) => ops.slice(x, [0, i], [-1, 1]);
  // a >= b  <=>  relu(b - a) == 0
  const ge = (a: T, b: T) => ops.equal(ops.relu(ops.sub(b, a)), 0);
  const sels: T[] = [];
  let taken: T | undefined;
  for (let i = 0; i < m; i++) {
    let s: T | undefined;
    for (let j = i + 1; j < m; j++) s = s === undefined ? ge(col(i), col(j)) : ops.mul(s, ge(col(i), col(j)));
    if (s === undefined) s = ops.add(ops.mul(col(i), 0), 1);
    if (taken !== undefined) s = ops.mul(s, oneMinus(ops, taken));
    sels.push(s);
    taken = taken === undefined ? s : ops.add(taken, s);
  }
  return ops.concat(sels, 1);
}

/** Bilinear resize (align_corners=False, no antialias) of (B, M, h, w) masks to (B, M, H, W). */
export function upsampleMasks<T>(ops: Ops<T>, masks: T, size: [number, number]): T {
  const [, m, h, w] = ops.shape(masks);
  if (h === size[0] && w === size[1]) return masks;
  if (m === 1) return ops.reshape(ops.resizeBilinear(ops.reshape(masks, [-1, h, w, 1]), size), [-1, 1, size[0], size[1]]);
  return ops.transpose(ops.resizeBilinear(ops.transpose(masks, [0, 2, 3, 1]), size), [0, 3, 1, 2]);
}

/**
 * PyTorch's `interpolate(mode='bilinear', align_corners=False, antialias=True)` along one axis
 * as an (outSize, inSize) row-major matrix: a triangle filter widened by the scale factor when
 * downsampling, each row normalised (ATen `_compute_indices_min_size_weights_aa`).
 */
export function antialiasBilinearMatrix(inSize: number, outSize: number): Float32Array {
  const scale = inSize / outSize;
  const support = scale >= 1 ? scale : 1;
  const invScale = scale >= 1 ? 1 / scale : 1;
  const out = new Float32Array(outSize * inSize);
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
    let total = 0;
    const ws: number[] = [];
    for (let j = xmin; j < xmax; j++) {
      const wgt = Math.max(0, 1 - Math.abs((j - center + 0.5) * invScale));
      ws.push(wgt);
      total += wgt;
    }
    for (let j = xmin; j < xmax; j++) out[i * inSize + j] = total > 0 ? ws[j - xmin] / total : 0;
  }
  return out;
}

/** Antialiased bilinear resize of (B, H, W, C) to (B, oh, ow, C), as two constant matrix products. */
export function resizeBilinearAntialias<T>(ops: Ops<T>, x: T, size: [number, number]): T {
  const [, h, w, c] = ops.shape(x);
  const [oh, ow] = size;
  if (oh === h && ow === w) return x;
  // columns: (B*C*H, W) @ Rx^T
  let y = ops.reshape(ops.transpose(x, [0, 3, 1, 2]), [-1, w]);
  y = ops.matMul(y, ops.constant(antialiasBilinearMatrix(w, ow), [ow, w]), false, true);
  // rows: (B*C*ow, H) @ Ry^T
  y = ops.reshape(ops.transpose(ops.reshape(y, [-1, h, ow]), [0, 2, 1]), [-1, h]);
  y = ops.matMul(y, ops.constant(antialiasBilinearMatrix(h, oh), [oh, h]), false, true);
  // (B, C, ow, oh) -> (B, oh, ow, C)
  return ops.transpose(ops.reshape(y, [-1, c, ow, oh]), [0, 3, 2, 1]);
}

/**
 * Official `get_1d_sine_pe` of positions held in a (P, 1) tensor: (P, dim) rows
 * [sin(p / t_i), cos(p / t_i)] with t_i = temperature^(2 floor(i/2) / (dim/2)) computed in float32
 * steps, and the division, sin and cos in float32.
 */
function sine1dPosition<T>(ops: Ops<T>, pos: T, dim: number, temperature = 10000): T {
  const half = dim / 2;
  const dimT = new Float32Array(half);
  for (let i = 0; i < half; i++) dimT[i] = Math.fround(temperature ** Math.fround((2 * Math.floor(i / 2)) / half));
  const a = ops.div(pos, ops.constant(dimT, [1, half]));
  return ops.concat([ops.sin(a), ops.cos(a)], 1);
}

/** x with a leading batch of 1 or `batch`, tiled to `batch`. */
function tileToBatch<T>(ops: Ops<T>, x: T, batch: number): T {
  const shape = ops.shape(x);
  if (shape[0] === batch) return x;
  if (shape[0] !== 1) throw new Error(`tileToBatch: a leading dimension of ${shape[0]} cannot be tiled to a batch of ${batch}`);
  return ops.tile(x, [batch, ...shape.slice(1).map(() => 1)]);
}
