/**
 * Memory attention, after the official `sam2/modeling/memory_attention.py` and
 * `RoPEAttention` of `sam2/modeling/sam/transformer.py`: the current frame's tokens
 * self-attend, then cross-attend to the memory bank (spatial memories + object pointers),
 * each attention with axial rotary position encoding.
 *
 * Batch-first: curr (B, N, C), memory (B, M, memDim). The official module takes
 * sequence-first tensors and transposes internally; the arithmetic is the same.
 */
import type { MemoryAttentionConfig, MemoryAttentionLayerConfig, RoPEAttentionConfig } from './config.js';
import { key, layerNorm, layerNormSpecs, linear, linearSpecs, type Module, type Ops, type ParamSpec } from './ops.js';
import { applyRotary, axialRopeTables } from './position-encoding.js';

/** nn.LayerNorm default epsilon (memory attention norms). */
const LN_EPS = 1e-5;

/** Attention with axial RoPE on queries and keys (official `RoPEAttention`). */
export class RoPEAttention implements Module {
  readonly internalDim: number;
  readonly kvInDim: number;
  readonly headDim: number;
  private readonly tables = new Map<number, { cos: Float32Array; sin: Float32Array }>();

  constructor(
    readonly cfg: RoPEAttentionConfig,
    readonly prefix: string,
  ) {
    this.internalDim = cfg.embedding_dim / cfg.downsample_rate;
    this.kvInDim = cfg.kv_in_dim ?? cfg.embedding_dim;
    if (this.internalDim % cfg.num_heads !== 0) throw new Error('RoPEAttention: num_heads must divide embedding_dim');
    this.headDim = this.internalDim / cfg.num_heads;
  }

  paramSpecs(): ParamSpec[] {
    const d = this.cfg.embedding_dim;
    return [
      ...linearSpecs(key(this.prefix, 'q_proj'), d, this.internalDim),
      ...linearSpecs(key(this.prefix, 'k_proj'), this.kvInDim, this.internalDim),
      ...linearSpecs(key(this.prefix, 'v_proj'), this.kvInDim, this.internalDim),
      ...linearSpecs(key(this.prefix, 'out_proj'), this.internalDim, d),
    ];
  }

  /**
   * The rotary table for `n` query tokens: the configured feat_sizes grid, or — as the
   * official code does when the token count differs — a sqrt(n) x sqrt(n) grid.
   */
  private ropeTable(n: number): { cos: Float32Array; sin: Float32Array } {
    let t = this.tables.get(n);
    if (!t) {
      const [fx, fy] = this.cfg.feat_sizes;
      let endX = fx;
      let endY = fy;
      if (fx * fy !== n) {
        endX = endY = Math.sqrt(n);
        if (!Number.isInteger(endX)) throw new Error(`RoPEAttention: ${n} query tokens do not form a square grid`);
      }
      t = axialRopeTables(this.headDim, endX, endY, this.cfg.rope_theta);
      this.tables.set(n, t);
    }
    return t;
  }

  private separateHeads<T>(ops: Ops<T>, x: T): T {
    const n = ops.shape(x)[1];
    return ops.transpose(ops.reshape(x, [-1, n, this.cfg.num_heads, this.headDim]), [0, 2, 1, 3]);
  }

  /**
   * q (B, Nq, C), k and v (B, Nk, kvInDim) -> (B, Nq, C). The last `numKExcludeRope` keys
   * (object-pointer tokens) are not rotated.
   */
  forward<T>(ops: Ops<T>, q: T, k: T, v: T, numKExcludeRope = 0): T {
    q = this.separateHeads(ops, linear(ops, q, key(this.prefix, 'q_proj')));
    k = this.separateHeads(ops, linear(ops, k, key(this.prefix, 'k_proj')));
    v = this.separateHeads(ops, linear(ops, v, key(this.prefix, 'v_proj')));

    const [b, heads, nq, d] = ops.shape(q);
    const nk = ops.shape(k)[2];
    if (nq !== nk && !this.cfg.rope_k_repeat) throw new Error('RoPEAttention: query and key lengths differ without rope_k_repeat');
    const table = this.ropeTable(nq);
    const cos = ops.constant(table.cos, [nq, d / 2]);
    const sin = ops.constant(table.sin, [nq, d / 2]);
    q = applyRotary(ops, q, cos, sin);
    const numKRope = nk - numKExcludeRope;
    if (numKRope > 0) {
      if (numKExcludeRope > 0) {
        const kRope = ops.slice(k, [0, 0, 0, 0], [b, heads, numKRope, d]);
        const kRest = ops.slice(k, [0, 0, numKRope, 0], [b, heads, numKExcludeRope, d]);
        k = ops.concat([applyRotary(ops, kRope, cos, sin, this.cfg.rope_k_repeat), kRest], 2);
      } else {
        k = applyRotary(ops, k, cos, sin, this.cfg.rope_k_repeat);
      }
    }

    let out = ops.attention(q, k, v);
    out = ops.reshape(ops.transpose(out, [0, 2, 1, 3]), [-1, nq, this.internalDim]);
    return linear(ops, out, key(this.prefix, 'out_proj'));
  }
}

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
