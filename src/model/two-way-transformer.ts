/**
 * The SAM two-way transformer, after the official `sam2/modeling/sam/transformer.py`
 * (`Attention`, `TwoWayAttentionBlock`, `TwoWayTransformer`). Inference semantics: dropout is 0
 * (the official `Attention` here is built with dropout 0.0 anyway).
 *
 * Layouts: tokens are (B, N, C); the image is channels-last (B, h, w, C), which flattened to
 * (B, h*w, C) is exactly PyTorch's `flatten(2).permute(0, 2, 1)` of the NCHW map.
 */
import { key, layerNorm, layerNormSpecs, linear, linearSpecs, type Module, type Ops, type ParamSpec } from './ops.js';
import { MLP } from './sam2-utils.js';

/** PyTorch `nn.LayerNorm` default epsilon, used by every norm of the two-way transformer. */
export const TRANSFORMER_LN_EPS = 1e-5;

/**
 * Multi-head attention with an optional downscaled internal dimension
 * (`internal_dim = embedding_dim / downsample_rate`) and a separate key/value input width.
 */
export class Attention implements Module {
  readonly internalDim: number;
  readonly kvInDim: number;

  constructor(
    readonly prefix: string,
    readonly embeddingDim: number,
    readonly numHeads: number,
    readonly downsampleRate = 1,
    kvInDim: number | null = null,
  ) {
    this.kvInDim = kvInDim ?? embeddingDim;
    this.internalDim = Math.floor(embeddingDim / downsampleRate);
    if (this.internalDim % numHeads !== 0) {
      throw new Error(`Attention '${prefix}': num_heads (${numHeads}) must divide internal dim (${this.internalDim})`);
    }
  }

  paramSpecs(): ParamSpec[] {
    return [
      ...linearSpecs(key(this.prefix, 'q_proj'), this.embeddingDim, this.internalDim),
      ...linearSpecs(key(this.prefix, 'k_proj'), this.kvInDim, this.internalDim),
      ...linearSpecs(key(this.prefix, 'v_proj'), this.kvInDim, this.internalDim),
      ...linearSpecs(key(this.prefix, 'out_proj'), this.internalDim, this.embeddingDim),
    ];
  }

  /** (B, N, C) -> (B, heads, N, C / heads) */
  separateHeads<T>(ops: Ops<T>, x: T): T {
    const [, n, c] = ops.shape(x);
    return ops.transpose(ops.reshape(x, [-1, n, this.numHeads, c / this.numHeads]), [0, 2, 1, 3]);
  }

  /** (B, heads, N, C / heads) -> (B, N, C) */
  recombineHeads<T>(ops: Ops<T>, x: T): T {
    const [, h, n, d] = ops.shape(x);
    return ops.reshape(ops.transpose(x, [0, 2, 1, 3]), [-1, n, h * d]);
  }

  /** q (B, Nq, embedding_dim), k and v (B, Nk, kv_in_dim) -> (B, Nq, embedding_dim) */
  forward<T>(ops: Ops<T>, q: T, k: T, v: T): T {
    const qh = this.separateHeads(ops, linear(ops, q, key(this.prefix, 'q_proj')));
    const kh = this.separateHeads(ops, linear(ops, k, key(this.prefix, 'k_proj')));
    const vh = this.separateHeads(ops, linear(ops, v, key(this.prefix, 'v_proj')));
    const out = this.recombineHeads(ops, ops.attention(qh, kh, vh));
    return linear(ops, out, key(this.prefix, 'out_proj'));
  }
}

/**
 * Self-attention of the sparse tokens, cross-attention tokens -> image, a ReLU MLP on the tokens,
 * and cross-attention image -> tokens; each followed by a residual add and LayerNorm (eps 1e-5).
 */
export class TwoWayAttentionBlock implements Module {
  readonly selfAttn: Attention;
  readonly crossAttnTokenToImage: Attention;
  readonly mlp: MLP;
  readonly crossAttnImageToToken: Attention;

  constructor(
    readonly prefix: string,
    readonly embeddingDim: number,
    readonly numHeads: number,
    readonly mlpDim = 2048,
    readonly attentionDownsampleRate = 2,
    readonly skipFirstLayerPe = false,
  ) {
    this.selfAttn = new Attention(key(prefix, 'self_attn'), embeddingDim, numHeads);
    this.crossAttnTokenToImage = new Attention(key(prefix, 'cross_attn_token_to_image'), embeddingDim, numHeads, attentionDownsampleRate);
    this.mlp = new MLP(key(prefix, 'mlp'), embeddingDim, mlpDim, embeddingDim, 2, 'relu');
    this.crossAttnImageToToken = new Attention(key(prefix, 'cross_attn_image_to_token'), embeddingDim, numHeads, attentionDownsampleRate);
  }

