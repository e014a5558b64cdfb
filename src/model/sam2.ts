/**
 * SAM2Base: the whole model, composed as the official `sam2/modeling/sam2_base.py` does: the
 * submodules, the top-level parameters, the image path used by fine-tuning and the image
 * predictor, and the numeric pieces of tracking (memory conditioning, the SAM heads, mask as
 * output, new memories). Which memories a frame attends to is decided by the propagation loop
 * (video-predictor.ts); the bank's packing lives in memory-bank.ts.
 */
import type { Sam2Config } from './config.js';
import { ImageEncoder } from './image-encoder.js';
import { MaskDecoder, pickBestMask, type MaskDecoderOutput, type MultimaskStability } from './mask-decoder.js';
import { MemoryAttention } from './memory-attention.js';
import { memoryBankTemporal, memoryBankTokens, type MemoryBankInputs, type MemoryContext, type MemoryFeatures } from './memory-bank.js';
import { MemoryEncoder } from './memory-encoder.js';
import { conv2d, conv2dSpecs, linear, linearSpecs, type Module, type Ops, type ParamSpec } from './ops.js';
import { PromptEncoder } from './prompt-encoder.js';
import { resizeBilinearAntialias, upsampleMasks } from './resize.js';
import { greaterThanZero, MLP, oneMinus, tileToBatch, toMaskNhwc } from './sam2-utils.js';

/** Stride of the image embedding the decoder works on. */
export const BACKBONE_STRIDE = 16;

/** Official NO_OBJ_SCORE: mask logits of frames predicted to have no object. */
export const NO_OBJ_SCORE = -1024;

/** One frame's image features, as `SAM2Base.encodeFrame` gives them. */
export interface FrameFeatures<T> {
  /** (B, S/16, S/16, C) top-level backbone features, without no_mem_embed */
  visionFeats: T;
  /** (1 or B, S/16, S/16, C) their sine position encoding */
  visionPos: T;
  /** [(B, S/4, S/4, C/8), (B, S/8, S/8, C/4)] after conv_s0 / conv_s1 */
  highRes: [T, T];
}

export interface ImageEmbeddings<T> {
  /** (B, S/16, S/16, C) with `no_mem_embed` added, as the image predictor and fine-tuning use it */
  imageEmbed: T;
  /** [(B, S/4, S/4, C/8), (B, S/8, S/8, C/4)] after conv_s0 / conv_s1 */
  highRes: [T, T];
}

/** Point prompts: coords (B, P, 2) x, y in input pixels; labels (B, P) float (-1 pad, 0, 1, 2/3 box corners). */
export interface PointInputs<T> {
  coords: T;
  labels: T;
}

/** `_forward_sam_heads` / `_use_mask_as_output` outputs (masks channels-first like the official ones). */
export interface SamHeadsOutput<T> {
  /** (B, 1, S/4, S/4) the chosen mask */
  lowResMasks: T;
  /** (B, 1, S, S) the chosen mask upsampled (bilinear, align_corners=False) */
  highResMasks: T;
  /** (B, C) */
  objPtr: T;
  /** (B, 1) */
  objectScoreLogits: T;
}

/** `_forward_sam_heads` with what the training loss reads besides the chosen mask. */
export interface SamHeadsTrainOutput<T> extends SamHeadsOutput<T> {
  /** (B, M, S/4, S/4) every output mask, object-score gated (M = 3 with multimask output, else 1) */
  lowResMultimasks: T;
  /** (B, M) their IoU estimates */
  ious: T;
}

