/**
 * The SAM mask decoder, after the official `sam2/modeling/sam/mask_decoder.py`, with the
 * `repeat_image=False` path (the image is already batched) that SAM2Base uses.
 *
 * Layouts: image embeddings, position encodings and high-res features are channels-last
 * (B, h, w, C); masks come out as (B, M, 4h, 4w) like the official logits (one map per token).
 */
import {
  conv2d,
  conv2dSpecs,
  convTranspose2dSpecs,
  key,
  layerNorm,
  layerNormSpecs,
  linear,
  linearSpecs,
  type Module,
  type Ops,
  type ParamSpec,
} from './ops.js';
import { greaterThanZero, LAYER_NORM_2D_EPS, MLP, oneMinus } from './sam2-utils.js';
import { TwoWayTransformer, type TwoWayTransformerConfig } from './two-way-transformer.js';


export interface MaskDecoderConfig {
  num_multimask_outputs: number;
  transformer_dim: number;
  transformer: TwoWayTransformerConfig;
  iou_head_depth: number;
  iou_head_hidden_dim: number;
  use_high_res_features: boolean;
  iou_prediction_use_sigmoid: boolean;
  pred_obj_scores: boolean;
  pred_obj_scores_mlp: boolean;
  use_multimask_token_for_obj_ptr: boolean;
}

/**
 * Official `dynamic_multimask_via_stability`: with single-mask output, the single-mask token's
 * mask is kept when its stability score (area above +delta / area above -delta) is at least
 * `thresh`, else the best-IoU of the multimask outputs is taken. Inference only (the official
 * decoder skips it while training).
 */
export interface MultimaskStability {
  delta: number;
  thresh: number;
}

/**
 * What the official predictors use: `build_sam2` / `build_sam2_video_predictor` with
 * `apply_postprocessing=True` switch the stability fallback on with delta 0.05 and threshold 0.98;
 * a config's `sam_mask_decoder_extra_args` may set other values or switch it off.
 */
export function predictorStability(extraArgs: Record<string, unknown> | null | undefined): MultimaskStability | undefined {
  const a = extraArgs ?? {};
  if (a.dynamic_multimask_via_stability === false) return undefined;
  const num = (v: unknown, d: number) => (typeof v === 'number' ? v : d);
  return { delta: num(a.dynamic_multimask_stability_delta, 0.05), thresh: num(a.dynamic_multimask_stability_thresh, 0.98) };
}

export interface MaskDecoderInputs<T> {
  /** (B, h, w, C) */
  imageEmbeddings: T;
  /** (1, h, w, C), from `PromptEncoder.densePe` */
  imagePe: T;
  /** (B, N, C) */
  sparse: T;
  /** (B, h, w, C) (batch 1 broadcasts) */
  dense: T;
  multimaskOutput: boolean;
  /** inference: the stability fallback for single-mask output (absent while training) */
  stability?: MultimaskStability;
  /** [(B, 4h, 4w, C/8), (B, 2h, 2w, C/4)], already through conv_s0 / conv_s1 */
  highResFeatures?: [T, T];
}

/** What `predict_masks` returns: every mask token's output, before the multimask selection. */
export interface MaskDecoderRawOutput<T> {
  /** (B, num_mask_tokens, 4h, 4w) mask logits */
  masks: T;
  /** (B, num_mask_tokens) */
  iouPred: T;
  /** (B, num_mask_tokens, C) */
  maskTokensOut: T;
  /** (B, 1) */
  objectScoreLogits: T;
}

/** What the official `MaskDecoder.forward` returns (after multimask selection). */
export interface MaskDecoderOutput<T> {
  /** (B, M, 4h, 4w) low-res mask logits; M = 3 with multimask output, else 1 */
  masks: T;
  /** (B, M) */
  iouPred: T;
  /** (B, M', C): the multimask tokens when multimask output and use_multimask_token_for_obj_ptr, else the single-mask token */
  samTokensOut: T;
  /** (B, 1) object score logits (10 when the model has no object-score head) */
  objectScoreLogits: T;
}

export class MaskDecoder implements Module {
  readonly transformer: TwoWayTransformer;
  readonly numMaskTokens: number;
  readonly hypernetworkMlps: MLP[];
  readonly iouPredictionHead: MLP;
  readonly predObjScoreHead: MLP | null;

