/**
 * Image encoder (Hiera trunk + FPN neck), after `ImageEncoder` of the official
 * `sam2/modeling/backbones/image_encoder.py`, channels-last throughout.
 */
import type { ImageEncoderConfig } from './config.js';
import { FpnNeck } from './fpn-neck.js';
import { Hiera } from './hiera.js';
import { key, type Module, type Ops, type ParamSpec } from './ops.js';

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
