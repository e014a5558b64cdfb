/**
 * Inference on an exported folder with onnxruntime-node: the 2D box -> mask path (image encoder +
 * mask decoder) and `OrtFrameGraphs`, the `Sam2FrameGraphs` implementation that lets the shared
 * propagation loop (model/video-predictor.ts) run 3D propagation on the exported graphs.
 * Nothing here imports TensorFlow.js.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Sam2Config } from '../model/config.js';
import { roundToBfloat16, type HeadsResult, type HostPrompt, type Sam2FrameGraphs } from '../model/frame-graphs.js';
import { memoryBankTemporal, type MemoryContext, type MemoryFeatures } from '../model/memory-bank.js';
import { pickBestMask } from '../model/mask-decoder.js';
import { upsampleMasks } from '../model/resize.js';
import type { FrameFeatures } from '../model/sam2.js';
import { pointsToModel } from '../model/slice-prompt.js';
import { geometry, GRAPH_FILES, MANIFEST_FILE, type Geometry, type GraphKey, type Manifest } from './graphs.js';
import { OnnxOps } from './onnx-ops.js';

export interface HostArray {
  data: Float32Array;
  shape: number[];
}

export interface SessionOptions {
  /** intra-op threads (onnxruntime's default: all cores) */
  threads?: number;
  /** let idle worker threads spin (onnxruntime's default); off frees the cores between runs */
  spin?: boolean;
}

export async function createSession(model: Uint8Array | string, opts: SessionOptions = {}): Promise<ort.InferenceSession> {
  const options: ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    ...(opts.threads ? { intraOpNumThreads: opts.threads, interOpNumThreads: 1 } : {}),
    ...(opts.spin === false ? { extra: { session: { intra_op: { allow_spinning: '0' } } } } : {}),
  };
  return typeof model === 'string' ? ort.InferenceSession.create(model, options) : ort.InferenceSession.create(model, options);
}

function hostOf(t: ort.Tensor): HostArray {
  const data = t.data instanceof Float32Array ? t.data : Float32Array.from(t.data as ArrayLike<number>, Number);
  return { data, shape: [...t.dims] };
}

/** Run a session on float32 feeds; every output comes back as a float32 host array. */
export async function runSession(session: ort.InferenceSession, feeds: Record<string, HostArray>): Promise<Record<string, HostArray>> {
  const inputs: Record<string, ort.Tensor> = {};
  for (const [name, a] of Object.entries(feeds)) inputs[name] = new ort.Tensor('float32', a.data, a.shape);
  const results = await session.run(inputs);
  const out: Record<string, HostArray> = {};
  for (const [name, t] of Object.entries(results)) out[name] = hostOf(t);
  return out;
}

// ───────────────────────────── the exported folder ─────────────────────────────

/** An exported folder: its manifest, and sessions opened on first use. */
export class OnnxModel {
  readonly config: Sam2Config;
  readonly geometry: Geometry;
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();

  private constructor(
    readonly dir: string,
    readonly manifest: Manifest,
    private readonly opts: SessionOptions,
  ) {
    this.config = manifest.config;
    this.geometry = geometry(manifest.config);
  }

  /**
   * Open an export folder. Fails with a message naming the problem when the folder, its manifest
   * or any graph `needed` (default: all) is missing.
   */
  static open(dir: string, opts: SessionOptions & { needed?: GraphKey[] } = {}): OnnxModel {
    if (!existsSync(dir)) throw new Error(`${dir}: no such ONNX export folder`);
    const manifestFile = join(dir, MANIFEST_FILE);
    if (!existsSync(manifestFile)) throw new Error(`${dir}: not a medtune ONNX export (no medtune-onnx.json; create one with \`medtune export\`)`);
    let manifest: Manifest;
    try {
      manifest = JSON.parse(readFileSync(manifestFile, 'utf8'));
    } catch (err) {
      throw new Error(`${manifestFile}: unreadable manifest (${(err as Error).message})`);
    }
    if (manifest.format !== 'medtune-onnx' || !manifest.config || !manifest.graphs) throw new Error(`${manifestFile}: not a medtune ONNX manifest`);
    const needed = opts.needed ?? (Object.keys(GRAPH_FILES) as GraphKey[]);
    const missing = needed.filter((k) => !manifest.graphs[k] || !existsSync(join(dir, manifest.graphs[k])));
    if (missing.length) {
      const names = missing.map((k) => manifest.graphs[k] ?? GRAPH_FILES[k]).join(', ');
      throw new Error(`${dir}: the export is missing ${missing.length === 1 ? 'graph' : 'graphs'} ${names} (re-run \`medtune export\`)`);
    }
    return new OnnxModel(dir, manifest, opts);
  }

