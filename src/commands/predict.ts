/**
 * `medtune predict --onnx <export dir> --input <file> --box ... --out <file>`: segmentation with an
 * exported folder and onnxruntime-node only (this code path imports no TensorFlow.js).
 *
 * - 2D: an image (.png, .npy, or .npz `imgs`; a volume's slice with --slice) and `--box x0,y0,x1,y1`
 *   -> a mask (.png 0/255, .npz `segs`, .npy).
 * - 3D: a volume (.npz `imgs` (D,H,W) or NIfTI) and one `--box [label:]x0,y0,z0,x1,y1,z1` per label
 *   (or `--boxes-from-gts` with an npz holding `gts`) -> a label map (.npz `segs`, NIfTI with the
 *   input's geometry).
 * - Clicks: `--points [label:]x,y,l;...` join the box of their label (3D: on its middle slice) or
 *   prompt a 2D image alone.
 * Pixels: uint8 images are scaled by 1/255; other types by --window (data/intensity.ts: center,width
 * or a preset) or else by their 0.5-99.5 percentiles.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, extname } from 'node:path';
import type { CommandModule } from 'yargs';
import { parseWindow, WINDOW_HELP, type IntensityWindow } from '../data/intensity.js';
import type { NiftiVolume } from '../data/nifti.js';
import { encodeNpz, parseNpy, readNpz, type NpyArray } from '../io/npz.js';
import type { Box2D, Box3D, Click, Pixels01, VolumeTarget } from '../onnx/predict.js';

interface PredictArgs {
  onnx: string;
  input: string;
  out: string;
  box?: string[];
  points?: string[];
  'boxes-from-gts'?: boolean;
  slice?: number;
  multimask?: boolean;
  window?: string;
  threads?: number;
  label: number;
}

/** What an input file holds, ready for the model. */
export interface LoadedInput {
  pixels: Pixels01;
  /** spatial shape of the label map to write: (H, W) or (D, H, W) */
  shape: number[];
  gts?: NpyArray;
  /** voxel spacing (x, y, z) in mm, the challenge npz convention */
  spacing?: number[];
  nifti?: NiftiVolume;
}

function lower(path: string): string {
  return path.toLowerCase();
}

function isNifti(path: string): boolean {
  return /\.nii(\.gz)?$/.test(lower(path));
}

/** (…, H, W[, 3]) pixels of an npy array, ready for the model. */
async function fromArray(a: NpyArray, source: string, window?: IntensityWindow): Promise<LoadedInput> {
  const { pixelsFromNpy } = await import('../onnx/predict.js');
  const pixels = pixelsFromNpy(a, source, window);
  return { pixels, shape: pixels.depth === 1 ? [pixels.height, pixels.width] : [pixels.depth, pixels.height, pixels.width] };
}

