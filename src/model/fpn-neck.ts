/**
 * FPN neck and image encoder, after the official `sam2/modeling/backbones/image_encoder.py`,
 * channels-last throughout.
 */
import type { FpnNeckConfig, ImageEncoderConfig } from './config.js';
import { Hiera } from './hiera.js';
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

export interface ImageEncoderOutput<T> {
  /** the coarsest kept level, (B, S/16, S/16, d_model) for the tiny model */
  visionFeatures: T;
  /** kept levels after scalp, fine to coarse */
  backboneFpn: T[];
  /** their sine position encodings, (1, H_i, W_i, d_model) each */
  visionPosEnc: T[];
}

export class ImageEncoder implements Module {
  readonly trunk: Hiera;
  readonly neck: FpnNeck;

  constructor(
    readonly cfg: ImageEncoderConfig,
    readonly prefix = 'image_encoder',
  ) {
    this.trunk = new Hiera(cfg.trunk, key(prefix, 'trunk'));
    this.neck = new FpnNeck(cfg.neck, key(prefix, 'neck'));
    const trunkChannels = this.trunk.channelList;
    const neckChannels = cfg.neck.backbone_channel_list;
    if (trunkChannels.join() !== neckChannels.join()) {
      throw new Error(`Channel dims of trunk and neck do not match. Trunk: ${trunkChannels}, neck: ${neckChannels}`);
    }
  }

  paramSpecs(): ParamSpec[] {
    return [...this.trunk.paramSpecs(), ...this.neck.paramSpecs()];
  }

  /** image: (B, S, S, 3) normalized, channels-last. */
  forward<T>(ops: Ops<T>, image: T): ImageEncoderOutput<T> {
    const stagesOut = this.trunk.forward(ops, image);
    const kept = stagesOut.length - this.cfg.scalp;
    const { features, pos } = this.neck.forward(ops, stagesOut, kept);
    const backboneFpn = features.slice(0, kept);
    return { visionFeatures: backboneFpn[backboneFpn.length - 1], backboneFpn, visionPosEnc: pos };
  }
}
