/**
 * Prompts in a slice's (or image's) own pixels turned into model inputs, as the official
 * `add_new_mask` / `add_new_points_or_box` and the image predictor prepare them: points scaled
 * to the model's S x S input (float32 steps, like torch), masks binarized and resized with
 * antialiasing.
 */
import type { HostPrompt } from './frame-graphs.js';
import { resizeAntialiasHost } from './resize.js';

/** A prompt on one slice: a binary mask (height * width), or a box / points in slice pixels. */
export interface SlicePrompt {
  frameIdx: number;
  /** (height * width) row-major, > 0 = object (official `add_new_mask`) */
  mask?: ArrayLike<number>;
  /** x0, y0, x1, y1 in slice pixels (official `add_new_points_or_box(box=...)`) */
  box?: [number, number, number, number];
  /** extra points in slice pixels, after the box: x, y, label (1 positive, 0 negative) */
  points?: Array<[number, number, number]>;
}

/**
 * Points (x, y, label) in a height x width image -> model coords (P * 2, x / width * S in float32
 * steps) and labels (P); a box is the two points (x0, y0, 2), (x1, y1, 3) before any others.
 */
export function pointsToModel(
  prompt: { box?: [number, number, number, number]; points?: Array<[number, number, number]> },
  size: { height: number; width: number },
  S: number,
): { coords: Float32Array; labels: Float32Array } {
  const pts: Array<[number, number, number]> = [];
  if (prompt.box) {
    const [x0, y0, x1, y1] = prompt.box;
    pts.push([x0, y0, 2], [x1, y1, 3]);
  }
  pts.push(...(prompt.points ?? []));
  const coords = new Float32Array(pts.length * 2);
  const labels = new Float32Array(pts.length);
  pts.forEach(([x, y, l], i) => {
    coords[2 * i] = Math.fround(Math.fround(x / size.width) * S);
    coords[2 * i + 1] = Math.fround(Math.fround(y / size.height) * S);
    labels[i] = l;
  });
  return { coords, labels };
}

/** A slice prompt in model inputs: the mask at S x S (binarized at 0.5 after resizing), or points. */
export function promptToModel(prompt: SlicePrompt, size: { height: number; width: number }, S: number): HostPrompt {
  if (prompt.mask !== undefined) {
    if (prompt.box || prompt.points) throw new Error('a slice prompt is either a mask or a box/points, not both');
    const { height: h, width: w } = size;
    if (prompt.mask.length !== h * w) throw new Error(`mask prompt has ${prompt.mask.length} values for a ${h}x${w} slice`);
    const binary = new Float32Array(h * w);
    for (let i = 0; i < binary.length; i++) binary[i] = prompt.mask[i] > 0 ? 1 : 0;
    if (h === S && w === S) return { mask: binary };
    const resized = resizeAntialiasHost(binary, h, w, S, S);
    for (let i = 0; i < resized.length; i++) resized[i] = resized[i] >= 0.5 ? 1 : 0;
    return { mask: resized };
  }
  if (!prompt.box && !prompt.points?.length) throw new Error('a slice prompt needs a mask, a box or points');
  return { points: pointsToModel(prompt, size, S) };
}