  session(key: GraphKey): Promise<ort.InferenceSession> {
    let s = this.sessions.get(key);
    if (!s) {
      s = createSession(join(this.dir, this.manifest.graphs[key]), this.opts);
      this.sessions.set(key, s);
    }
    return s;
  }

  /** Run one graph on host arrays or tensors already returned by another graph. */
  async run(key: GraphKey, feeds: Record<string, HostArray | ort.Tensor>): Promise<Record<string, ort.Tensor>> {
    const inputs: Record<string, ort.Tensor> = {};
    for (const [name, a] of Object.entries(feeds)) inputs[name] = 'dims' in a ? a : new ort.Tensor('float32', a.data, a.shape);
    return (await this.session(key)).run(inputs);
  }

  /** Small helper graphs traced from the model's own functions on first use, by shape. */
  private readonly helpers = new Map<string, Promise<ort.InferenceSession>>();
  private helper(key: string, build: (ops: OnnxOps) => void): Promise<ort.InferenceSession> {
    let s = this.helpers.get(key);
    if (!s) {
      const ops = new OnnxOps(key.replace(/\W/g, '_'), { params: new Map() });
      build(ops);
      s = createSession(ops.graph.toModel(), this.opts);
      this.helpers.set(key, s);
    }
    return s;
  }

  /** A bilinear (align_corners=False) resize of (1, 1, h, w) mask logits (`upsampleMasks`). */
  async resizeMasks(masks: ort.Tensor, size: [number, number]): Promise<Float32Array> {
    const [, , h, w] = masks.dims;
    const session = await this.helper(`resize ${h}x${w} to ${size[0]}x${size[1]}`, (ops) => {
      ops.output('masks', upsampleMasks(ops, ops.input('low_res_masks', [1, 1, h, w]), size));
    });
    return hostOf((await session.run({ low_res_masks: masks })).masks).data;
  }

  /** The best-IoU mask of (1, M, h, w) (`pickBestMask`): low-res, resized like `resizeMasks`, and its IoU. */
  async bestMask(masks: ort.Tensor, ious: ort.Tensor, size: [number, number]): Promise<{ logits: Float32Array; lowRes: Float32Array; iou: number }> {
    const [, m, h, w] = masks.dims;
    const session = await this.helper(`best of ${m} ${h}x${w} to ${size[0]}x${size[1]}`, (ops) => {
      const best = pickBestMask(ops, ops.input('low_res_masks', [1, m, h, w]), ops.input('iou_predictions', [1, m]));
      ops.output('masks', upsampleMasks(ops, best.mask, size));
      ops.output('low_res', best.mask);
      ops.output('iou', best.iou);
    });
    const out = await session.run({ low_res_masks: masks, iou_predictions: ious });
    return { logits: hostOf(out.masks).data, lowRes: hostOf(out.low_res).data, iou: hostOf(out.iou).data[0] };
  }

  /** (H, W, 3) channels-last normalized image -> the image encoder's NCHW input. */
  static nchwImage(image: Float32Array, S: number): HostArray {
    const n = S * S;
    if (image.length !== n * 3) throw new Error(`expected a ${S}x${S}x3 image, got ${image.length} values`);
    const data = new Float32Array(n * 3);
    for (let i = 0; i < n; i++) {
      data[i] = image[3 * i];
      data[n + i] = image[3 * i + 1];
      data[2 * n + i] = image[3 * i + 2];
    }
    return { data, shape: [1, 3, S, S] };
  }

  async release(): Promise<void> {
    for (const s of [...this.sessions.values(), ...this.helpers.values()]) await (await s).release();
    this.sessions.clear();
    this.helpers.clear();
  }
}

// ───────────────────────────── 2D: image + box -> mask ─────────────────────────────

export interface BoxPrediction {
  /** (height * width) mask logits at the image's own resolution; > 0 is the object */
  logits: Float32Array;
  /** (4h * 4h) low-res logits of the same mask: the mask prompt of a next correction round */
  lowRes: Float32Array;
  /** the IoU estimate of the returned mask */
  iou: number;
  objectScore: number;
}

/** The image encoder's outputs the mask decoder reads: computed once per image, reused by every prompt on it. */
export interface ImageEmbedding {
  image_embed: ort.Tensor;
  high_res_0: ort.Tensor;
  high_res_1: ort.Tensor;
}

/** Run the image encoder on an (S, S, 3) normalized channels-last image. */
export async function embedImage(model: OnnxModel, image: Float32Array): Promise<ImageEmbedding> {
  const enc = await model.run('imageEncoder', { image: OnnxModel.nchwImage(image, model.geometry.S) });
  return { image_embed: enc.image_embed, high_res_0: enc.high_res_0, high_res_1: enc.high_res_1 };
}

