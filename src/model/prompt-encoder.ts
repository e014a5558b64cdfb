/**
 * The SAM prompt encoder, after the official `sam2/modeling/sam/prompt_encoder.py`.
 *
 * Point labels are data (a graph input once exported), so the per-label embedding choice
 * (-1 padding / not-a-point, 0 negative, 1 positive, 2 and 3 box corners) is computed with
 * `ops.equal` masks and arithmetic, never by reading label values in JS. Selecting with a 0/1
 * mask is exact: `pe * (1 - m) + m * e` and `pe + m * e` give bit-for-bit the official
 * `torch.where` results for finite values.
 *
 * Layouts: coordinates in input pixels (x, y); dense outputs channels-last (B, h, w, C).
 */
import { conv2d, conv2dSpecs, key, layerNorm, layerNormSpecs, type Module, type Ops, type ParamSpec } from './ops.js';
import { LAYER_NORM_2D_EPS } from './sam2-utils.js';
import { PositionEmbeddingRandom } from './position-encoding.js';


/** pos/neg point + 2 box corners */
const NUM_POINT_EMBEDDINGS = 4;

export interface PromptEncoderConfig {
  embed_dim: number;
  /** (h, w) of the image embedding */
  image_embedding_size: [number, number];
  /** (H, W) of the (padded) model input */
  input_image_size: [number, number];
  mask_in_chans: number;
}

export interface PromptInputs<T> {
  /** coords (B, N, 2) x, y in input pixels; labels (B, N) float: -1 pad, 0 neg, 1 pos, 2/3 box corners */
  points?: { coords: T; labels: T };
  /** (B, 4) x0, y0, x1, y1 in input pixels */
  boxes?: T;
  /** (B, 4h, 4w, 1) mask logits at the mask input size; (B, 1, 4h, 4w) is accepted too (same memory layout) */
  masks?: T;
}

export interface PromptEmbeddings<T> {
  /** (B, N', C) */
  sparse: T;
  /** (B, h, w, C) */
  dense: T;
}

export class PromptEncoder implements Module {
  readonly embedDim: number;
  readonly peLayer: PositionEmbeddingRandom;
  /** (4h, 4w) */
  readonly maskInputSize: [number, number];

  constructor(
    readonly config: PromptEncoderConfig,
    readonly prefix: string,
  ) {
    this.embedDim = config.embed_dim;
    if (this.embedDim % 2 !== 0) throw new Error(`PromptEncoder: embed_dim must be even, got ${this.embedDim}`);
    if (config.mask_in_chans % 4 !== 0) throw new Error(`PromptEncoder: mask_in_chans must be a multiple of 4, got ${config.mask_in_chans}`);
    this.peLayer = new PositionEmbeddingRandom(this.embedDim / 2, key(prefix, 'pe_layer'));
    const [h, w] = config.image_embedding_size;
    this.maskInputSize = [4 * h, 4 * w];
  }

  private k(name: string): string {
    return key(this.prefix, name);
  }

  /** Every parameter (and the gaussian-matrix buffer), in the official state-dict order. */
  paramSpecs(): ParamSpec[] {
    const d = this.embedDim;
    const m = this.config.mask_in_chans;
    const embedding = (name: string): ParamSpec => ({ name: this.k(`${name}.weight`), shape: [1, d], init: { kind: 'normal', std: 1 } });
    return [
      ...this.peLayer.paramSpecs(),
      ...Array.from({ length: NUM_POINT_EMBEDDINGS }, (_, i) => embedding(`point_embeddings.${i}`)),
      embedding('not_a_point_embed'),
      ...conv2dSpecs(this.k('mask_downscaling.0'), 1, m / 4, 2),
      ...layerNormSpecs(this.k('mask_downscaling.1'), m / 4),
      ...conv2dSpecs(this.k('mask_downscaling.3'), m / 4, m, 2),
      ...layerNormSpecs(this.k('mask_downscaling.4'), m),
      ...conv2dSpecs(this.k('mask_downscaling.6'), m, d, 1),
      embedding('no_mask_embed'),
    ];
  }

  /** `get_dense_pe`: the point encoding of every image-embedding cell, (1, h, w, C). */
  densePe<T>(ops: Ops<T>): T {
    const [h, w] = this.config.image_embedding_size;
    return this.peLayer.forward(ops, h, w);
  }

  forward<T>(ops: Ops<T>, inputs: PromptInputs<T>): PromptEmbeddings<T> {
    const { points, boxes, masks } = inputs;
    const d = this.embedDim;
    const bs = this.validate(ops, inputs);

    const parts: T[] = [];
    if (points) parts.push(this.embedPoints(ops, points.coords, points.labels, boxes === undefined));
    if (boxes) parts.push(this.embedBoxes(ops, boxes));
    const sparse = parts.length === 0 ? ops.constant(new Float32Array(0), [bs, 0, d]) : parts.length === 1 ? parts[0] : ops.concat(parts, 1);

    let dense: T;
    if (masks) {
      dense = this.embedMasks(ops, masks);
    } else {
      const [h, w] = this.config.image_embedding_size;
      dense = ops.tile(ops.reshape(ops.param(this.k('no_mask_embed.weight')), [1, 1, 1, d]), [bs, h, w, 1]);
    }
    return { sparse, dense };
  }

