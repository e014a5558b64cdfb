/**
 * The exported graphs, each traced from the SAM2Base methods the training and the TypeScript
 * predictor run (no second copy of the network). Image-path graph inputs and outputs are
 * channels-first like the official export (NCHW at the boundary, channels-last inside);
 * memory-path tensors that only travel between our own graphs stay channels-last.
 * S = image size, h = S/16, C = hidden dim, Cm = memory dim; B, N, F, P are dynamic.
 *
 * | file                          | inputs -> outputs                                                   | from |
 * | image_encoder.onnx            | image (B,3,S,S) normalized -> image_embed (B,C,h,h) with no_mem_embed, high_res_0 (B,C/8,4h,4h), high_res_1 (B,C/4,2h,2h), vision_feats (B,C,h,h) without it | encodeFrame, withNoMemEmbed |
 * | mask_decoder.onnx             | image_embed, high_res_0/1, point_coords (B,N,2) in model pixels 0..S, point_labels (B,N), mask_input (B,1,4h,4h), has_mask_input (B) -> low_res_masks (B,1,4h,4h), iou_predictions (B,1), sam_tokens (B,1,C), the same with _multi (3 masks), low_res_masks_stable / iou_predictions_stable (the single mask, or the best multimask one when unstable: predictorStability), object_score_logits (B,1) | promptEncoder.forward, maskDecoder.predictMasks / selectOutputs |
 * | sam_heads.onnx                | pix_feat (B,C,h,h), high_res_0/1, point_coords, point_labels -> pred_masks (B,1,4h,4h) gated (with the stability fallback), obj_ptr (B,C), the same with _multi (best IoU), object_score_logits | forwardSamHeads (with the object-pointer projection) |
 * | mask_as_output.onnx           | vision_feats, high_res_0/1, mask (B,1,S,S) -> pred_masks, obj_ptr, object_score_logits | useMaskAsOutput |
 * | memory_encoder(_binarized).onnx | vision_feats, pred_masks, object_score_logits -> maskmem_features (B,h,h,Cm), maskmem_pos_enc (B,h,h,Cm) | upsampleMasks + encodeNewMemory (sigmoid / binarized masks) |
 * | memory_attention.onnx         | vision_feats (1,C,h,h), memory and memory_pos_enc (F,h,h,Cm), memory_tpos (F,num_maskmem) one-hot, obj_ptrs (P,C), obj_ptr_tpos (P,1) -> pix_feat (1,C,h,h) | attendToMemory (the memory-bank assembly + memory attention that conditionOnMemory runs) |
 */
import type { Sam2Config } from '../model/config.js';
import { predictorStability } from '../model/mask-decoder.js';
import type { Ops } from '../model/ops.js';
import { upsampleMasks } from '../model/resize.js';
import { BACKBONE_STRIDE, type FrameFeatures, type SAM2Base } from '../model/sam2.js';
import type { GraphDef, GraphIO } from './onnx-ops.js';

export const GRAPH_FILES = {
  imageEncoder: 'image_encoder.onnx',
  maskDecoder: 'mask_decoder.onnx',
  samHeads: 'sam_heads.onnx',
  maskAsOutput: 'mask_as_output.onnx',
  memoryEncoder: 'memory_encoder.onnx',
  memoryEncoderBinarized: 'memory_encoder_binarized.onnx',
  memoryAttention: 'memory_attention.onnx',
} as const;
export type GraphKey = keyof typeof GRAPH_FILES;

/** `<export>/medtune-onnx.json`: what an export holds, read back by the runtime. */
export const MANIFEST_FILE = 'medtune-onnx.json';

export interface Manifest {
  format: 'medtune-onnx';
  version: 1;
  opset: number;
  image_size: number;
  /** the model input is (gray or RGB in [0, 1] - mean) / std per channel, NCHW */
  normalization: { mean: number[]; std: number[] };
  graphs: Record<GraphKey, string>;
  config: Sam2Config;
}

const NCHW = [0, 3, 1, 2];
const NHWC = [0, 2, 3, 1];

/** Geometry every graph shares. */
export interface Geometry {
  S: number;
  h: number;
  C: number;
  Cm: number;
}

export function geometry(config: Sam2Config): Geometry {
  return {
    S: config.image_size,
    h: config.image_size / BACKBONE_STRIDE,
    C: config.image_encoder.neck.d_model,
    Cm: config.memory_encoder.out_dim,
  };
}

function toNhwc<T>(ops: Ops<T>, x: T): T {
  return ops.transpose(x, NHWC);
}
function toNchw<T>(ops: Ops<T>, x: T): T {
  return ops.transpose(x, NCHW);
}