/** A click in image pixels: x, y, label (1 positive, 0 negative). */
export type Click = [number, number, number];

/**
 * Segment one image from a box and/or clicks, as the SAM2 image predictor does: the box as two
 * points (labels 2, 3) followed by the clicks, in model pixels, the previous round's low-res
 * logits as mask prompt when given (`mask`, 4h * 4h), single-mask output with the stability
 * fallback (`stability` false: the single-mask token's mask as it is, for models whose multimask
 * tokens were never trained), or the best of three with `multimask`; low-res logits resized to
 * the image size.
 */
export async function decodePrompt(
  model: OnnxModel,
  embedding: ImageEmbedding,
  size: { height: number; width: number },
  prompt: { box?: [number, number, number, number]; points?: Click[]; mask?: Float32Array },
  multimask = false,
  stability = true,
): Promise<BoxPrediction> {
  const { S, h } = model.geometry;
  if (!prompt.box && !prompt.points?.length) throw new Error('a prompt needs a box or at least one click');
  if (prompt.mask && prompt.mask.length !== 16 * h * h) throw new Error(`a mask prompt holds ${4 * h}x${4 * h} low-res logits, got ${prompt.mask.length} values`);
  const { coords, labels } = pointsToModel(prompt, size, S);
  const dec = await model.run('maskDecoder', {
    ...embedding,
    point_coords: { data: coords, shape: [1, labels.length, 2] },
    point_labels: { data: labels, shape: [1, labels.length] },
    mask_input: { data: prompt.mask ?? new Float32Array(16 * h * h), shape: [1, 1, 4 * h, 4 * h] },
    has_mask_input: { data: Float32Array.from([prompt.mask ? 1 : 0]), shape: [1] },
  });
  const objectScore = hostOf(dec.object_score_logits).data[0];
  if (multimask) return { ...(await model.bestMask(dec.low_res_masks_multi, dec.iou_predictions_multi, [size.height, size.width])), objectScore };
  const masks = stability ? dec.low_res_masks_stable : dec.low_res_masks;
  if (!masks) throw new Error(`${model.dir}: the export predates the single-mask stability output (low_res_masks_stable); re-run \`medtune export\``);
  return {
    logits: await model.resizeMasks(masks, [size.height, size.width]),
    lowRes: hostOf(masks).data,
    iou: hostOf(stability ? dec.iou_predictions_stable : dec.iou_predictions).data[0],
    objectScore,
  };
}

/**
 * Segment one image from a box (`decodePrompt` after `embedImage`).
 * `image`: (S, S, 3) normalized channels-last; `box`: x0, y0, x1, y1 in the image's pixels.
 */
export async function predictBox(
  model: OnnxModel,
  image: Float32Array,
  size: { height: number; width: number },
  box: [number, number, number, number],
  multimask = false,
): Promise<BoxPrediction> {
  return decodePrompt(model, await embedImage(model, image), size, { box }, multimask);
}

// ───────────────────────────── 3D: the propagation graphs ─────────────────────────────


function concatTensors(ts: ort.Tensor[], shape: number[]): HostArray {
  const parts = ts.map((t) => hostOf(t).data);
  const data = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    data.set(p, o);
    o += p.length;
  }
  return { data, shape };
}

/**
 * `Sam2FrameGraphs` on the exported graphs. Handles are onnxruntime tensors; frame features keep
 * the image encoder's NCHW outputs, memories the memory encoder's channels-last ones. The image
 * embedding with `no_mem_embed` (what an initial conditioning slice attends to) is kept beside
 * each frame; the vision position encoding is a constant inside the memory-attention graph, so
 * a frame's `visionPos` handle is that same embedding and is never read. Encoder outputs are
 * remembered per input array (weakly), so a volume source that hands out the same array for a
 * slice again (segmentVolume does, for every label and both directions) encodes it once.
 */
export class OrtFrameGraphs implements Sam2FrameGraphs<ort.Tensor> {
  readonly config: Sam2Config;
  private readonly imageEmbeds = new WeakMap<ort.Tensor, ort.Tensor>();
  /** image encoder outputs by input array: a caller that passes the same array again gets them back */
  private readonly frames = new WeakMap<Float32Array, FrameFeatures<ort.Tensor>>();
  /** whether memories are rounded to bfloat16 like the official predictor (default true) */
  constructor(
    readonly model: OnnxModel,
    private readonly bf16Memory = true,
  ) {
    this.config = model.config;
    if (!this.config.directly_add_no_mem_embed) throw new Error('the exported graphs support directly_add_no_mem_embed models only');
  }