  constructor(
    readonly config: MaskDecoderConfig,
    readonly prefix: string,
  ) {
    const d = config.transformer_dim;
    this.transformer = new TwoWayTransformer(config.transformer, key(prefix, 'transformer'));
    this.numMaskTokens = config.num_multimask_outputs + 1;
    this.hypernetworkMlps = Array.from(
      { length: this.numMaskTokens },
      (_, i) => new MLP(key(prefix, `output_hypernetworks_mlps.${i}`), d, d, d / 8, 3),
    );
    this.iouPredictionHead = new MLP(
      key(prefix, 'iou_prediction_head'),
      d,
      config.iou_head_hidden_dim,
      this.numMaskTokens,
      config.iou_head_depth,
      'relu',
      config.iou_prediction_use_sigmoid,
    );
    this.predObjScoreHead =
      config.pred_obj_scores && config.pred_obj_scores_mlp ? new MLP(key(prefix, 'pred_obj_score_head'), d, d, 1, 3) : null;
  }

  private k(name: string): string {
    return key(this.prefix, name);
  }

  /** Every parameter, in the official state-dict order. */
  paramSpecs(): ParamSpec[] {
    const c = this.config;
    const d = c.transformer_dim;
    const embedding = (name: string, rows: number): ParamSpec => ({
      name: this.k(`${name}.weight`),
      shape: [rows, d],
      init: { kind: 'normal', std: 1 },
    });
    const specs: ParamSpec[] = [...this.transformer.paramSpecs(), embedding('iou_token', 1), embedding('mask_tokens', this.numMaskTokens)];
    if (c.pred_obj_scores) specs.push(embedding('obj_score_token', 1));
    specs.push(
      ...convTranspose2dSpecs(this.k('output_upscaling.0'), d, d / 4, 2),
      ...layerNormSpecs(this.k('output_upscaling.1'), d / 4),
      ...convTranspose2dSpecs(this.k('output_upscaling.3'), d / 4, d / 8, 2),
    );
    if (c.use_high_res_features) {
      specs.push(...conv2dSpecs(this.k('conv_s0'), d, d / 8, 1), ...conv2dSpecs(this.k('conv_s1'), d, d / 4, 1));
    }
    specs.push(...this.hypernetworkMlps.flatMap((m) => m.paramSpecs()), ...this.iouPredictionHead.paramSpecs());
    if (c.pred_obj_scores) {
      specs.push(...(this.predObjScoreHead ? this.predObjScoreHead.paramSpecs() : linearSpecs(this.k('pred_obj_score_head'), d, 1)));
    }
    return specs;
  }

  /** The stride-4 backbone feature through `conv_s0` (1x1 conv, C -> C/8); NHWC. */
  convS0<T>(ops: Ops<T>, x: T): T {
    this.requireHighRes();
    return conv2d(ops, x, this.k('conv_s0'));
  }

  /** The stride-8 backbone feature through `conv_s1` (1x1 conv, C -> C/4); NHWC. */
  convS1<T>(ops: Ops<T>, x: T): T {
    this.requireHighRes();
    return conv2d(ops, x, this.k('conv_s1'));
  }

  private requireHighRes(): void {
    if (!this.config.use_high_res_features) throw new Error('MaskDecoder: built without use_high_res_features, there is no conv_s0/conv_s1');
  }

  /** The official `forward`: `predictMasks`, then the multimask selection. */
  forward<T>(ops: Ops<T>, inputs: MaskDecoderInputs<T>): MaskDecoderOutput<T> {
    const raw = this.predictMasks(ops, inputs);
    return this.selectOutputs(ops, raw, inputs.multimaskOutput, inputs.stability);
  }

  /**
   * The official output selection: masks/IoU 1.. with multimask output, else 0 (or, with
   * `stability`, the `dynamicMultimaskViaStability` choice); tokens 1.. when multimask output and
   * `use_multimask_token_for_obj_ptr`, else always token 0.
   */
  selectOutputs<T>(ops: Ops<T>, raw: MaskDecoderRawOutput<T>, multimaskOutput: boolean, stability?: MultimaskStability): MaskDecoderOutput<T> {
    const n = this.numMaskTokens;
    const [, , mh, mw] = ops.shape(raw.masks);
    const c = this.config.transformer_dim;
    const [start, count] = multimaskOutput ? [1, n - 1] : [0, 1];
    let masks = ops.slice(raw.masks, [0, start, 0, 0], [-1, count, mh, mw]);
    let iouPred = ops.slice(raw.iouPred, [0, start], [-1, count]);
    if (!multimaskOutput && stability) ({ mask: masks, iou: iouPred } = dynamicMultimaskViaStability(ops, raw.masks, raw.iouPred, stability));
    const samTokensOut =
      multimaskOutput && this.config.use_multimask_token_for_obj_ptr
        ? ops.slice(raw.maskTokensOut, [0, 1, 0], [-1, n - 1, c])
        : ops.slice(raw.maskTokensOut, [0, 0, 0], [-1, 1, c]);
    return { masks, iouPred, samTokensOut, objectScoreLogits: raw.objectScoreLogits };
  }