/** The prompt points (box corners are two points with labels 2 and 3) as dynamic graph inputs. */
function pointInputs<T>(io: GraphIO<T>): { coords: T; labels: T } {
  return {
    coords: io.input('point_coords', ['batch', 'num_points', 2]),
    labels: io.input('point_labels', ['batch', 'num_points']),
  };
}

/** Image-path inputs shared by the decoder graphs: high-res maps, NCHW, batch symbolic. */
function highResInputs<T>(ops: Ops<T>, io: GraphIO<T>, g: Geometry): [T, T] {
  return [
    toNhwc(ops, io.input('high_res_0', ['batch', g.C / 8, 4 * g.h, 4 * g.h])),
    toNhwc(ops, io.input('high_res_1', ['batch', g.C / 4, 2 * g.h, 2 * g.h])),
  ];
}

export function imageEncoderGraph(model: SAM2Base): GraphDef {
  const g = geometry(model.config);
  return {
    name: 'image_encoder',
    symbols: { batch: 2 },
    build(ops, io) {
      const image = toNhwc(ops, io.input('image', ['batch', 3, g.S, g.S]));
      const frame = model.encodeFrame(ops, image);
      io.output('image_embed', toNchw(ops, model.withNoMemEmbed(ops, frame.visionFeats)));
      io.output('high_res_0', toNchw(ops, frame.highRes[0]));
      io.output('high_res_1', toNchw(ops, frame.highRes[1]));
      io.output('vision_feats', toNchw(ops, frame.visionFeats));
    },
  };
}

export function maskDecoderGraph(model: SAM2Base): GraphDef {
  const g = geometry(model.config);
  return {
    name: 'mask_decoder',
    symbols: { batch: 2, num_points: 2 },
    build(ops, io) {
      const imageEmbed = toNhwc(ops, io.input('image_embed', ['batch', g.C, g.h, g.h]));
      const highRes = highResInputs(ops, io, g);
      const { coords, labels } = pointInputs(io);
      const maskInput = toNhwc(ops, io.input('mask_input', ['batch', 1, 4 * g.h, 4 * g.h]));
      const hasMask = ops.reshape(io.input('has_mask_input', ['batch']), [-1, 1, 1, 1]);
      const pe = model.promptEncoder;
      const withMask = pe.forward(ops, { points: { coords, labels }, masks: maskInput });
      const withoutMask = pe.forward(ops, { points: { coords, labels } });
      // dense prompt: the mask embedding where has_mask_input is 1, no_mask_embed where it is 0
      const dense = ops.add(ops.mul(withMask.dense, hasMask), ops.mul(withoutMask.dense, ops.add(ops.neg(hasMask), 1)));
      const stability = predictorStability(model.config.sam_mask_decoder_extra_args);
      const raw = model.maskDecoder.predictMasks(ops, {
        imageEmbeddings: imageEmbed,
        imagePe: pe.densePe(ops),
        sparse: withMask.sparse,
        dense,
        multimaskOutput: false,
        highResFeatures: model.config.use_high_res_features_in_sam ? highRes : undefined,
      });
      for (const [suffix, multi] of [['', false], ['_multi', true]] as const) {
        const out = model.maskDecoder.selectOutputs(ops, raw, multi);
        io.output(`low_res_masks${suffix}`, out.masks);
        io.output(`iou_predictions${suffix}`, out.iouPred);
        io.output(`sam_tokens${suffix}`, out.samTokensOut);
      }
      // what the official image predictor returns for single-mask output (the tokens are token 0's)
      const stable = model.maskDecoder.selectOutputs(ops, raw, false, stability);
      io.output('low_res_masks_stable', stable.masks);
      io.output('iou_predictions_stable', stable.iouPred);
      io.output('object_score_logits', raw.objectScoreLogits);
    },
  };
}

export function samHeadsGraph(model: SAM2Base): GraphDef {
  const g = geometry(model.config);
  return {
    name: 'sam_heads',
    symbols: { batch: 2, num_points: 2 },
    build(ops, io) {
      const pix = toNhwc(ops, io.input('pix_feat', ['batch', g.C, g.h, g.h]));
      const highRes = highResInputs(ops, io, g);
      const { coords, labels } = pointInputs(io);
      const stability = predictorStability(model.config.sam_mask_decoder_extra_args);
      for (const [suffix, multi] of [['', false], ['_multi', true]] as const) {
        const out = model.forwardSamHeads(ops, { backboneFeatures: pix, highRes, points: { coords, labels }, multimaskOutput: multi, stability });
        io.output(`pred_masks${suffix}`, out.lowResMasks);
        io.output(`obj_ptr${suffix}`, out.objPtr);
        // the object score does not depend on the mask choice
        if (!multi) io.output('object_score_logits', out.objectScoreLogits);
      }
    },
  };
}