  /** Shape checks (in JS, on static shapes only); returns the batch size. */
  private validate<T>(ops: Ops<T>, { points, boxes, masks }: PromptInputs<T>): number {
    const fmt = (s: number[]) => `(${s.join(', ')})`;
    let bs: number | undefined;
    const batch = (b: number, what: string) => {
      if (bs !== undefined && b !== bs) throw new Error(`PromptEncoder: ${what} has batch ${b}, other prompts have ${bs}`);
      bs = b;
    };
    if (points) {
      const cs = ops.shape(points.coords);
      const ls = ops.shape(points.labels);
      if (cs.length !== 3 || cs[2] !== 2) throw new Error(`PromptEncoder: point coords must be (B, N, 2), got ${fmt(cs)}`);
      if (ls.length !== 2 || ls[0] !== cs[0] || ls[1] !== cs[1]) {
        throw new Error(`PromptEncoder: point labels must be (${cs[0]}, ${cs[1]}) to match coords ${fmt(cs)}, got ${fmt(ls)}`);
      }
      batch(cs[0], 'points');
    }
    if (boxes) {
      const s = ops.shape(boxes);
      if (s.length !== 2 || s[1] !== 4) throw new Error(`PromptEncoder: boxes must be (B, 4), got ${fmt(s)}`);
      batch(s[0], 'boxes');
    }
    if (masks) {
      const s = ops.shape(masks);
      const [mh, mw] = this.maskInputSize;
      const nhwc = s.length === 4 && s[1] === mh && s[2] === mw && s[3] === 1;
      const nchw = s.length === 4 && s[1] === 1 && s[2] === mh && s[3] === mw;
      if (!nhwc && !nchw) throw new Error(`PromptEncoder: masks must be (B, ${mh}, ${mw}, 1), got ${fmt(s)}`);
      batch(s[0], 'masks');
    }
    return bs ?? 1;
  }

  /** `_embed_points`: (B, N, 2) coords and (B, N) labels -> (B, N (+1 pad), C). */
  private embedPoints<T>(ops: Ops<T>, coords: T, labels: T, pad: boolean): T {
    let pts = ops.add(coords, 0.5); // shift to the centre of the pixel
    let lbl = labels;
    if (pad) {
      // a padding point (0, 0) with label -1, appended without fixing the batch size
      pts = ops.pad(pts, [
        [0, 0],
        [0, 1],
        [0, 0],
      ]);
      lbl = ops.sub(
        ops.pad(ops.add(lbl, 1), [
          [0, 0],
          [0, 1],
        ]),
        1,
      );
    }
    const n = ops.shape(lbl)[1];
    let pe = this.peLayer.forwardWithCoords(ops, pts, this.config.input_image_size);
    const is = (value: number) => ops.reshape(ops.equal(lbl, value), [-1, n, 1]);

    // label -1: the not-a-point embedding replaces the position encoding
    const pad1 = is(-1);
    pe = ops.add(ops.mul(pe, ops.add(ops.neg(pad1), 1)), ops.mul(pad1, ops.param(this.k('not_a_point_embed.weight'))));
    // labels 0..3: add their learned embedding
    for (let i = 0; i < NUM_POINT_EMBEDDINGS; i++) {
      pe = ops.add(pe, ops.mul(is(i), ops.param(this.k(`point_embeddings.${i}.weight`))));
    }
    return pe;
  }

  /** `_embed_boxes`: (B, 4) -> (B, 2, C), corner embeddings 2 and 3 added. */
  private embedBoxes<T>(ops: Ops<T>, boxes: T): T {
    const coords = ops.reshape(ops.add(boxes, 0.5), [-1, 2, 2]);
    const pe = this.peLayer.forwardWithCoords(ops, coords, this.config.input_image_size);
    const corners = ops.concat([ops.param(this.k('point_embeddings.2.weight')), ops.param(this.k('point_embeddings.3.weight'))], 0);
    return ops.add(pe, ops.reshape(corners, [1, 2, this.embedDim]));
  }

  /** `_embed_masks`: (B, 4h, 4w, 1) -> (B, h, w, C). */
  private embedMasks<T>(ops: Ops<T>, masks: T): T {
    const [mh, mw] = this.maskInputSize;
    let x = ops.reshape(masks, [-1, mh, mw, 1]);
    x = conv2d(ops, x, this.k('mask_downscaling.0'), { stride: 2 });
    x = ops.gelu(layerNorm(ops, x, this.k('mask_downscaling.1'), LAYER_NORM_2D_EPS));
    x = conv2d(ops, x, this.k('mask_downscaling.3'), { stride: 2 });
    x = ops.gelu(layerNorm(ops, x, this.k('mask_downscaling.4'), LAYER_NORM_2D_EPS));
    return conv2d(ops, x, this.k('mask_downscaling.6'));
  }
}