  /** The official `predict_masks` (repeat_image=False): outputs of every mask token. */
  predictMasks<T>(ops: Ops<T>, inputs: MaskDecoderInputs<T>): MaskDecoderRawOutput<T> {
    const c = this.config;
    const d = c.transformer_dim;
    const { imageEmbeddings, imagePe, sparse, dense } = inputs;
    const [b, h, w, ch] = ops.shape(imageEmbeddings);
    const sparseShape = ops.shape(sparse);
    if (ch !== d) throw new Error(`MaskDecoder: image embeddings have ${ch} channels, expected ${d}`);
    if (sparseShape.length !== 3 || sparseShape[0] !== b || sparseShape[2] !== d) {
      throw new Error(`MaskDecoder: sparse prompt embeddings must be (${b}, N, ${d}), got (${sparseShape.join(', ')})`);
    }
    const peShape = ops.shape(imagePe);
    if (peShape.length !== 4 || peShape[0] !== 1 || peShape[1] !== h || peShape[2] !== w || peShape[3] !== d) {
      throw new Error(`MaskDecoder: image_pe must be (1, ${h}, ${w}, ${d}), got (${peShape.join(', ')})`);
    }

    // Output tokens: [obj_score_token], iou_token, mask_tokens, then the prompt tokens.
    const s = c.pred_obj_scores ? 1 : 0;
    const tokenWeights = [ops.param(this.k('iou_token.weight')), ops.param(this.k('mask_tokens.weight'))];
    if (c.pred_obj_scores) tokenWeights.unshift(ops.param(this.k('obj_score_token.weight')));
    const numOut = s + 1 + this.numMaskTokens;
    const outputTokens = ops.tile(ops.reshape(ops.concat(tokenWeights, 0), [1, numOut, d]), [b, 1, 1]);
    const tokens = ops.concat([outputTokens, sparse], 1);

    const src = ops.add(imageEmbeddings, dense);
    const posSrc = ops.tile(imagePe, [b, 1, 1, 1]);

    // Run the transformer
    const { queries: hs, keys } = this.transformer.forward(ops, src, posSrc, tokens);
    const iouTokenOut = ops.reshape(ops.slice(hs, [0, s, 0], [-1, 1, d]), [-1, d]);
    const maskTokensOut = ops.slice(hs, [0, s + 1, 0], [-1, this.numMaskTokens, d]);

    // Upscale mask embeddings and predict masks using the mask tokens
    const srcMap = ops.reshape(keys, [-1, h, w, d]);
    const dc = (x: T, i: number) =>
      ops.convTranspose2d(x, ops.param(this.k(`output_upscaling.${i}.weight`)), ops.param(this.k(`output_upscaling.${i}.bias`)), 2);
    let up: T;
    if (!c.use_high_res_features) {
      up = ops.gelu(layerNorm(ops, dc(srcMap, 0), this.k('output_upscaling.1'), LAYER_NORM_2D_EPS));
      up = ops.gelu(dc(up, 3));
    } else {
      if (!inputs.highResFeatures) throw new Error('MaskDecoder: use_high_res_features is set but no highResFeatures were given');
      const [featS0, featS1] = inputs.highResFeatures;
      this.checkHighRes(ops, featS1, [b, 2 * h, 2 * w, d / 4], 'highResFeatures[1] (stride 8)');
      this.checkHighRes(ops, featS0, [b, 4 * h, 4 * w, d / 8], 'highResFeatures[0] (stride 4)');
      up = ops.gelu(layerNorm(ops, ops.add(dc(srcMap, 0), featS1), this.k('output_upscaling.1'), LAYER_NORM_2D_EPS));
      up = ops.gelu(ops.add(dc(up, 3), featS0));
    }

    const hyperIn = ops.concat(
      this.hypernetworkMlps.map((mlp, i) => mlp.forward(ops, ops.slice(maskTokensOut, [0, i, 0], [-1, 1, d]))),
      1,
    ); // (B, num_mask_tokens, C/8)
    const [, uh, uw, uc] = ops.shape(up);
    const masksFlat = ops.matMul(hyperIn, ops.reshape(up, [-1, uh * uw, uc]), false, true); // (B, T, uh*uw)
    const masks = ops.reshape(masksFlat, [-1, this.numMaskTokens, uh, uw]);

    // Mask quality and object score
    const iouPred = this.iouPredictionHead.forward(ops, iouTokenOut);
    let objectScoreLogits: T;
    if (c.pred_obj_scores) {
      const objToken = ops.reshape(ops.slice(hs, [0, 0, 0], [-1, 1, d]), [-1, d]);
      objectScoreLogits = this.predObjScoreHead
        ? this.predObjScoreHead.forward(ops, objToken)
        : linear(ops, objToken, this.k('pred_obj_score_head'));
    } else {
      // assume the object is present, sigmoid(10) ~ 1
      objectScoreLogits = ops.constant(new Float32Array(b).fill(10), [b, 1]);
    }
    return { masks, iouPred, maskTokensOut, objectScoreLogits };
  }

