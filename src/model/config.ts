import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';

/** SAM2's input normalization (ImageNet mean and std per RGB channel, on values in [0, 1]). */
export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;

/**
 * Model configuration, field for field the official SAM2 YAML model configs
 * (`configs/sam2.1/sam2.1_hiera_t.yaml` under `model:`), minus the `_target_` class paths.
 * Fields the YAML leaves out take the official constructors' defaults (see `resolveModelConfig`).
 */
export interface HieraConfig {
  embed_dim: number;
  num_heads: number;
  stages: number[];
  global_att_blocks: number[];
  window_pos_embed_bkg_spatial_size: [number, number];
  window_spec: number[];
  q_pool: number;
  q_stride: [number, number];
  dim_mul: number;
  head_mul: number;
  mlp_ratio: number;
}

export interface PositionEmbeddingSineConfig {
  num_pos_feats: number;
  normalize: boolean;
  scale: number | null;
  temperature: number;
}

export interface FpnNeckConfig {
  position_encoding: PositionEmbeddingSineConfig;
  d_model: number;
  backbone_channel_list: number[];
  fpn_top_down_levels: number[];
  fpn_interp_model: 'nearest';
  kernel_size: number;
  stride: number;
  padding: number;
  fuse_type: 'sum';
}

export interface ImageEncoderConfig {
  scalp: number;
  trunk: HieraConfig;
  neck: FpnNeckConfig;
}

export interface RoPEAttentionConfig {
  rope_theta: number;
  feat_sizes: [number, number];
  rope_k_repeat: boolean;
  embedding_dim: number;
  num_heads: number;
  downsample_rate: number;
  dropout: number;
  kv_in_dim: number | null;
}

export interface MemoryAttentionLayerConfig {
  activation: 'relu';
  dim_feedforward: number;
  dropout: number;
  pos_enc_at_attn: boolean;
  self_attention: RoPEAttentionConfig;
  d_model: number;
  pos_enc_at_cross_attn_keys: boolean;
  pos_enc_at_cross_attn_queries: boolean;
  cross_attention: RoPEAttentionConfig;
}

export interface MemoryAttentionConfig {
  d_model: number;
  pos_enc_at_input: boolean;
  layer: MemoryAttentionLayerConfig;
  num_layers: number;
}

export interface MemoryEncoderConfig {
  out_dim: number;
  in_dim: number;
  position_encoding: PositionEmbeddingSineConfig;
  mask_downsampler: { kernel_size: number; stride: number; padding: number; total_stride: number; embed_dim: number };
  fuser: {
    layer: { dim: number; kernel_size: number; padding: number; layer_scale_init_value: number; use_dwconv: boolean };
    num_layers: number;
  };
}

export interface Sam2Config {
  image_encoder: ImageEncoderConfig;
  memory_attention: MemoryAttentionConfig;
  memory_encoder: MemoryEncoderConfig;
  num_maskmem: number;
  image_size: number;
  sigmoid_scale_for_mem_enc: number;
  sigmoid_bias_for_mem_enc: number;
  use_mask_input_as_output_without_sam: boolean;
  directly_add_no_mem_embed: boolean;
  no_obj_embed_spatial: boolean;
  use_high_res_features_in_sam: boolean;
  multimask_output_in_sam: boolean;
  iou_prediction_use_sigmoid: boolean;
  use_obj_ptrs_in_encoder: boolean;
  max_obj_ptrs_in_encoder: number;
  add_tpos_enc_to_obj_ptrs: boolean;
  proj_tpos_enc_in_obj_ptrs: boolean;
  use_signed_tpos_enc_to_obj_ptrs: boolean;
  only_obj_ptrs_in_the_past_for_eval: boolean;
  pred_obj_scores: boolean;
  pred_obj_scores_mlp: boolean;
  fixed_no_obj_ptr: boolean;
  multimask_output_for_tracking: boolean;
  use_multimask_token_for_obj_ptr: boolean;
  multimask_min_pt_num: number;
  multimask_max_pt_num: number;
  use_mlp_for_obj_ptr_proj: boolean;
  soft_no_obj_ptr: boolean;
  memory_temporal_stride_for_eval: number;
  binarize_mask_from_pts_for_mem_enc: boolean;
  sam_mask_decoder_extra_args: Record<string, unknown> | null;
}

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? (T[K] extends unknown[] ? T[K] : DeepPartial<T[K]>) : T[K] };
export type Sam2ConfigInput = DeepPartial<Sam2Config> & Record<string, unknown>;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep merge: `over` wins; `_target_` keys (Python class paths) are dropped. */
function merge<T>(base: T, over: unknown): T {
  if (!isPlainObject(over) || !isPlainObject(base)) return (over === undefined ? base : over) as T;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (k === '_target_') continue;
    out[k] = k in out ? merge(out[k], v) : v;
  }
  return out as T;
}