export function maskAsOutputGraph(model: SAM2Base): GraphDef {
  const g = geometry(model.config);
  return {
    name: 'mask_as_output',
    symbols: { batch: 2 },
    build(ops, io) {
      const feats = toNhwc(ops, io.input('vision_feats', ['batch', g.C, g.h, g.h]));
      const highRes = highResInputs(ops, io, g);
      const mask = io.input('mask', ['batch', 1, g.S, g.S]);
      const out = model.useMaskAsOutput(ops, feats, highRes, mask);
      io.output('pred_masks', out.lowResMasks);
      io.output('obj_ptr', out.objPtr);
      io.output('object_score_logits', out.objectScoreLogits);
    },
  };
}

export function memoryEncoderGraph(model: SAM2Base, binarized: boolean): GraphDef {
  const g = geometry(model.config);
  return {
    name: binarized ? 'memory_encoder_binarized' : 'memory_encoder',
    symbols: { batch: 2 },
    build(ops, io) {
      const feats = toNhwc(ops, io.input('vision_feats', ['batch', g.C, g.h, g.h]));
      const masks = io.input('pred_masks', ['batch', 1, 4 * g.h, 4 * g.h]);
      const scores = io.input('object_score_logits', ['batch', 1]);
      const highRes = upsampleMasks(ops, masks, [g.S, g.S]);
      const frame: FrameFeatures<typeof feats> = { visionFeats: feats, visionPos: feats, highRes: [feats, feats] };
      const mem = model.encodeNewMemory(ops, frame, highRes, scores, binarized);
      io.output('maskmem_features', mem.features);
      io.output('maskmem_pos_enc', mem.posEnc);
    },
  };
}

/**
 * Memory attention over a memory bank of `num_memories` spatial memories and `num_obj_ptrs`
 * object pointers, both dynamic: `SAM2Base.attendToMemory` on the graph inputs. The temporal
 * position of each memory is a one-hot row (`memory_tpos`), and the pointers' 1-D sine encoding
 * is computed in the graph from their normalized temporal distance (`obj_ptr_tpos` = tDiff / tDiffMax).
 * Batch 1 (the propagation loop tracks one object).
 */
export function memoryAttentionGraph(model: SAM2Base): GraphDef {
  const c = model.config;
  const { h, C, Cm } = geometry(c);
  const usePtrs = c.use_obj_ptrs_in_encoder;
  return {
    name: 'memory_attention',
    symbols: usePtrs ? { num_memories: 2, num_obj_ptrs: 2 } : { num_memories: 2 },
    build(ops, io) {
      const curr = toNhwc(ops, io.input('vision_feats', [1, C, h, h]));
      const memFeats = io.input('memory', ['num_memories', h, h, Cm]);
      const memPosEnc = io.input('memory_pos_enc', ['num_memories', h, h, Cm]);
      const memTpos = io.input('memory_tpos', ['num_memories', c.num_maskmem]);
      const numMem = ops.shape(memFeats)[0];
      const spatial = {
        features: ops.reshape(memFeats, [1, numMem, h * h, Cm]),
        posEnc: ops.reshape(memPosEnc, [1, numMem, h * h, Cm]),
        tposOneHot: memTpos,
      };
      let objPtrs: { ptrs: typeof curr; tpos: typeof curr } | undefined;
      if (usePtrs) {
        const ptrs = io.input('obj_ptrs', ['num_obj_ptrs', C]);
        const tpos = io.input('obj_ptr_tpos', ['num_obj_ptrs', 1]);
        objPtrs = { ptrs: ops.reshape(ptrs, [1, ops.shape(ptrs)[0], C]), tpos };
      }
      const currPos = model.imageEncoder.neck.positionEncoding.forward(ops, h, h);
      const out = model.attendToMemory(ops, { curr, currPos, spatial, objPtrs });
      io.output('pix_feat', toNchw(ops, out));
    },
  };
}

/** Every graph of an export, keyed like GRAPH_FILES. */
export function allGraphs(model: SAM2Base): Record<GraphKey, GraphDef> {
  return {
    imageEncoder: imageEncoderGraph(model),
    maskDecoder: maskDecoderGraph(model),
    samHeads: samHeadsGraph(model),
    maskAsOutput: maskAsOutputGraph(model),
    memoryEncoder: memoryEncoderGraph(model, false),
    memoryEncoderBinarized: memoryEncoderGraph(model, true),
    memoryAttention: memoryAttentionGraph(model),
  };
}
