/**
 * Segmentation with an exported folder (onnxruntime-node only, no TensorFlow.js): a 2D image and
 * a box -> a mask; a volume and a 3D box per label -> a label map, the seed's (MedSAM2) way:
 * the middle slice of the box is segmented from its 2D box, the mask is propagated forward and
 * backward through the whole volume by the shared loop (model/video-predictor.ts) running on
 * the exported memory graphs, the directions are united and the largest 3D component is kept.
 */
import { mapIntensities, windowBounds, type IntensityWindow } from '../data/intensity.js';
import { pixelMap, warpImage, IDENTITY } from '../data/transforms.js';
import type { NpyArray } from '../io/npz.js';
import type { SliceData } from '../data/sampling.js';
import { largestComponent, maxLogits, mergeByScore, positive, type LabelVolume, type SliceResult } from '../model/video-output.js';
import { VolumePropagator } from '../model/video-predictor.js';
import type { SliceSegmenter } from './prompt-eval.js';
import { decodePrompt, embedImage, OnnxModel, OrtFrameGraphs, type Click } from './runtime.js';

/** Gray or RGB pixels scaled to [0, 1]: (H, W[, C]) for an image, (D, H, W[, C]) for a volume. */
export interface Pixels01 {
  data: Float32Array;
  depth: number;
  height: number;
  width: number;
  channels: 1 | 3;
}

export type Box2D = [number, number, number, number];
export type Box3D = [number, number, number, number, number, number];
export type { Click };

/**
 * Scale intensities to [0, 1]: uint8 by 1/255; anything else by a window when given, else by its
 * 0.5 and 99.5 percentiles (MedSAM's normalization for non-CT images).
 */
export function to01(data: ArrayLike<number>, kind: 'uint8' | 'other', window: IntensityWindow | undefined, source: string): Float32Array {
  if (kind === 'other') {
    // a NaN pixel has no sensible intensity: refuse rather than segment a silently altered image
    for (let i = 0; i < data.length; i++) {
      if (Number.isNaN(data[i])) throw new Error(`${source}: the image holds NaN values (first at flat index ${i})`);
    }
  }
  const out = new Float32Array(data.length);
  if (kind === 'uint8' && !window) {
    for (let i = 0; i < out.length; i++) out[i] = data[i] / 255;
    return out;
  }
  return mapIntensities(data, window ? windowBounds(window) : sampledPercentileBounds(data), out, 1);
}

/** The 0.5 and 99.5 percentiles of up to a million evenly spaced samples. */
function sampledPercentileBounds(data: ArrayLike<number>): [number, number] {
  const step = Math.max(1, Math.floor(data.length / 1_000_000));
  const sample: number[] = [];
  for (let i = 0; i < data.length; i += step) if (Number.isFinite(data[i])) sample.push(data[i]);
  sample.sort((a, b) => a - b);
  return [sample[Math.floor(0.005 * (sample.length - 1))] ?? 0, sample[Math.ceil(0.995 * (sample.length - 1))] ?? 1];
}

/** An npy array's values as numbers (64-bit integers converted). */
export function npyNumbers(a: NpyArray): ArrayLike<number> {
  const d = a.data as unknown;
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) return Float64Array.from(d, Number);
  return d as ArrayLike<number>;
}

/** Image pixels of an npy array: (H,W), (H,W,3), (D,H,W) or (D,H,W,3), scaled to [0, 1] by `to01`. */
export function pixelsFromNpy(a: NpyArray, source: string, window?: IntensityWindow): Pixels01 {
  const s = a.shape;
  let depth = 1;
  let height: number;
  let width: number;
  let channels: 1 | 3 = 1;
  if (s.length === 2) [height, width] = s;
  else if (s.length === 3 && s[2] === 3) [height, width, channels] = [s[0], s[1], 3];
  else if (s.length === 3) [depth, height, width] = s;
  else if (s.length === 4 && s[3] === 3) [depth, height, width, channels] = [s[0], s[1], s[2], 3];
  else throw new Error(`${source}: image shape (${s.join(', ')}) is not (H,W), (H,W,3), (D,H,W) or (D,H,W,3)`);
  const data = to01(npyNumbers(a), a.data instanceof Uint8Array ? 'uint8' : 'other', window, source);
  return { data, depth, height, width, channels };
}

/** One slice (H, W[, C]) in [0, 1] -> the (S, S, 3) normalized model input (the training resize). */
export function sliceToModelInput(slice: Float32Array, height: number, width: number, channels: 1 | 3, S: number): Float32Array {
  const src: SliceData = {
    image: slice,
    imageScale: 1,
    width,
    height,
    channels,
    labels: new Uint8Array(0),
    labelWidth: 0,
    labelHeight: 0,
    labelBoxes: new Map(),
  };
  const out = new Float32Array(S * S * 3);
  warpImage(src, S, pixelMap(width, height, S, IDENTITY), out, 0);
  return out;
}