  private checkHighRes<T>(ops: Ops<T>, x: T, want: number[], what: string): void {
    const got = ops.shape(x);
    if (got.length !== 4 || got.some((v, i) => v !== want[i])) {
      throw new Error(`MaskDecoder: ${what} must be (${want.join(', ')}), got (${got.join(', ')})`);
    }
  }
}

/**
 * The best-IoU choice among M masks, as the official `_forward_sam_heads` (and the image
 * predictor) make it with `torch.argmax(ious, dim=-1)`: masks (B, M, h, w), ious (B, M) -> the
 * chosen mask (B, 1, h, w), its IoU (B, 1), and the choice as a one-hot (B, M) (first maximum).
 */
export function pickBestMask<T>(ops: Ops<T>, masks: T, ious: T): { mask: T; iou: T; choice: T } {
  const m = ops.shape(ious)[1];
  const col = (i: number) => ops.slice(ious, [0, i], [-1, 1]);
  // a >= b  <=>  relu(b - a) == 0
  const ge = (a: T, b: T) => ops.equal(ops.relu(ops.sub(b, a)), 0);
  const picks: T[] = [];
  let taken: T | undefined;
  for (let i = 0; i < m; i++) {
    let s: T | undefined;
    for (let j = i + 1; j < m; j++) s = s === undefined ? ge(col(i), col(j)) : ops.mul(s, ge(col(i), col(j)));
    if (s === undefined) s = ops.add(ops.mul(col(i), 0), 1);
    if (taken !== undefined) s = ops.mul(s, oneMinus(ops, taken));
    picks.push(s);
    taken = taken === undefined ? s : ops.add(taken, s);
  }
  const choice = ops.concat(picks, 1);
  return {
    mask: ops.sum(ops.mul(masks, ops.reshape(choice, [-1, m, 1, 1])), [1], true),
    iou: ops.sum(ops.mul(ious, choice), [1], true),
    choice,
  };
}

/**
 * Official `_get_stability_scores`: per mask of (B, M, h, w) logits, the area above +delta over
 * the area above -delta (1 where the latter is empty) -> (B, M).
 */
export function stabilityScores<T>(ops: Ops<T>, logits: T, delta: number): T {
  const [, m, h, w] = ops.shape(logits);
  const flat = ops.reshape(logits, [-1, m, h * w]);
  const areaI = ops.sum(greaterThanZero(ops, ops.sub(flat, delta)), [2]);
  const areaU = ops.sum(greaterThanZero(ops, ops.add(flat, delta)), [2]);
  const empty = ops.equal(areaU, 0);
  return ops.div(ops.add(areaI, empty), ops.add(areaU, empty));
}

/**
 * Official `_dynamic_multimask_via_stability` on every token's output (masks (B, T, h, w), IoU
 * (B, T), token 0 the single-mask one): token 0's mask and IoU where its stability score reaches
 * `thresh`, else those of the best-IoU multimask token. -> mask (B, 1, h, w), iou (B, 1).
 */
export function dynamicMultimaskViaStability<T>(ops: Ops<T>, masks: T, ious: T, s: MultimaskStability): { mask: T; iou: T } {
  const [, t, h, w] = ops.shape(masks);
  const single = ops.slice(masks, [0, 0, 0, 0], [-1, 1, h, w]);
  const singleIou = ops.slice(ious, [0, 0], [-1, 1]);
  const best = pickBestMask(ops, ops.slice(masks, [0, 1, 0, 0], [-1, t - 1, h, w]), ops.slice(ious, [0, 1], [-1, t - 1]));
  // score >= thresh  <=>  relu(thresh - score) == 0
  const stable = ops.equal(ops.relu(ops.add(ops.neg(stabilityScores(ops, single, s.delta)), s.thresh)), 0); // (B, 1)
  const either = (a: T, b: T, keep: T) => ops.add(ops.mul(a, keep), ops.mul(b, oneMinus(ops, keep)));
  return { mask: either(single, best.mask, ops.reshape(stable, [-1, 1, 1, 1])), iou: either(singleIou, best.iou, stable) };
}