function sine(numPosFeats: number): PositionEmbeddingSineConfig {
  return { num_pos_feats: numPosFeats, normalize: true, scale: null, temperature: 10000 };
}

function rope(dim: number, kvInDim: number | null, kRepeat: boolean): RoPEAttentionConfig {
  return {
    rope_theta: 10000,
    feat_sizes: [64, 64],
    rope_k_repeat: kRepeat,
    embedding_dim: dim,
    num_heads: 1,
    downsample_rate: 1,
    dropout: 0.1,
    kv_in_dim: kvInDim,
  };
}

/** `sam2.1_hiera_t.yaml` at 1024, with every constructor default made explicit. */
export const SAM2_1_TINY: Sam2Config = {
  image_encoder: {
    scalp: 1,
    trunk: {
      embed_dim: 96,
      num_heads: 1,
      stages: [1, 2, 7, 2],
      global_att_blocks: [5, 7, 9],
      window_pos_embed_bkg_spatial_size: [7, 7],
      window_spec: [8, 4, 14, 7],
      q_pool: 3,
      q_stride: [2, 2],
      dim_mul: 2,
      head_mul: 2,
      mlp_ratio: 4,
    },
    neck: {
      position_encoding: sine(256),
      d_model: 256,
      backbone_channel_list: [768, 384, 192, 96],
      fpn_top_down_levels: [2, 3],
      fpn_interp_model: 'nearest',
      kernel_size: 1,
      stride: 1,
      padding: 0,
      fuse_type: 'sum',
    },
  },
  memory_attention: {
    d_model: 256,
    pos_enc_at_input: true,
    layer: {
      activation: 'relu',
      dim_feedforward: 2048,
      dropout: 0.1,
      pos_enc_at_attn: false,
      self_attention: rope(256, null, false),
      d_model: 256,
      pos_enc_at_cross_attn_keys: true,
      pos_enc_at_cross_attn_queries: false,
      cross_attention: rope(256, 64, true),
    },
    num_layers: 4,
  },
  memory_encoder: {
    out_dim: 64,
    in_dim: 256,
    position_encoding: sine(64),
    mask_downsampler: { kernel_size: 3, stride: 2, padding: 1, total_stride: 16, embed_dim: 256 },
    fuser: { layer: { dim: 256, kernel_size: 7, padding: 3, layer_scale_init_value: 1e-6, use_dwconv: true }, num_layers: 2 },
  },
  num_maskmem: 7,
  image_size: 1024,
  sigmoid_scale_for_mem_enc: 20.0,
  sigmoid_bias_for_mem_enc: -10.0,
  use_mask_input_as_output_without_sam: true,
  directly_add_no_mem_embed: true,
  no_obj_embed_spatial: true,
  use_high_res_features_in_sam: true,
  multimask_output_in_sam: true,
  iou_prediction_use_sigmoid: true,
  use_obj_ptrs_in_encoder: true,
  max_obj_ptrs_in_encoder: 16,
  add_tpos_enc_to_obj_ptrs: true,
  proj_tpos_enc_in_obj_ptrs: true,
  use_signed_tpos_enc_to_obj_ptrs: true,
  only_obj_ptrs_in_the_past_for_eval: true,
  pred_obj_scores: true,
  pred_obj_scores_mlp: true,
  fixed_no_obj_ptr: true,
  multimask_output_for_tracking: true,
  use_multimask_token_for_obj_ptr: true,
  multimask_min_pt_num: 0,
  multimask_max_pt_num: 1,
  use_mlp_for_obj_ptr_proj: true,
  soft_no_obj_ptr: false,
  memory_temporal_stride_for_eval: 1,
  binarize_mask_from_pts_for_mem_enc: true,
  sam_mask_decoder_extra_args: null,
};