/** Throws a message naming the problem when a box does not lie inside the image or volume (callers check at their edge). */
export function checkBox(box: number[], dims: { depth?: number; height: number; width: number }, what = 'box'): void {
  const is3d = box.length === 6;
  const [x0, y0, x1, y1] = is3d ? [box[0], box[1], box[3], box[4]] : box;
  const fmt = `[${box.join(', ')}]`;
  if (box.some((v) => !Number.isFinite(v))) throw new Error(`${what} ${fmt}: not a list of numbers`);
  if (x0 < 0 || y0 < 0 || x1 > dims.width || y1 > dims.height) {
    throw new Error(`${what} ${fmt} lies outside the ${dims.width}x${dims.height} image (x in 0..${dims.width}, y in 0..${dims.height})`);
  }
  if (x1 < x0 || y1 < y0) throw new Error(`${what} ${fmt}: needs x0 <= x1 and y0 <= y1`);
  if (is3d) {
    const [z0, z1] = [box[2], box[5]];
    const d = dims.depth ?? 1;
    if (!Number.isInteger(z0) || !Number.isInteger(z1) || z0 < 0 || z1 > d - 1 || z1 < z0) {
      throw new Error(`${what} ${fmt}: slices z0..z1 must be integers within 0..${d - 1} with z0 <= z1`);
    }
  }
}

/** Throws a message naming the problem when a click is not inside the image or its label is not 0 or 1. */
export function checkPoints(points: Click[], dims: { height: number; width: number }, what = 'point'): void {
  for (const p of points) {
    const [x, y, l] = p;
    const fmt = `(${p.join(', ')})`;
    if (p.length !== 3 || p.some((v) => !Number.isFinite(v))) throw new Error(`${what} ${fmt}: expected x,y,label`);
    if (x < 0 || y < 0 || x > dims.width || y > dims.height) throw new Error(`${what} ${fmt} lies outside the ${dims.width}x${dims.height} image`);
    if (l !== 0 && l !== 1) throw new Error(`${what} ${fmt}: label must be 1 (positive) or 0 (negative)`);
  }
}

/** 2D: one image, a box and/or clicks (image pixels) -> a binary mask (H * W, 1 = object), its logits and scores. */
export async function segmentImage(
  model: OnnxModel,
  image: Pixels01,
  box: Box2D | undefined,
  opts: { multimask?: boolean; points?: Click[] } = {},
): Promise<{ mask: Uint8Array; logits: Float32Array; iou: number; objectScore: number }> {
  if (box) checkBox(box, image);
  if (opts.points) checkPoints(opts.points, image);
  const input = sliceToModelInput(image.data, image.height, image.width, image.channels, model.geometry.S);
  const r = await decodePrompt(model, await embedImage(model, input), image, { box, points: opts.points }, opts.multimask);
  return { mask: binarize(r.logits), logits: r.logits, iou: r.iou, objectScore: r.objectScore };
}

/** Mask logits -> 1 where > 0. */
export const binarize = positive;

export interface VolumeTarget {
  label: number;
  box: Box3D;
  /** clicks on the key slice (the box's middle slice), after the box */
  points?: Click[];
}

export interface VolumeProgress {
  label: number;
  slice: SliceResult;
}

/**
 * 3D: a volume and a 3D box (x0, y0, z0, x1, y1, z1; slice pixels, slice indices inclusive) per
 * label -> a (D, H, W) label map. Each label is propagated on its own (largest component kept);
 * where several claim a voxel, the one with the highest logit there gets it (`mergeByScore`).
 */
export async function segmentVolume(
  model: OnnxModel,
  volume: Pixels01,
  targets: VolumeTarget[],
  opts: { onSlice?: (p: VolumeProgress) => void; cacheBytes?: number } = {},
): Promise<Uint8Array | Uint16Array> {
  const { depth: D, height: H, width: W, channels } = volume;
  for (const t of targets) {
    checkBox(t.box, volume, `label ${t.label} box`);
    if (t.points) checkPoints(t.points, volume, `label ${t.label} point`);
  }
  const { S, h, C } = model.geometry;
  const n = H * W * channels;
  // A slice's model input (and, through OrtFrameGraphs, its encoder outputs) is kept while it
  // fits the cache, so the labels and both directions encode each slice once.
  const perSlice = 4 * (3 * S * S + 2 * C * h * h + (C / 8) * 16 * h * h + (C / 4) * 4 * h * h);
  const maxSlices = Math.max(1, Math.floor((opts.cacheBytes ?? 1e9) / perSlice));
  const inputs = new Map<number, Float32Array>();
  const source = {
    numFrames: D,
    height: H,
    width: W,
    image: (i: number) => {
      let x = inputs.get(i);
      if (x) inputs.delete(i);
      else x = sliceToModelInput(volume.data.subarray(i * n, (i + 1) * n), H, W, channels, S);
      inputs.set(i, x); // most recently used last
      if (inputs.size > maxSlices) inputs.delete(inputs.keys().next().value!);
      return x;
    },
  };
  const propagator = new VolumePropagator(new OrtFrameGraphs(model));
  const volumes: LabelVolume[] = [];
  for (const t of targets) {
    const [x0, y0, z0, x1, y1, z1] = t.box;
    const key = Math.floor((z0 + z1) / 2);
    const results = await propagator.propagate(source, { frameIdx: key, box: [x0, y0, x1, y1], points: t.points }, { onSlice: (slice) => opts.onSlice?.({ label: t.label, slice }) });
    const score = maxLogits(results, D, H, W);
    volumes.push({ label: t.label, mask: largestComponent(positive(score), D, H, W), score });
  }
  return mergeByScore(volumes, D * H * W);
}