/** Official `_use_multimask`: whether the SAM heads give 3 masks (and take the best) for this frame. */
export function useMultimask(c: Sam2Config, isInitCondFrame: boolean, numPoints: number): boolean {
  return c.multimask_output_in_sam && (isInitCondFrame || c.multimask_output_for_tracking) && c.multimask_min_pt_num <= numPoints && numPoints <= c.multimask_max_pt_num;
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
   * `forward_image` + `_prepare_backbone_features`, the one image encoding of every path: the
   * top-level features (without `no_mem_embed`), their position encoding, and the high-res maps.
   * `image`: (B, S, S, 3) normalized, channels-last.
   */
  encodeFrame<T>(ops: Ops<T>, image: T): FrameFeatures<T> {
    const enc = this.imageEncoder.forward(ops, image);
    return { visionFeats: enc.visionFeatures, visionPos: enc.visionPosEnc[enc.visionPosEnc.length - 1], highRes: this.highResFeatures(ops, enc.backboneFpn) };
  }

  /** The mask decoder's high-res inputs from the encoder's two finest FPN levels (conv_s0 / conv_s1 when used). */
  private highResFeatures<T>(ops: Ops<T>, backboneFpn: T[]): [T, T] {
    const [s0, s1] = backboneFpn;
    return this.config.use_high_res_features_in_sam ? [this.maskDecoder.convS0(ops, s0), this.maskDecoder.convS1(ops, s1)] : [s0, s1];
  }

  /** `encodeFrame` with `no_mem_embed` added directly, as the image predictor and MedSAM2 fine-tuning use it. */
  imageEmbeddings<T>(ops: Ops<T>, image: T): ImageEmbeddings<T> {
    const frame = this.encodeFrame(ops, image);
    return { imageEmbed: this.withNoMemEmbed(ops, frame.visionFeats), highRes: frame.highRes };
  }

  /** `visionFeats` + `no_mem_embed` (directly_add_no_mem_embed): the embedding of a frame with no memory. */
  withNoMemEmbed<T>(ops: Ops<T>, visionFeats: T): T {
    return ops.add(visionFeats, ops.reshape(ops.param('no_mem_embed'), [1, 1, 1, this.hiddenDim]));
  }

  /**
   * The fine-tuning forward: image + box prompts -> low-res mask logits, as MedSAM2's
   * `finetune_sam2_img.py` runs it (box as two corner points with labels 2 and 3, no mask input).
   * `boxes`: (B, 4) x0, y0, x1, y1 in input pixels; their values are the caller's to check.
   */
  predictFromBoxes<T>(ops: Ops<T>, image: T, boxes: T, multimaskOutput = false): MaskDecoderOutput<T> {
    const size = this.config.image_size;
    const imageShape = ops.shape(image);
    if (imageShape.length !== 4 || imageShape[1] !== size || imageShape[2] !== size || imageShape[3] !== 3) {
      throw new Error(`predictFromBoxes: image must be (B, ${size}, ${size}, 3), got (${imageShape.join(', ')})`);
    }
    return this.predictFromFeatures(ops, this.imageEncoder.forward(ops, image).backboneFpn, boxes, multimaskOutput);
  }

  /**
   * `predictFromBoxes` from the image encoder's outputs (`backboneFpn`, fine to coarse, batch
   * first): what a frozen encoder lets the training step take from the embedding cache.
   */
  predictFromFeatures<T>(ops: Ops<T>, backboneFpn: T[], boxes: T, multimaskOutput = false): MaskDecoderOutput<T> {
    const boxShape = ops.shape(boxes);
    if (boxShape.length !== 2 || boxShape[1] !== 4) throw new Error(`predictFromBoxes: boxes must be (B, 4), got (${boxShape.join(', ')})`);
    const batch = boxShape[0];
    const imageBatch = ops.shape(backboneFpn[0])[0];
    if (batch !== imageBatch) throw new Error(`predictFromBoxes: ${batch} boxes for a batch of ${imageBatch} images`);
    return this.decodePrompts(ops, this.embeddingsFromFeatures(ops, backboneFpn), boxPoints(ops, boxes), undefined, multimaskOutput);
  }

  /** `imageEmbeddings` from the image encoder's outputs (`backboneFpn`, fine to coarse). */
  embeddingsFromFeatures<T>(ops: Ops<T>, backboneFpn: T[]): ImageEmbeddings<T> {
    return { imageEmbed: this.withNoMemEmbed(ops, backboneFpn[backboneFpn.length - 1]), highRes: this.highResFeatures(ops, backboneFpn) };
  }

  /**
   * Prompt encoder + mask decoder on an image's embeddings, the decoder's raw outputs: what
   * fine-tuning trains on, once per prompt round. `points` as in `PointInputs` (a box is its two
   * corners, labels 2 and 3); `maskInputs` (B, 1, S/4, S/4) logits, the previous round's mask.
   */
  decodePrompts<T>(ops: Ops<T>, embeddings: ImageEmbeddings<T>, points: PointInputs<T>, maskInputs?: T, multimaskOutput = false): MaskDecoderOutput<T> {
    const { sparse, dense } = this.promptEncoder.forward(ops, { points, masks: maskInputs });
    return this.maskDecoder.forward(ops, {
      imageEmbeddings: embeddings.imageEmbed,
      imagePe: this.promptEncoder.densePe(ops),
      sparse,
      dense,
      multimaskOutput,
      highResFeatures: embeddings.highRes,
    });
  }

  /**
   * The arithmetic of `_prepare_memory_conditioned_features`: the frame's top-level features
   * fused with the given memory bank through memory attention, (B, h, w, C). `memory === null`
   * marks an initial conditioning frame: `no_mem_embed` is added directly
   * (directly_add_no_mem_embed) or attended to as a single dummy memory token.
   */
  conditionOnMemory<T>(ops: Ops<T>, frame: FrameFeatures<T>, memory: MemoryContext<T> | null): T {
    const c = this.config;
    const C = this.hiddenDim;
    const [batch, h, w] = ops.shape(frame.visionFeats);
    if (c.num_maskmem === 0) return frame.visionFeats;
    if (memory === null) {
      if (c.directly_add_no_mem_embed) return this.withNoMemEmbed(ops, frame.visionFeats);
      if (C !== this.memDim) throw new Error('conditionOnMemory: a no-memory token needs hidden_dim == mem_dim');
      const out = this.memoryAttention.forward(ops, {
        curr: ops.reshape(frame.visionFeats, [-1, h * w, C]),
        currPos: ops.reshape(tileToBatch(ops, frame.visionPos, batch), [-1, h * w, C]),
        memory: ops.tile(ops.reshape(ops.param('no_mem_embed'), [1, 1, C]), [batch, 1, 1]),
        memoryPos: ops.tile(ops.reshape(ops.param('no_mem_pos_enc'), [1, 1, C]), [batch, 1, 1]),
        numObjPtrTokens: 0,
      });
      return ops.reshape(out, [-1, h, w, C]);
    }
    const { tposOneHot, objPtrTpos } = memoryBankTemporal(memory, c.num_maskmem);
    const perMemory = (x: T) => ops.reshape(x, [-1, 1, h * w, this.memDim]);
    const spatial = {
      features: ops.concat(memory.memories.map((m) => perMemory(m.features)), 1),
      posEnc: ops.concat(memory.memories.map((m) => perMemory(m.posEnc)), 1),
      tposOneHot: ops.constant(tposOneHot, [memory.memories.length, c.num_maskmem]),
    };
    const ptrs = memory.objPtrs;
    const objPtrs =
      c.use_obj_ptrs_in_encoder && ptrs.length > 0
        ? { ptrs: ops.concat(ptrs.map((o) => ops.reshape(o.ptr, [-1, 1, C])), 1), tpos: ops.constant(objPtrTpos, [ptrs.length, 1]) }
        : undefined;
    return this.attendToMemory(ops, { curr: frame.visionFeats, currPos: frame.visionPos, spatial, objPtrs });
  }

  /**
   * Memory attention of the current frame over a memory bank given as tensors, (B, h, w, C): the
   * eager propagation (`conditionOnMemory`) and the exported memory-attention graph both run it.
   */
  attendToMemory<T>(ops: Ops<T>, bank: MemoryBankInputs<T>): T {
    const C = this.hiddenDim;
    const [batch, h, w, ch] = ops.shape(bank.curr);
    if (ch !== C) throw new Error(`attendToMemory: current features must have ${C} channels, got (${ops.shape(bank.curr).join(', ')})`);
    const out = this.memoryAttention.forward(ops, {
      curr: ops.reshape(bank.curr, [-1, h * w, C]),
      currPos: ops.reshape(tileToBatch(ops, bank.currPos, batch), [-1, h * w, C]),
      ...memoryBankTokens(ops, this.config, bank),
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
   *   encoder's mask input size with antialiased bilinear when it differs;
   * - `stability`: inference's single-mask fallback (`predictorStability`), absent while training.
   * The official high-res *multi*-mask output is not computed (nothing in tracking reads it).
   */
  forwardSamHeads<T>(
    ops: Ops<T>,
    args: { backboneFeatures: T; highRes?: [T, T]; points?: PointInputs<T>; maskInputs?: T; multimaskOutput: boolean; stability?: MultimaskStability },
  ): SamHeadsTrainOutput<T> {
    const c = this.config;
    const C = this.hiddenDim;
    const { backboneFeatures, highRes, multimaskOutput } = args;
    const [b, h, w, ch] = ops.shape(backboneFeatures);
    const hh = c.image_size / BACKBONE_STRIDE;
    if (ch !== C || h !== hh || w !== h) throw new Error(`forwardSamHeads: backbone features must be (B, ${hh}, ${hh}, ${C}), got (${[b, h, w, ch].join(', ')})`);
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
      stability: args.stability,
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
    const firstToken = () => ops.reshape(ops.slice(tokens, [0, 0, 0], [-1, 1, C]), [-1, C]);
    if (multimaskOutput && numMasks > 1) {
      const best = pickBestMask(ops, lowResMultimasks, dec.iouPred);
      lowResMasks = best.mask;
      token = ops.shape(tokens)[1] > 1 ? ops.sum(ops.mul(tokens, ops.reshape(best.choice, [-1, numMasks, 1])), [1]) : firstToken();
    } else {
      lowResMasks = ops.slice(lowResMultimasks, [0, 0, 0, 0], [-1, 1, lh, lw]);
      token = firstToken();
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
    return { lowResMasks, highResMasks, objPtr, objectScoreLogits, lowResMultimasks, ious: dec.iouPred };
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
    return { lowResMasks, highResMasks, objPtr, objectScoreLogits };
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
}

/** (B, 4) boxes x0, y0, x1, y1 as the prompt encoder takes them: two corner points labelled 2 and 3. */
export function boxPoints<T>(ops: Ops<T>, boxes: T): PointInputs<T> {
  const batch = ops.shape(boxes)[0];
  return { coords: ops.reshape(boxes, [-1, 2, 2]), labels: ops.constant(Array.from({ length: batch }, () => [2, 3]).flat(), [batch, 2]) };
}