/** Read an image or volume for prediction. */
export async function loadInput(path: string, window?: IntensityWindow): Promise<LoadedInput> {
  const ext = lower(extname(path));
  if (!existsSync(path)) throw new Error(`${path}: no such input file`);
  if (ext === '.png') {
    const { decode } = await import('fast-png');
    const png = decode(readFileSync(path));
    const { width, height, channels: c, depth } = png;
    const color = c >= 3;
    const out = new Float32Array(width * height * (color ? 3 : 1));
    const scale = depth === 16 ? 65535 : 2 ** depth - 1;
    for (let i = 0; i < width * height; i++) {
      if (color) for (let k = 0; k < 3; k++) out[3 * i + k] = png.data[c * i + k] / scale;
      else out[i] = png.data[c * i] / scale;
    }
    return { pixels: { data: out, depth: 1, height, width, channels: color ? 3 : 1 }, shape: [height, width] };
  }
  if (ext === '.jpg' || ext === '.jpeg') {
    const { decode } = await import('jpeg-js');
    let jpeg: { width: number; height: number; data: Uint8Array };
    try {
      jpeg = decode(readFileSync(path), { useTArray: true, formatAsRGBA: true });
    } catch (err) {
      throw new Error(`${path}: not a readable JPEG (${(err as Error).message})`);
    }
    const { width, height } = jpeg;
    const out = new Float32Array(width * height * 3);
    for (let i = 0; i < width * height; i++) for (let k = 0; k < 3; k++) out[3 * i + k] = jpeg.data[4 * i + k] / 255;
    return { pixels: { data: out, depth: 1, height, width, channels: 3 }, shape: [height, width] };
  }
  if (ext === '.npy') return fromArray(parseNpy(readFileSync(path), path), path, window);
  if (ext === '.npz') {
    const arrays = readNpz(path);
    if (!arrays.imgs) throw new Error(`${path}: npz has no 'imgs' array (found: ${Object.keys(arrays).join(', ') || 'none'})`);
    const loaded = await fromArray(arrays.imgs, `${path}:imgs`, window);
    if (arrays.gts) loaded.gts = arrays.gts;
    const { npyNumbers } = await import('../onnx/predict.js');
    if (arrays.spacing) loaded.spacing = Array.from(npyNumbers(arrays.spacing), Number);
    return loaded;
  }
  if (isNifti(path)) {
    const { readNifti, scaledData } = await import('../data/nifti.js');
    const { to01 } = await import('../onnx/predict.js');
    const nifti = readNifti(path);
    const [depth, height, width] = nifti.shape;
    const raw = scaledData(nifti);
    const data = to01(raw, raw instanceof Uint8Array ? 'uint8' : 'other', window, path);
    return { pixels: { data, depth, height, width, channels: 1 }, shape: [depth, height, width], nifti, spacing: [...nifti.geometry.spacing] };
  }
  throw new Error(`${path}: unsupported input type '${ext}' (use .png, .jpg, .npy, .npz, .nii or .nii.gz)`);
}

/** One slice of a volume as a 2D image. */
function sliceOf(input: LoadedInput, k: number): Pixels01 {
  const { depth, height, width, channels, data } = input.pixels;
  if (!(Number.isInteger(k) && k >= 0 && k < depth)) throw new Error(`--slice ${k} is outside 0..${depth - 1}`);
  const n = height * width * channels;
  return { data: data.slice(k * n, (k + 1) * n), depth: 1, height, width, channels };
}

/**
 * The prompts of one run, parsed and checked against the input once, here at the edge: a 2D box
 * (x0, y0, x1, y1 in image pixels) and/or clicks, or a 3D box (x0, y0, z0, x1, y1, z1, slice
 * indices inclusive) with optional clicks on its middle slice, per label.
 */
export type LabelPrompt =
  | { label: number; box?: Box2D; points?: Click[] }
  | { label: number; box: Box3D; points?: Click[] };

/** `[label:]v0,v1,...` */
export function parseBox(spec: string, defaultLabel: number): { label: number; box: number[] } {
  const m = /^(?:(\d+):)?([^:]+)$/.exec(spec.trim());
  const values = m ? m[2].split(',').map((v) => Number(v.trim())) : [];
  if (!m || (values.length !== 4 && values.length !== 6) || values.some((v) => !Number.isFinite(v))) {
    throw new Error(`--box '${spec}': expected x0,y0,x1,y1 (2D) or [label:]x0,y0,z0,x1,y1,z1 (3D)`);
  }
  const label = m[1] !== undefined ? Number(m[1]) : defaultLabel;
  if (!(label >= 1 && label <= 65535)) throw new Error(`--box '${spec}': label must be 1..65535`);
  return { label, box: values };
}

/** `[label:]x,y,l;x,y,l;...` (l: 1 positive, 0 negative) */
export function parsePoints(spec: string, defaultLabel: number): { label: number; points: Click[] } {
  const m = /^(?:(\d+):)?([^:]+)$/.exec(spec.trim());
  const points = m ? m[2].split(';').filter((p) => p.trim()).map((p) => p.split(',').map((v) => Number(v.trim()))) : [];
  if (!m || points.length === 0 || points.some((p) => p.length !== 3 || p.some((v) => !Number.isFinite(v)) || (p[2] !== 0 && p[2] !== 1))) {
    throw new Error(`--points '${spec}': expected [label:]x,y,l;x,y,l;... with l = 1 (positive) or 0 (negative)`);
  }
  return { label: m[1] !== undefined ? Number(m[1]) : defaultLabel, points: points as Click[] };
}

/**
 * --box / --boxes-from-gts / --points (and --slice) -> the run's prompts and the image or volume
 * they prompt, each prompt checked against it.
 */
