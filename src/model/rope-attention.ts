/**
 * Attention with axial rotary position encoding, after `RoPEAttention` of the official
 * `sam2/modeling/sam/transformer.py` (used by memory attention). Batch-first: q (B, Nq, C),
 * k and v (B, Nk, kvInDim).
 */
import type { RoPEAttentionConfig } from './config.js';
import { key, linear, linearSpecs, type Module, type Ops, type ParamSpec } from './ops.js';
import { applyRotary, axialRopeTables } from './position-encoding.js';

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
