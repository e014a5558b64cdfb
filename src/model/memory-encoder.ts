/**
 * The memory encoder, after the official `sam2/modeling/memory_encoder.py`: it fuses the
 * current frame's top-level image features with a (downsampled) mask into a memory feature
 * map, plus a sine position encoding for it.
 *
 * Layout: channels-last throughout, so PyTorch's channels-first LayerNorm2d is a plain
 * last-axis layerNorm and CXBlock's permutes disappear.
 */
import type { MemoryEncoderConfig } from './config.js';
import {
  conv2d,
  conv2dSpecs,
  key,
  layerNorm,
  layerNormSpecs,
  linear,
  linearSpecs,
  type Module,
  type Ops,
  type ParamSpec,
} from './ops.js';
import { LAYER_NORM_2D_EPS } from './sam2-utils.js';
import { PositionEmbeddingSine } from './position-encoding.js';


/** Progressively downsample a mask by total_stride (conv -> LayerNorm2d -> GELU per step), then 1x1 to embed_dim. */
export class MaskDownSampler implements Module {
  readonly numLayers: number;
  constructor(
    readonly cfg: MemoryEncoderConfig['mask_downsampler'],
    readonly prefix: string,
  ) {
    const totalStride = cfg.total_stride ?? 16;
    this.numLayers = Math.round(Math.log2(totalStride) / Math.log2(cfg.stride));
    if (cfg.stride ** this.numLayers !== totalStride) {
      throw new Error(`mask downsampler: stride ${cfg.stride} does not divide total stride ${totalStride} evenly`);
    }
  }

  /** Channel counts per downsampling step: 1 -> s^2 -> s^4 -> ... */
  private channels(): number[] {
    const s2 = this.cfg.stride ** 2;
    return Array.from({ length: this.numLayers + 1 }, (_, i) => s2 ** i);
  }

  paramSpecs(): ParamSpec[] {
    const ch = this.channels();
    const specs: ParamSpec[] = [];
    for (let i = 0; i < this.numLayers; i++) {
      specs.push(...conv2dSpecs(key(this.prefix, `encoder.${3 * i}`), ch[i], ch[i + 1], this.cfg.kernel_size));
      specs.push(...layerNormSpecs(key(this.prefix, `encoder.${3 * i + 1}`), ch[i + 1]));
    }
    specs.push(...conv2dSpecs(key(this.prefix, `encoder.${3 * this.numLayers}`), ch[this.numLayers], this.cfg.embed_dim, 1));
    return specs;
  }

  /** masks: (B, H, W, 1) -> (B, H/total_stride, W/total_stride, embed_dim) */
  forward<T>(ops: Ops<T>, x: T): T {
    for (let i = 0; i < this.numLayers; i++) {
      x = conv2d(ops, x, key(this.prefix, `encoder.${3 * i}`), { stride: this.cfg.stride, pad: this.cfg.padding });
      x = layerNorm(ops, x, key(this.prefix, `encoder.${3 * i + 1}`), LAYER_NORM_2D_EPS);
      x = ops.gelu(x);
    }
    return conv2d(ops, x, key(this.prefix, `encoder.${3 * this.numLayers}`));
  }
}

/** ConvNeXt block: depthwise conv -> LayerNorm2d -> Linear -> GELU -> Linear -> gamma scale, residual. */
export class CXBlock implements Module {
  constructor(
    readonly cfg: MemoryEncoderConfig['fuser']['layer'],
    readonly prefix: string,
  ) {}

  paramSpecs(): ParamSpec[] {
    const { dim, kernel_size: k, use_dwconv, layer_scale_init_value: ls } = this.cfg;
    const specs: ParamSpec[] = [];
    if (ls > 0) specs.push({ name: key(this.prefix, 'gamma'), shape: [dim], init: { kind: 'constant', value: ls } });
    specs.push(...conv2dSpecs(key(this.prefix, 'dwconv'), dim, dim, k, use_dwconv ? dim : 1));
    specs.push(...layerNormSpecs(key(this.prefix, 'norm'), dim));
    specs.push(...linearSpecs(key(this.prefix, 'pwconv1'), dim, 4 * dim));
    specs.push(...linearSpecs(key(this.prefix, 'pwconv2'), 4 * dim, dim));
    return specs;
  }