/** `sam2_hiera_t.yaml` (SAM 2.0): no spatial no-object embedding, no temporal-position projection. */
export const SAM2_TINY: Sam2Config = merge(SAM2_1_TINY, {
  no_obj_embed_spatial: false,
  proj_tpos_enc_in_obj_ptrs: false,
  use_signed_tpos_enc_to_obj_ptrs: false,
  memory_attention: { layer: { self_attention: { feat_sizes: [32, 32] }, cross_attention: { feat_sizes: [32, 32] } } },
});

export const MODEL_PRESETS: Record<string, Sam2Config> = {
  'sam2.1-tiny': SAM2_1_TINY,
  'sam2-tiny': SAM2_TINY,
};

/**
 * Fill a partial config (as written in an official YAML `model:` block or a fixture's
 * `model_config`) with the official defaults. Flags the official YAML omits default to the
 * SAM2Base constructor's values, which for the tiny model are the SAM2.1 preset's.
 */
export function resolveModelConfig(input: Sam2ConfigInput, base: Sam2Config = SAM2_1_TINY): Sam2Config {
  return merge(base, input);
}

/**
 * A model config file: JSON or YAML, either the model block itself (official style, `_target_`
 * keys allowed), an official config file with a `model:` block, or a fixture `meta.json` with
 * `model_config`.
 */
export function readModelConfigFile(path: string, base: Sam2Config = SAM2_1_TINY): Sam2Config {
  let doc: unknown;
  const text = readFileSync(path, 'utf8');
  try {
    doc = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: cannot parse model config (${(err as Error).message})`);
  }
  if (!isPlainObject(doc)) throw new Error(`${path}: a model config must be an object`);
  const block = isPlainObject(doc.model_config) ? doc.model_config : isPlainObject(doc.model) ? doc.model : doc;
  if (!isPlainObject(block.image_encoder)) {
    throw new Error(`${path}: no model config found (expected image_encoder, memory_attention, ... at the top, under 'model', or under 'model_config')`);
  }
  return resolveModelConfig(block as Sam2ConfigInput, base);
}

/** Which model a run uses: a preset, optional overrides (an object, or a config file), an input size. */
export interface ModelChoice {
  preset: string;
  config?: string | Record<string, unknown> | null;
  image_size?: number;
}

/** The model config of a run: preset, then `config` (object or file), then `image_size`. */
export function resolveModelChoice(choice: ModelChoice): Sam2Config {
  const preset = MODEL_PRESETS[choice.preset];
  if (!preset) throw new Error(`model preset '${choice.preset}': unknown (presets: ${Object.keys(MODEL_PRESETS).join(', ')})`);
  let cfg =
    typeof choice.config === 'string'
      ? readModelConfigFile(choice.config, preset)
      : resolveModelConfig((choice.config ?? {}) as Sam2ConfigInput, preset);
  if (choice.image_size !== undefined && choice.image_size !== cfg.image_size) {
    // RoPE tables follow the stride-16 feature grid of the new size
    const feat = choice.image_size / 16;
    cfg = resolveModelConfig(
      {
        image_size: choice.image_size,
        memory_attention: {
          layer: { self_attention: { feat_sizes: [feat, feat] }, cross_attention: { feat_sizes: [feat, feat] } },
        },
      } as Sam2ConfigInput,
      cfg,
    );
  }
  return cfg;
}