  async encodeImage(image: Float32Array): Promise<FrameFeatures<ort.Tensor>> {
    const cached = this.frames.get(image);
    if (cached) return cached;
    const out = await this.model.run('imageEncoder', { image: OnnxModel.nchwImage(image, this.model.geometry.S) });
    this.imageEmbeds.set(out.vision_feats, out.image_embed);
    const frame: FrameFeatures<ort.Tensor> = { visionFeats: out.vision_feats, visionPos: out.image_embed, highRes: [out.high_res_0, out.high_res_1] };
    this.frames.set(image, frame);
    return frame;
  }

  async conditionOnMemory(frame: FrameFeatures<ort.Tensor>, memory: MemoryContext<ort.Tensor> | null): Promise<ort.Tensor> {
    if (memory === null) {
      const embed = this.imageEmbeds.get(frame.visionFeats);
      if (!embed) throw new Error('conditionOnMemory: frame was not encoded by this OrtFrameGraphs');
      return embed;
    }
    const { h, C, Cm } = this.model.geometry;
    const nm = this.config.num_maskmem;
    const F = memory.memories.length;
    const { tposOneHot, objPtrTpos } = memoryBankTemporal(memory, nm);
    const feeds: Record<string, HostArray | ort.Tensor> = {
      vision_feats: frame.visionFeats,
      memory: concatTensors(memory.memories.map((m) => m.features), [F, h, h, Cm]),
      memory_pos_enc: concatTensors(memory.memories.map((m) => m.posEnc), [F, h, h, Cm]),
      memory_tpos: { data: tposOneHot, shape: [F, nm] },
    };
    if (this.config.use_obj_ptrs_in_encoder) {
      const P = memory.objPtrs.length;
      if (P === 0) throw new Error('conditionOnMemory: the exported memory attention needs at least one object pointer');
      feeds.obj_ptrs = concatTensors(memory.objPtrs.map((p) => p.ptr), [P, C]);
      feeds.obj_ptr_tpos = { data: objPtrTpos, shape: [P, 1] };
    }
    return (await this.model.run('memoryAttention', feeds)).pix_feat;
  }

  async samHeads(pixFeat: ort.Tensor, frame: FrameFeatures<ort.Tensor>, prompt: HostPrompt, multimask: boolean): Promise<HeadsResult<ort.Tensor>> {
    if (prompt.mask) throw new Error('samHeads: mask prompts go through maskAsOutput in the exported graphs (use_mask_input_as_output_without_sam)');
    const n = prompt.points ? prompt.points.labels.length : 1;
    const out = await this.model.run('samHeads', {
      pix_feat: pixFeat,
      high_res_0: frame.highRes[0],
      high_res_1: frame.highRes[1],
      point_coords: { data: prompt.points ? prompt.points.coords : new Float32Array(2), shape: [1, n, 2] },
      point_labels: { data: prompt.points ? prompt.points.labels : Float32Array.from([-1]), shape: [1, n] },
    });
    const s = multimask ? '_multi' : '';
    return { lowResMasks: out[`pred_masks${s}`], objPtr: out[`obj_ptr${s}`], objectScoreLogits: out.object_score_logits };
  }

  async maskAsOutput(frame: FrameFeatures<ort.Tensor>, mask: Float32Array): Promise<HeadsResult<ort.Tensor>> {
    const S = this.model.geometry.S;
    const out = await this.model.run('maskAsOutput', {
      vision_feats: frame.visionFeats,
      high_res_0: frame.highRes[0],
      high_res_1: frame.highRes[1],
      mask: { data: mask, shape: [1, 1, S, S] },
    });
    return { lowResMasks: out.pred_masks, objPtr: out.obj_ptr, objectScoreLogits: out.object_score_logits };
  }

  async encodeMemory(frame: FrameFeatures<ort.Tensor>, lowResMasks: ort.Tensor, objectScoreLogits: ort.Tensor, isMaskFromPts: boolean): Promise<MemoryFeatures<ort.Tensor>> {
    const binarized = isMaskFromPts && this.config.binarize_mask_from_pts_for_mem_enc;
    const out = await this.model.run(binarized ? 'memoryEncoderBinarized' : 'memoryEncoder', {
      vision_feats: frame.visionFeats,
      pred_masks: lowResMasks,
      object_score_logits: objectScoreLogits,
    });
    const features = this.bf16Memory
      ? new ort.Tensor('float32', roundToBfloat16(hostOf(out.maskmem_features).data), out.maskmem_features.dims)
      : out.maskmem_features;
    return { features, posEnc: out.maskmem_pos_enc };
  }

  async readMasks(lowResMasks: ort.Tensor, size: [number, number]): Promise<Float32Array> {
    return this.model.resizeMasks(lowResMasks, size);
  }

  /** Host tensors are garbage-collected; nothing to free (a frame's handles may alias each other). */
  release(_handles: ort.Tensor[]): void {}
}