/**
 * The challenges' prompts from a ground-truth label map: per label its bounding box over all
 * voxels (3D: x0, y0, z0, x1, y1, z1 with inclusive indices; 2D: x0, y0, x1, y1).
 */
export function boxesFromLabels(
  labels: ArrayLike<number>,
  depth: number,
  height: number,
  width: number,
  threeD = depth > 1,
): Array<{ label: number; box: number[] }> {
  const boxes = new Map<number, number[]>();
  for (let z = 0; z < depth; z++) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const l = labels[(z * height + y) * width + x];
        if (!l) continue;
        const b = boxes.get(l);
        if (!b) boxes.set(l, [x, y, z, x, y, z]);
        else {
          b[0] = Math.min(b[0], x);
          b[1] = Math.min(b[1], y);
          b[2] = Math.min(b[2], z);
          b[3] = Math.max(b[3], x);
          b[4] = Math.max(b[4], y);
          b[5] = Math.max(b[5], z);
        }
      }
    }
  }
  return [...boxes.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([label, b]) => ({ label, box: threeD ? b : [b[0], b[1], b[3], b[4]] }));
}

/**
 * Prediction-first evaluation (`evaluateWithPredictor` in eval/evaluate.ts): segment a
 * challenge-format case (`imgs`, and `gts` for the prompts) from the bounding box of each
 * ground-truth label, as the challenges derive prompts: a 3D box per label for volumes, a 2D box
 * per label for images; overlapping labels merged by score.
 */
export async function predictCase(model: OnnxModel, arrays: Record<string, NpyArray>, source: string): Promise<{ data: Uint8Array | Uint16Array; shape: number[] }> {
  if (!arrays.imgs) throw new Error(`${source}: npz has no 'imgs' array`);
  if (!arrays.gts) throw new Error(`${source}: npz has no 'gts' array to derive the box prompts from`);
  const pixels = pixelsFromNpy(arrays.imgs, `${source}:imgs`);
  const { depth, height, width } = pixels;
  const shape = depth === 1 && arrays.gts.shape.length === 2 ? [height, width] : [depth, height, width];
  if (arrays.gts.shape.join() !== shape.join()) throw new Error(`${source}: gts shape (${arrays.gts.shape}) does not match imgs (${arrays.imgs.shape})`);
  const boxes = boxesFromLabels(npyNumbers(arrays.gts), depth, height, width, shape.length === 3);
  if (shape.length === 3) {
    const targets = boxes.map((b) => ({ label: b.label, box: b.box as Box3D }));
    return { data: await segmentVolume(model, pixels, targets), shape };
  }
  const masks: LabelVolume[] = [];
  for (const b of boxes) {
    const { mask, logits } = await segmentImage(model, pixels, b.box as Box2D);
    masks.push({ label: b.label, mask, score: logits });
  }
  return { data: mergeByScore(masks, height * width), shape };
}

/**
 * Prompt-level evaluation from an export (`evaluatePromptsInDir`): slice z of a case's `imgs`
 * (intensities scaled over the whole volume, as `predictCase`) is encoded once, then each prompt
 * on it is decoded (single mask, with the stability fallback unless `stability` is false), the
 * low-res logits kept for the next round.
 */
export function sliceSegmenter(model: OnnxModel, arrays: Record<string, NpyArray>, source: string, stability = true): SliceSegmenter {
  if (!arrays.imgs) throw new Error(`${source}: npz has no 'imgs' array`);
  const pixels = pixelsFromNpy(arrays.imgs, `${source}:imgs`);
  const { depth, height, width, channels } = pixels;
  const gtShape = arrays.gts?.shape ?? [];
  const want = depth === 1 && gtShape.length === 2 ? [height, width] : [depth, height, width];
  if (gtShape.join() !== want.join()) throw new Error(`${source}: gts shape (${gtShape}) does not match imgs (${arrays.imgs.shape})`);
  const n = height * width * channels;
  return async (z) => {
    const input = sliceToModelInput(pixels.data.subarray(z * n, (z + 1) * n), height, width, channels, model.geometry.S);
    const embedding = await embedImage(model, input);
    return async (prompt) => {
      const r = await decodePrompt(model, embedding, pixels, { box: prompt.box, points: prompt.points, mask: prompt.mask }, false, stability);
      return { mask: binarize(r.logits), lowRes: r.lowRes };
    };
  };
}
