/**
 * Hiera trunk, after the official `sam2/modeling/backbones/hieradet.py` (and the windowing
 * helpers of `backbones/utils.py`), channels-last throughout.
 */
import type { HieraConfig } from './config.js';
import { conv2d, conv2dSpecs, key, layerNorm, layerNormSpecs, linear, linearParts, linearSpecs, type Module, type Ops, type ParamSpec } from './ops.js';
import { MLP } from './sam2-utils.js';

/** Hiera's LayerNorm epsilon (official `partial(nn.LayerNorm, eps=1e-6)`). */
const LN_EPS = 1e-6;

/** One MultiScaleBlock's static configuration. */
export interface HieraBlockSpec {
  dim: number;
  dimOut: number;
  numHeads: number;
  /** 0 = global attention */
  windowSize: number;
  /** q-pooling stride at a stage transition, else null */
  qStride: number | null;
}

/** The official Hiera constructor's block schedule. */
export function hieraBlocks(cfg: HieraConfig): { blocks: HieraBlockSpec[]; stageEnds: number[] } {
  const { stages, window_spec: windowSpec, global_att_blocks: globalBlocks } = cfg;
  if (stages.length !== windowSpec.length) throw new Error('Hiera: stages and window_spec must have the same length');
  if (cfg.q_stride[0] !== cfg.q_stride[1]) throw new Error('Hiera: only square q_stride is supported');
  const stageEnds = stages.map((_, i) => stages.slice(0, i + 1).reduce((a, b) => a + b, 0) - 1);
  if (cfg.q_pool < 0 || cfg.q_pool > stageEnds.length - 1) throw new Error(`Hiera: q_pool ${cfg.q_pool} out of range`);
  const qPoolBlocks = stageEnds.slice(0, -1).map((e) => e + 1).slice(0, cfg.q_pool);
  const depth = stageEnds[stageEnds.length - 1] + 1;

  const blocks: HieraBlockSpec[] = [];
  let dim = cfg.embed_dim;
  let numHeads = cfg.num_heads;
  let curStage = 1;
  for (let i = 0; i < depth; i++) {
    let dimOut = dim;
    // lags by a block: the first block of a stage still uses the previous stage's window
    let windowSize = windowSpec[curStage - 1];
    if (globalBlocks.includes(i)) windowSize = 0;
    if (stageEnds.includes(i - 1)) {
      dimOut = Math.trunc(dim * cfg.dim_mul);
      numHeads = Math.trunc(numHeads * cfg.head_mul);
      curStage += 1;
    }
    blocks.push({ dim, dimOut, numHeads, windowSize, qStride: qPoolBlocks.includes(i) ? cfg.q_stride[0] : null });
    dim = dimOut;
  }
  return { blocks, stageEnds };
}

/**
 * 1-D PyTorch bicubic interpolation (`F.interpolate(mode='bicubic', align_corners=False)`,
 * A = -0.75, border indices clamped) as a dense (outSize, inSize) matrix.
 */
export function bicubicMatrix(inSize: number, outSize: number): Float32Array {
  const A = -0.75;
  const cc1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
  const cc2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  const f32 = Math.fround;
  const scale = f32(inSize / outSize);
  const m = new Float32Array(outSize * inSize);
  for (let o = 0; o < outSize; o++) {
    const real = f32(f32(scale * (o + 0.5)) - 0.5);
    const idx = Math.floor(real);
    const t = f32(real - idx);
    const w = [cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)];
    for (let k = 0; k < 4; k++) {
      const src = Math.min(Math.max(idx - 1 + k, 0), inSize - 1);
      m[o * inSize + src] += w[k];
    }
  }
  return m;
}

/** (B, H, W, C) -> (B * nWindows, ws, ws, C), zero-padding H and W up to multiples of ws. */
export function windowPartition<T>(ops: Ops<T>, x: T, ws: number): T {
  const [, h, w, c] = ops.shape(x);
  const padH = (ws - (h % ws)) % ws;
  const padW = (ws - (w % ws)) % ws;
  if (padH > 0 || padW > 0) x = ops.pad(x, [[0, 0], [0, padH], [0, padW], [0, 0]]);
  const [hp, wp] = [h + padH, w + padW];
  const grid = ops.reshape(x, [-1, hp / ws, ws, wp / ws, ws, c]);
  return ops.reshape(ops.transpose(grid, [0, 1, 3, 2, 4, 5]), [-1, ws, ws, c]);
}

