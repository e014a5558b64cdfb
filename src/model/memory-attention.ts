/**
 * Memory attention, after the official `sam2/modeling/memory_attention.py`: the current frame's
 * tokens self-attend, then cross-attend to the memory bank (spatial memories + object pointers),
 * each attention with axial rotary position encoding (rope-attention.ts).
 *
 * Batch-first: curr (B, N, C), memory (B, M, memDim). The official module takes
 * sequence-first tensors and transposes internally; the arithmetic is the same.
 */
import type { MemoryAttentionConfig, MemoryAttentionLayerConfig } from './config.js';
import { key, layerNorm, layerNormSpecs, linear, linearSpecs, type Module, type Ops, type ParamSpec } from './ops.js';
import { RoPEAttention } from './rope-attention.js';

/** nn.LayerNorm default epsilon (memory attention norms). */
const LN_EPS = 1e-5;

/** Official `MemoryAttentionLayer`: pre-norm self-attention, cross-attention to memory, MLP. */
export class MemoryAttentionLayer implements Module {
  readonly selfAttn: RoPEAttention;
  readonly crossAttn: RoPEAttention;

  constructor(
    readonly cfg: MemoryAttentionLayerConfig,
    readonly prefix: string,
  ) {
    if (cfg.activation !== 'relu') throw new Error(`MemoryAttentionLayer: activation ${cfg.activation} is not supported`);
    this.selfAttn = new RoPEAttention(cfg.self_attention, key(prefix, 'self_attn'));
    this.crossAttn = new RoPEAttention(cfg.cross_attention, key(prefix, 'cross_attn_image'));
  }

  paramSpecs(): ParamSpec[] {
    const d = this.cfg.d_model;
    return [
      ...this.selfAttn.paramSpecs(),
      ...this.crossAttn.paramSpecs(),
      ...linearSpecs(key(this.prefix, 'linear1'), d, this.cfg.dim_feedforward),
      ...linearSpecs(key(this.prefix, 'linear2'), this.cfg.dim_feedforward, d),
      ...layerNormSpecs(key(this.prefix, 'norm1'), d),
      ...layerNormSpecs(key(this.prefix, 'norm2'), d),
      ...layerNormSpecs(key(this.prefix, 'norm3'), d),
    ];
  }

  forward<T>(ops: Ops<T>, tgt: T, memory: T, pos: T, queryPos: T, numKExcludeRope: number): T {
    const c = this.cfg;
    // self-attention
    let t2 = layerNorm(ops, tgt, key(this.prefix, 'norm1'), LN_EPS);
    const qk = c.pos_enc_at_attn ? ops.add(t2, queryPos) : t2;
    tgt = ops.add(tgt, this.selfAttn.forward(ops, qk, qk, t2));
    // cross-attention to the memory bank
    t2 = layerNorm(ops, tgt, key(this.prefix, 'norm2'), LN_EPS);
    t2 = this.crossAttn.forward(
      ops,
      c.pos_enc_at_cross_attn_queries ? ops.add(t2, queryPos) : t2,
      c.pos_enc_at_cross_attn_keys ? ops.add(memory, pos) : memory,
      memory,
      numKExcludeRope,
    );
    tgt = ops.add(tgt, t2);
    // MLP
    t2 = layerNorm(ops, tgt, key(this.prefix, 'norm3'), LN_EPS);
    t2 = linear(ops, ops.relu(linear(ops, t2, key(this.prefix, 'linear1'))), key(this.prefix, 'linear2'));
    return ops.add(tgt, t2);
  }
}

export interface MemoryAttentionInputs<T> {
  /** (B, N, C) current frame's top-level features, N = h * w tokens (row-major) */
  curr: T;
  /** (B, N, C) their sine position encoding */
  currPos: T;
  /** (B, M, memDim) spatial memory tokens followed by `numObjPtrTokens` object-pointer tokens */
  memory: T;
  /** (B, M, memDim) */
  memoryPos: T;
  /** how many trailing memory tokens are object pointers (excluded from RoPE) */
  numObjPtrTokens: number;
}

export class MemoryAttention implements Module {
  readonly layers: MemoryAttentionLayer[];

  constructor(
    readonly cfg: MemoryAttentionConfig,
    readonly prefix: string,
  ) {
    this.layers = Array.from({ length: cfg.num_layers }, (_, i) => new MemoryAttentionLayer(cfg.layer, key(prefix, `layers.${i}`)));
  }

  paramSpecs(): ParamSpec[] {
    return [...this.layers.flatMap((l) => l.paramSpecs()), ...layerNormSpecs(key(this.prefix, 'norm'), this.cfg.d_model)];
  }

  /** -> (B, N, C) the current frame's features conditioned on memory, after the final norm. */
  forward<T>(ops: Ops<T>, inputs: MemoryAttentionInputs<T>): T {
    const { curr, currPos, memory, memoryPos, numObjPtrTokens } = inputs;
    let out = this.cfg.pos_enc_at_input ? ops.add(curr, ops.mul(currPos, 0.1)) : curr;
    for (const layer of this.layers) out = layer.forward(ops, out, memory, memoryPos, currPos, numObjPtrTokens);
    return layerNorm(ops, out, key(this.prefix, 'norm'), LN_EPS);
  }
}