export async function parsePrompts(args: PredictArgs, input: LoadedInput): Promise<{ prompts: LabelPrompt[]; image: Pixels01; is3d: boolean }> {
  const { boxesFromLabels, checkBox, checkPoints, npyNumbers } = await import('../onnx/predict.js');
  const found: Array<{ label: number; box?: number[]; points?: Click[] }> = (args.box ?? []).map((b, i) => parseBox(b, args.box!.length === 1 ? args.label : i + 1));
  if (args['boxes-from-gts']) {
    if (!input.gts) throw new Error(`--boxes-from-gts: ${args.input} has no 'gts' array`);
    const { depth, height, width } = input.pixels;
    const fromGts = boxesFromLabels(npyNumbers(input.gts), depth, height, width, input.shape.length === 3);
    if (fromGts.length === 0) throw new Error(`--boxes-from-gts: ${args.input}: gts is empty (no label to prompt)`);
    found.push(...fromGts);
  }
  // clicks join the box of their label; clicks without a box are a 2D prompt of their own
  const clickLabel = found.length === 1 ? found[0].label : args.label;
  for (const c of (args.points ?? []).map((p) => parsePoints(p, clickLabel))) {
    const target = found.find((f) => f.label === c.label);
    if (target) target.points = [...(target.points ?? []), ...c.points];
    else found.push({ label: c.label, points: c.points });
  }
  if (found.length === 0) throw new Error('give a prompt: --box x0,y0,x1,y1 (2D) or --box [label:]x0,y0,z0,x1,y1,z1 (3D), --boxes-from-gts, or --points');
  const dims = new Set(found.flatMap((s) => (s.box ? [s.box.length] : [])));
  if (dims.size > 1) throw new Error('--box: mix of 2D and 3D boxes');
  const is3d = dims.has(6);
  let image = input.pixels;
  if (!is3d && image.depth > 1) {
    if (args.slice === undefined) throw new Error(`${args.input} is a volume of ${image.depth} slices: pass --slice for a 2D box, or a 3D box x0,y0,z0,x1,y1,z1`);
    image = sliceOf(input, args.slice);
  }
  for (const p of found) {
    if (is3d && !p.box) throw new Error(`--points for label ${p.label}: a 3D prompt needs a box x0,y0,z0,x1,y1,z1 (the clicks go on its middle slice)`);
    if (p.box) checkBox(p.box, image, `label ${p.label} box`);
    if (p.points) checkPoints(p.points, image, `label ${p.label} point`);
  }
  return { prompts: found as LabelPrompt[], image, is3d };
}