/** Inverse of `windowPartition`, cropping the padding back to (h, w). */
export function windowUnpartition<T>(ops: Ops<T>, windows: T, ws: number, padHw: [number, number], hw: [number, number]): T {
  const [hp, wp] = padHw;
  const [h, w] = hw;
  const c = ops.shape(windows)[3];
  const grid = ops.reshape(windows, [-1, hp / ws, wp / ws, ws, ws, c]);
  let x = ops.reshape(ops.transpose(grid, [0, 1, 3, 2, 4, 5]), [-1, hp, wp, c]);
  if (hp > h || wp > w) x = ops.slice(x, [0, 0, 0, 0], [-1, h, w, c]);
  return x;
}

/** (B, N, heads * hd) -> (B, heads, N, hd) */
function splitHeads<T>(ops: Ops<T>, x: T, n: number, heads: number): T {
  const hd = ops.shape(x)[ops.shape(x).length - 1] / heads;
  if (heads === 1) return ops.reshape(x, [-1, 1, n, hd]);
  return ops.transpose(ops.reshape(x, [-1, n, heads, hd]), [0, 2, 1, 3]);
}

export class Hiera implements Module {
  readonly blocks: HieraBlockSpec[];
  readonly stageEnds: number[];
  /** Output channels per stage, fine to coarse. */
  readonly stageDims: number[];
  private readonly mlps: MLP[];
  private readonly interpCache = new Map<string, Float32Array>();

  constructor(
    readonly cfg: HieraConfig,
    readonly prefix = 'image_encoder.trunk',
  ) {
    ({ blocks: this.blocks, stageEnds: this.stageEnds } = hieraBlocks(cfg));
    this.stageDims = this.stageEnds.map((e) => this.blocks[e].dimOut);
    this.mlps = this.blocks.map(
      (b, i) => new MLP(this.blockKey(i, 'mlp'), b.dimOut, Math.trunc(b.dimOut * cfg.mlp_ratio), b.dimOut, 2, 'gelu'),
    );
  }

  /** Official `channel_list`: stage output dims, coarse to fine. */
  get channelList(): number[] {
    return [...this.stageDims].reverse();
  }

  private blockKey(i: number, name: string): string {
    return key(this.prefix, `blocks.${i}.${name}`);
  }

  paramSpecs(): ParamSpec[] {
    const c = this.cfg.embed_dim;
    const ws0 = this.cfg.window_spec[0];
    const specs: ParamSpec[] = [
      { name: key(this.prefix, 'pos_embed'), shape: [1, c, ...this.cfg.window_pos_embed_bkg_spatial_size], init: { kind: 'zeros' } },
      { name: key(this.prefix, 'pos_embed_window'), shape: [1, c, ws0, ws0], init: { kind: 'zeros' } },
      ...conv2dSpecs(key(this.prefix, 'patch_embed.proj'), 3, c, 7),
    ];
    this.blocks.forEach((b, i) => {
      specs.push(
        ...layerNormSpecs(this.blockKey(i, 'norm1'), b.dim),
        ...linearSpecs(this.blockKey(i, 'attn.qkv'), b.dim, 3 * b.dimOut),
        ...linearSpecs(this.blockKey(i, 'attn.proj'), b.dimOut, b.dimOut),
        ...layerNormSpecs(this.blockKey(i, 'norm2'), b.dimOut),
        ...this.mlps[i].paramSpecs(),
      );
      if (b.dim !== b.dimOut) specs.push(...linearSpecs(this.blockKey(i, 'proj'), b.dim, b.dimOut));
    });
    return specs;
  }

  /**
   * Per axis, [R | T] (out, in + ws): bicubic resize of the background embedding next to the
   * one-hot tiling of the window embedding (cached).
   */
  private posMatrix(inSize: number, ws: number, outSize: number): Float32Array {
    const k = `${inSize}:${ws}->${outSize}`;
    let m = this.interpCache.get(k);
    if (!m) {
      const r = bicubicMatrix(inSize, outSize);
      const cols = inSize + ws;
      m = new Float32Array(outSize * cols);
      for (let o = 0; o < outSize; o++) {
        m.set(r.subarray(o * inSize, (o + 1) * inSize), o * cols);
        m[o * cols + inSize + (o % ws)] = 1;
      }
      this.interpCache.set(k, m);
    }
    return m;
  }