  /** State-dict order of the official module. */
  paramSpecs(): ParamSpec[] {
    const d = this.embeddingDim;
    return [
      ...this.selfAttn.paramSpecs(),
      ...layerNormSpecs(key(this.prefix, 'norm1'), d),
      ...this.crossAttnTokenToImage.paramSpecs(),
      ...layerNormSpecs(key(this.prefix, 'norm2'), d),
      ...this.mlp.paramSpecs(),
      ...layerNormSpecs(key(this.prefix, 'norm3'), d),
      ...layerNormSpecs(key(this.prefix, 'norm4'), d),
      ...this.crossAttnImageToToken.paramSpecs(),
    ];
  }

  /** queries/queryPe (B, Nq, C), keys/keyPe (B, Nk, C) -> updated [queries, keys] */
  forward<T>(ops: Ops<T>, queries: T, keys: T, queryPe: T, keyPe: T): [T, T] {
    const norm = (x: T, name: string) => layerNorm(ops, x, key(this.prefix, name), TRANSFORMER_LN_EPS);

    // Self attention block
    if (this.skipFirstLayerPe) {
      queries = this.selfAttn.forward(ops, queries, queries, queries);
    } else {
      const q = ops.add(queries, queryPe);
      queries = ops.add(queries, this.selfAttn.forward(ops, q, q, queries));
    }
    queries = norm(queries, 'norm1');

    // Cross attention block, tokens attending to image embedding
    let q = ops.add(queries, queryPe);
    let k = ops.add(keys, keyPe);
    queries = norm(ops.add(queries, this.crossAttnTokenToImage.forward(ops, q, k, keys)), 'norm2');

    // MLP block
    queries = norm(ops.add(queries, this.mlp.forward(ops, queries)), 'norm3');

    // Cross attention block, image embedding attending to tokens
    q = ops.add(queries, queryPe);
    k = ops.add(keys, keyPe);
    keys = norm(ops.add(keys, this.crossAttnImageToToken.forward(ops, k, q, queries)), 'norm4');

    return [queries, keys];
  }
}

export interface TwoWayTransformerConfig {
  depth: number;
  embedding_dim: number;
  num_heads: number;
  mlp_dim: number;
  /** default 2, as the official constructor */
  attention_downsample_rate?: number;
}

/** A transformer decoder attending to an image with point queries whose position encoding is given. */
export class TwoWayTransformer implements Module {
  readonly layers: TwoWayAttentionBlock[];
  readonly finalAttnTokenToImage: Attention;
  readonly embeddingDim: number;

  constructor(
    readonly config: TwoWayTransformerConfig,
    readonly prefix: string,
  ) {
    const { depth, embedding_dim, num_heads, mlp_dim } = config;
    const rate = config.attention_downsample_rate ?? 2;
    this.embeddingDim = embedding_dim;
    this.layers = Array.from(
      { length: depth },
      (_, i) => new TwoWayAttentionBlock(key(prefix, `layers.${i}`), embedding_dim, num_heads, mlp_dim, rate, i === 0),
    );
    this.finalAttnTokenToImage = new Attention(key(prefix, 'final_attn_token_to_image'), embedding_dim, num_heads, rate);
  }

  paramSpecs(): ParamSpec[] {
    return [
      ...this.layers.flatMap((l) => l.paramSpecs()),
      ...this.finalAttnTokenToImage.paramSpecs(),
      ...layerNormSpecs(key(this.prefix, 'norm_final_attn'), this.embeddingDim),
    ];
  }

  /**
   * imageEmbedding and imagePe: (B, h, w, C) channels-last; pointEmbedding: (B, N, C).
   * Returns the processed tokens `queries` (B, N, C) and image `keys` (B, h*w, C).
   */
  forward<T>(ops: Ops<T>, imageEmbedding: T, imagePe: T, pointEmbedding: T): { queries: T; keys: T } {
    const [, h, w, c] = ops.shape(imageEmbedding);
    if (c !== this.embeddingDim) throw new Error(`TwoWayTransformer: image embedding has ${c} channels, expected ${this.embeddingDim}`);
    const imageTokens = ops.reshape(imageEmbedding, [-1, h * w, c]);
    const pe = ops.reshape(imagePe, [-1, h * w, c]);

    let queries = pointEmbedding;
    let keys = imageTokens;
    for (const layer of this.layers) {
      [queries, keys] = ops.checkpoint(layer.prefix, (layerOps, [q, k, qPe, kPe]) => layer.forward(layerOps, q, k, qPe, kPe), [queries, keys, pointEmbedding, pe]);
    }

    const q = ops.add(queries, pointEmbedding);
    const k = ops.add(keys, pe);
    queries = ops.add(queries, this.finalAttnTokenToImage.forward(ops, q, k, keys));
    queries = layerNorm(ops, queries, key(this.prefix, 'norm_final_attn'), TRANSFORMER_LN_EPS);
    return { queries, keys };
  }
}
