/**
 * The numeric interface of 3D propagation: the pieces of SAM2 the propagation loop
 * (video-predictor.ts) calls one slice at a time, so the same loop drives the TensorFlow.js model
 * (tf-frame-graphs.ts) and the exported ONNX graphs (onnx/runtime.ts).
 */
import type { Sam2Config } from './config.js';
import type { MemoryContext, MemoryFeatures } from './memory-bank.js';
import type { FrameFeatures } from './sam2.js';

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