  /**
   * Official `_get_pos_embed`, (1, h, w, C): pos_embed bicubic-resized to (h, w) plus
   * pos_embed_window tiled. Both are separable per channel, so with the block-diagonal
   * stack D = diag(pos_embed, pos_embed_window) it is one product My @ D @ Mx^T, done as two
   * matrix products through ops (pos_embed and pos_embed_window get gradients).
   */
  posEmbed<T>(ops: Ops<T>, h: number, w: number): T {
    const c = this.cfg.embed_dim;
    const [ph, pw] = this.cfg.window_pos_embed_bkg_spatial_size;
    const ws = this.cfg.window_spec[0];
    if (h % ws !== 0 || w % ws !== 0) throw new Error(`Hiera: the ${h}x${w} patch grid is not a multiple of the window ${ws}`);
    // (1, C, a, b) -> (a, b, C)
    const toHwc = (name: string) => {
      const p = ops.param(key(this.prefix, name));
      const [, , a, b] = ops.shape(p);
      return ops.reshape(ops.transpose(p, [0, 2, 3, 1]), [a, b, c]);
    };
    const diag = ops.add(
      ops.pad(toHwc('pos_embed'), [[0, ws], [0, ws], [0, 0]]),
      ops.pad(toHwc('pos_embed_window'), [[ph, 0], [pw, 0], [0, 0]]),
    ); // (ph + ws, pw + ws, C)
    const mx = ops.constant(this.posMatrix(pw, ws, w), [1, w, pw + ws]);
    const my = ops.constant(this.posMatrix(ph, ws, h), [h, ph + ws]);
    const byCols = ops.matMul(mx, diag); // (ph + ws, w, C)
    const out = ops.matMul(my, ops.reshape(byCols, [ph + ws, w * c])); // (h, w * C)
    return ops.reshape(out, [1, h, w, c]);
  }

  /** MultiScaleAttention on (B', H, W, dim) -> (B', H', W', dimOut), q max-pooled when qStride. */
  private attention<T>(ops: Ops<T>, x: T, i: number): T {
    const b = this.blocks[i];
    const [, h, w] = ops.shape(x);
    const [qFull, k, v] = linearParts(ops, x, this.blockKey(i, 'attn.qkv'), 3);
    let q = qFull;
    let [qh, qw] = [h, w];
    if (b.qStride) {
      q = ops.maxPool2d(q, b.qStride);
      [, qh, qw] = ops.shape(q);
    }
    const out = ops.attention(
      splitHeads(ops, ops.reshape(q, [-1, qh * qw, b.dimOut]), qh * qw, b.numHeads),
      splitHeads(ops, ops.reshape(k, [-1, h * w, b.dimOut]), h * w, b.numHeads),
      splitHeads(ops, ops.reshape(v, [-1, h * w, b.dimOut]), h * w, b.numHeads),
    ); // (B', heads, H'W', hd)
    const merged = b.numHeads === 1 ? out : ops.transpose(out, [0, 2, 1, 3]);
    return linear(ops, ops.reshape(merged, [-1, qh, qw, b.dimOut]), this.blockKey(i, 'attn.proj'));
  }

  /** MultiScaleBlock. */
  private block<T>(ops: Ops<T>, x: T, i: number): T {
    const b = this.blocks[i];
    let shortcut = x;
    const normed = layerNorm(ops, x, this.blockKey(i, 'norm1'), LN_EPS);
    if (b.dim !== b.dimOut) {
      shortcut = linear(ops, normed, this.blockKey(i, 'proj'));
      if (b.qStride) shortcut = ops.maxPool2d(shortcut, b.qStride);
    }
    let y: T;
    if (b.windowSize > 0) {
      const attended = this.attention(ops, windowPartition(ops, normed, b.windowSize), i);
      // after q-pooling the windows shrank by the stride; the grid is the shortcut's
      const ws = b.qStride ? b.windowSize / b.qStride : b.windowSize;
      const [, h, w] = ops.shape(shortcut);
      const padHw: [number, number] = [h + ((ws - (h % ws)) % ws), w + ((ws - (w % ws)) % ws)];
      y = windowUnpartition(ops, attended, ws, padHw, [h, w]);
    } else {
      y = this.attention(ops, normed, i);
    }
    x = ops.add(shortcut, y);
    return ops.add(x, this.mlps[i].forward(ops, layerNorm(ops, x, this.blockKey(i, 'norm2'), LN_EPS)));
  }

  /** image (B, S, S, 3) -> the stage outputs, channels-last, strides 4, 8, 16, 32. */
  forward<T>(ops: Ops<T>, image: T): T[] {
    let x = conv2d(ops, image, key(this.prefix, 'patch_embed.proj'), { stride: 4, pad: 3 });
    const [, h, w] = ops.shape(x);
    x = ops.add(x, this.posEmbed(ops, h, w));
    const outputs: T[] = [];
    for (let i = 0; i < this.blocks.length; i++) {
      x = ops.checkpoint(key(this.prefix, `blocks.${i}`), (blockOps, [input]) => [this.block(blockOps, input, i)], [x])[0];
      if (this.stageEnds.includes(i)) outputs.push(x);
    }
    return outputs;
  }
}
