/** FPN neck, after `FpnNeck` of the official `sam2/modeling/backbones/image_encoder.py`, channels-last. */
import type { FpnNeckConfig } from './config.js';
import { conv2d, conv2dSpecs, key, type Module, type Ops, type ParamSpec } from './ops.js';
import { PositionEmbeddingSine } from './position-encoding.js';

export interface FpnNeckOutput<T> {
  /** per level, fine to coarse: (B, H_i, W_i, d_model) */
  features: T[];
  /** per level: (1, H_i, W_i, d_model) sine encodings (constants; they broadcast over the batch) */
  pos: T[];
}

export class FpnNeck implements Module {
  readonly positionEncoding: PositionEmbeddingSine;

  constructor(
    readonly cfg: FpnNeckConfig,
    readonly prefix = 'image_encoder.neck',
  ) {
    if (cfg.fpn_interp_model !== 'nearest') throw new Error(`FpnNeck: fpn_interp_model '${cfg.fpn_interp_model}' is not supported`);
    if (cfg.fuse_type !== 'sum') throw new Error(`FpnNeck: fuse_type '${cfg.fuse_type}' is not supported`);
    this.positionEncoding = new PositionEmbeddingSine(cfg.position_encoding);
  }

  paramSpecs(): ParamSpec[] {
    return this.cfg.backbone_channel_list.flatMap((dim, j) =>
      conv2dSpecs(key(this.prefix, `convs.${j}.conv`), dim, this.cfg.d_model, this.cfg.kernel_size),
    );
  }

  /**
   * xs: trunk outputs fine to coarse. Top-down from the coarsest level: lateral conv, plus the
   * nearest-2x upsampled previous level on `fpn_top_down_levels`. Position encodings are made
   * only for the first `numPosLevels` levels (the ones the encoder keeps after scalp).
   */
  forward<T>(ops: Ops<T>, xs: T[], numPosLevels = xs.length): FpnNeckOutput<T> {
    const { backbone_channel_list: channels, fpn_top_down_levels: topDown, stride, padding } = this.cfg;
    if (xs.length !== channels.length) throw new Error(`FpnNeck: ${xs.length} inputs for ${channels.length} convs`);
    const n = xs.length - 1;
    const features: T[] = new Array(xs.length);
    let prev: T | undefined;
    for (let i = n; i >= 0; i--) {
      const lateral = conv2d(ops, xs[i], key(this.prefix, `convs.${n - i}.conv`), { stride, pad: padding });
      if (prev !== undefined && topDown.includes(i)) {
        const [, h, w] = ops.shape(prev);
        prev = ops.add(lateral, ops.resizeNearest(prev, [2 * h, 2 * w]));
      } else {
        prev = lateral;
      }
      features[i] = prev;
    }
    const pos = features.slice(0, numPosLevels).map((f) => {
      const [, h, w] = ops.shape(f);
      return this.positionEncoding.forward(ops, h, w);
    });
    return { features, pos };
  }
}