export async function runPredict(args: PredictArgs, log: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<void> {
  const { OnnxModel } = await import('../onnx/runtime.js');
  const { segmentImage, segmentVolume } = await import('../onnx/predict.js');
  const window = args.window === undefined ? undefined : parseWindow(args.window);
  const input = await loadInput(args.input, window);
  const { prompts, image, is3d } = await parsePrompts(args, input);

  if (!is3d) {
    const model = OnnxModel.open(args.onnx, { threads: args.threads, needed: ['imageEncoder', 'maskDecoder'] });
    const out = new (Math.max(...prompts.map((s) => s.label)) > 255 ? Uint16Array : Uint8Array)(image.height * image.width);
    for (const s of prompts) {
      const t0 = performance.now();
      const r = await segmentImage(model, image, s.box as Box2D | undefined, { multimask: args.multimask, points: s.points });
      for (let i = 0; i < out.length; i++) if (r.mask[i]) out[i] = s.label;
      log(`label ${s.label}: ${r.mask.reduce((a, b) => a + b, 0)} pixels, IoU estimate ${r.iou.toFixed(3)}, ${(performance.now() - t0).toFixed(0)} ms`);
    }
    await model.release();
    await writeOutput(args.out, out, [image.height, image.width], input, true);
  } else {
    const targets: VolumeTarget[] = prompts.map((s) => ({ label: s.label, box: s.box as Box3D, points: s.points }));
    const model = OnnxModel.open(args.onnx, { threads: args.threads });
    const t0 = performance.now();
    let slices = 0;
    const out = await segmentVolume(model, input.pixels, targets, { onSlice: () => slices++ });
    await model.release();
    const ms = performance.now() - t0;
    log(`${targets.length} label(s), ${slices} slice steps in ${(ms / 1000).toFixed(1)} s (${(ms / slices).toFixed(0)} ms per slice)`);
    await writeOutput(args.out, out, input.shape.length === 3 ? input.shape : [1, ...input.shape], input, false);
  }
  log(`written ${args.out}`);
}

export async function writeOutput(path: string, data: Uint8Array | Uint16Array, shape: number[], input: LoadedInput, is2d: boolean): Promise<void> {
  mkdirSync(dirname(path) || '.', { recursive: true });
  const ext = lower(extname(path));
  if (ext === '.png') {
    if (!is2d) throw new Error(`${path}: a PNG holds one slice; write a 3D result as .npz or NIfTI`);
    const { encode } = await import('fast-png');
    const [height, width] = shape;
    const binary = data.every((v) => v <= 1);
    const px = new Uint8Array(data.length);
    for (let i = 0; i < px.length; i++) px[i] = binary ? (data[i] ? 255 : 0) : Math.min(255, data[i]);
    writeFileSync(path, encode({ width, height, data: px, channels: 1, depth: 8 }));
  } else if (ext === '.npz' || ext === '.npy') {
    if (ext === '.npy') {
      const { dump } = await import('npyjs');
      writeFileSync(path, new Uint8Array(dump(data, shape)));
      return;
    }
    const arrays: Record<string, { data: Uint8Array | Uint16Array | Float64Array; shape: number[] }> = { segs: { data, shape } };
    if (input.spacing) arrays.spacing = { data: Float64Array.from(input.spacing), shape: [input.spacing.length] };
    writeFileSync(path, encodeNpz(arrays));
  } else if (isNifti(path)) {
    const { writeNifti } = await import('../data/nifti.js');
    const s = shape.length === 2 ? [1, ...shape] : shape;
    if (input.nifti) writeNifti(path, data, s, { like: input.nifti });
    else if (input.spacing && input.spacing.length === 3) {
      // npz spacing is (x, y, z), as the challenges store it
      const [sx, sy, sz] = input.spacing;
      writeNifti(path, data, s, { geometry: { spacing: [sx, sy, sz], origin: [0, 0, 0], direction: [1, 0, 0, 0, 1, 0, 0, 0, 1] } });
    } else writeNifti(path, data, s);
  } else {
    throw new Error(`${path}: unsupported output type '${ext}' (use .npz, .npy, .png or .nii/.nii.gz)`);
  }
}

export const predictCommand: CommandModule<object, PredictArgs> = {
  command: 'predict',
  describe: 'Segment an image (box) or a volume (3D box per label) with an exported ONNX folder (onnxruntime-node)',
  builder: (y) =>
    y
      .option('onnx', { type: 'string', demandOption: true, alias: 'export', describe: 'folder written by `medtune export`' })
      .option('input', { type: 'string', demandOption: true, describe: 'image (.png, .jpg, .npy, .npz) or volume (.npz imgs (D,H,W), .nii, .nii.gz)' })
      .option('out', { type: 'string', demandOption: true, describe: 'mask / label map: .npz (segs), .npy, .png (2D), .nii/.nii.gz' })
      .option('box', { type: 'string', array: true, describe: '2D: x0,y0,x1,y1; 3D: [label:]x0,y0,z0,x1,y1,z1 (repeat per label)' })
      .option('points', { type: 'string', array: true, describe: "clicks [label:]x,y,l;x,y,l (l 1 positive, 0 negative), with or without a box; 3D: on the box's middle slice" })
      .option('boxes-from-gts', { type: 'boolean', describe: 'prompt every label of the npz `gts` by its bounding box (the challenge protocol)' })
      .option('slice', { type: 'number', describe: '2D box on one slice of a volume' })
      .option('label', { type: 'number', default: 1, describe: 'label value of a single unlabelled box' })
      .option('multimask', { type: 'boolean', default: false, describe: '2D: best of three masks instead of the single-mask output' })
      .option('window', { type: 'string', describe: WINDOW_HELP })
      .option('threads', { type: 'number', describe: 'onnxruntime intra-op threads' }),
  handler: async (args) => {
    await runPredict(args);
  },
};
