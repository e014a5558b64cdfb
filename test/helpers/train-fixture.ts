/** A tiny training setup for tests: generated volumes and a reduced model at 64x64. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureSyntheticVolumes } from '../../src/data/synthetic.js';
import { parseConfig, type TrainConfig } from '../../src/train/config.js';

/** The golden fixture's reduced widths (trunk 16, d_model 32, memory 16) over the SAM2.1-tiny preset. */
export const SMALL_MODEL_CONFIG = {
  image_encoder: {
    trunk: { embed_dim: 16 },
    neck: { d_model: 32, backbone_channel_list: [128, 64, 32, 16], position_encoding: { num_pos_feats: 32 } },
  },
  memory_attention: {
    d_model: 32,
    layer: { d_model: 32, dim_feedforward: 64, self_attention: { embedding_dim: 32 }, cross_attention: { embedding_dim: 32, kv_in_dim: 16 } },
  },
  memory_encoder: {
    out_dim: 16,
    in_dim: 32,
    position_encoding: { num_pos_feats: 16 },
    mask_downsampler: { embed_dim: 32 },
    fuser: { layer: { dim: 32 } },
  },
};

/** Generated train/val volumes in a temporary directory. */
export function tinyData(): { train: string; val: string } {
  const root = mkdtempSync(join(tmpdir(), 'medtune-data-'));
  const train = join(root, 'train');
  const val = join(root, 'val');
  ensureSyntheticVolumes(train, { count: 2, depth: 3, size: 64, seed: 'tiny/train', organs: 2 });
  ensureSyntheticVolumes(val, { count: 1, depth: 2, size: 64, seed: 'tiny/val', organs: 2 });
  return { train, val };
}

export function tinyConfig(data: { train: string; val: string }, train: Record<string, unknown> = {}): TrainConfig {
  return parseConfig({
    name: 'tiny',
    seed: 7,
    backend: 'cpu',
    model: { image_size: 64, config: SMALL_MODEL_CONFIG },
    data: { train: data.train, val: data.val, bbox_shift: 5, augment: { flip_h: true }, prefetch: 1, val_samples: 4 },
    train: {
      max_steps: 4,
      batch_size: 2,
      lr: 1e-3,
      warmup_steps: 1,
      min_lr: 1e-5,
      grad_clip: 1,
      no_decay_bias_norm: true,
      val_every: 2,
      save_every: 2,
      keep_last: 1,
      ...train,
    },
  });
}

export function tmpRunDir(tag: string): string {
  return mkdtempSync(join(tmpdir(), `medtune-run-${tag}-`));
}
