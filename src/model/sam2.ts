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
import { conv2dSpecs, linearSpecs, type Module, type Ops, type ParamSpec } from './ops.js';
import { PromptEncoder } from './prompt-encoder.js';

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
   * `boxes`: (B, 4) x0, y0, x1, y1 in input pixels.
   */
  predictFromBoxes<T>(ops: Ops<T>, image: T, boxes: T, multimaskOutput = false): MaskDecoderOutput<T> {
    const { imageEmbed, highRes } = this.imageEmbeddings(ops, image);
    const coords = ops.reshape(boxes, [-1, 2, 2]);
    const batch = ops.shape(boxes)[0];
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
}