  /** x: (B, h, w, dim) */
  forward<T>(ops: Ops<T>, x: T): T {
    const { dim, padding, use_dwconv, layer_scale_init_value: ls } = this.cfg;
    let y = conv2d(ops, x, key(this.prefix, 'dwconv'), { pad: padding, groups: use_dwconv ? dim : 1 });
    y = layerNorm(ops, y, key(this.prefix, 'norm'), LAYER_NORM_2D_EPS);
    y = linear(ops, y, key(this.prefix, 'pwconv1'));
    y = ops.gelu(y);
    y = linear(ops, y, key(this.prefix, 'pwconv2'));
    if (ls > 0) y = ops.mul(y, ops.param(key(this.prefix, 'gamma')));
    return ops.add(x, y);
  }
}

/** A stack of CXBlocks (`input_projection` is off in every official config, so no `proj`). */
export class Fuser implements Module {
  readonly layers: CXBlock[];
  constructor(
    readonly cfg: MemoryEncoderConfig['fuser'],
    readonly prefix: string,
  ) {
    this.layers = Array.from({ length: cfg.num_layers }, (_, i) => new CXBlock(cfg.layer, key(prefix, `layers.${i}`)));
  }
  paramSpecs(): ParamSpec[] {
    return this.layers.flatMap((l) => l.paramSpecs());
  }
  forward<T>(ops: Ops<T>, x: T): T {
    for (const l of this.layers) x = l.forward(ops, x);
    return x;
  }
}

export interface MemoryEncoderOutput<T> {
  /** (B, h, w, out_dim) memory features */
  visionFeatures: T;
  /** (B, h, w, out_dim) sine position encoding of the memory features */
  visionPosEnc: T;
}

export class MemoryEncoder implements Module {
  readonly maskDownsampler: MaskDownSampler;
  readonly fuser: Fuser;
  readonly outDim: number;
  readonly inDim: number;
  readonly positionEncoding: PositionEmbeddingSine;

  constructor(
    readonly cfg: MemoryEncoderConfig,
    readonly prefix: string,
  ) {
    this.maskDownsampler = new MaskDownSampler(cfg.mask_downsampler, key(prefix, 'mask_downsampler'));
    this.fuser = new Fuser(cfg.fuser, key(prefix, 'fuser'));
    this.outDim = cfg.out_dim;
    this.inDim = cfg.in_dim;
    this.positionEncoding = new PositionEmbeddingSine(cfg.position_encoding);
  }

  paramSpecs(): ParamSpec[] {
    const specs = [
      ...this.maskDownsampler.paramSpecs(),
      ...conv2dSpecs(key(this.prefix, 'pix_feat_proj'), this.inDim, this.inDim, 1),
      ...this.fuser.paramSpecs(),
    ];
    if (this.outDim !== this.inDim) specs.push(...conv2dSpecs(key(this.prefix, 'out_proj'), this.inDim, this.outDim, 1));
    return specs;
  }

  /**
   * pixFeat: (B, h, w, in_dim) top-level image features (without no_mem_embed);
   * masks: (B, H, W, 1) mask logits (or already-scaled probabilities with skipMaskSigmoid)
   * at the image resolution, H = h * total_stride; (B, 1, H, W) is accepted too (same data).
   */
  forward<T>(ops: Ops<T>, pixFeat: T, masks: T, skipMaskSigmoid: boolean): MemoryEncoderOutput<T> {
    const ms = ops.shape(masks);
    if (ms.length === 4 && ms[1] === 1 && ms[3] !== 1) masks = ops.reshape(masks, [-1, ms[2], ms[3], 1]);
    const m = this.maskDownsampler.forward(ops, skipMaskSigmoid ? masks : ops.sigmoid(masks));
    let x = conv2d(ops, pixFeat, key(this.prefix, 'pix_feat_proj'));
    x = ops.add(x, m);
    x = this.fuser.forward(ops, x);
    if (this.outDim !== this.inDim) x = conv2d(ops, x, key(this.prefix, 'out_proj'));
    const [b, h, w] = ops.shape(x);
    const pe = this.positionEncoding.forward(ops, h, w);
    const visionPosEnc = b === 1 ? pe : ops.tile(pe, [b, 1, 1, 1]);
    return { visionFeatures: x, visionPosEnc };
  }
}
