/** The trivial baselines a trained model should beat, scored like the model. */
import { diceCoefficient } from './metrics.js';

/** The parts of a data batch (data/types.ts `Batch`) a baseline reads; eval does not import data. */
export interface PromptedMasks {
  batchSize: number;
  imageSize: number;
  /** side of the low-res masks */
  maskSize: number;
  /** (B * 4) x0, y0, x1, y1 in input pixels */
  boxes: Float32Array;
  /** (B * maskSize * maskSize) ground truth, > 0.5 = object */
  masks: Float32Array;
  /** each sample's ground truth on its slice's own grid, when scored at native resolution */
  native?: Array<{ width: number; height: number; mask: ArrayLike<number> }>;
}

/**
 * The ellipse filling a box (x0, y0, x1, y1 in continuous pixel coordinates of an image `scaleX`
 * times the grid's width and `scaleY` times its height): 1 on the (height x width) grid cells
 * whose centres lie inside it.
 */
export function ellipseInBox(box: ArrayLike<number>, height: number, width: number, scaleX = 1, scaleY = scaleX): Uint8Array {
  const [x0, y0, x1, y1] = [box[0], box[1], box[2], box[3]];
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const rx = Math.max((x1 - x0) / 2, 1e-6);
  const ry = Math.max((y1 - y0) / 2, 1e-6);
  const out = new Uint8Array(height * width);
  for (let i = 0; i < height; i++) {
    for (let j = 0; j < width; j++) {
      if ((((j + 0.5) * scaleX - cx) / rx) ** 2 + (((i + 0.5) * scaleY - cy) / ry) ** 2 <= 1) out[i * width + j] = 1;
    }
  }
  return out;
}

/**
 * Dice of the trivial answer "an ellipse filling the prompt box" against each sample's ground
 * truth, at the low-res mask size, or on the slice's own grid when the samples carry it.
 */
export function ellipseInBoxDice(b: PromptedMasks): number[] {
  const m = b.maskSize;
  const out: number[] = [];
  for (let n = 0; n < b.batchSize; n++) {
    const grid = b.native?.[n] ?? { width: m, height: m, mask: b.masks.subarray(n * m * m, (n + 1) * m * m) };
    const ellipse = ellipseInBox(b.boxes.subarray(n * 4, n * 4 + 4), grid.height, grid.width, b.imageSize / grid.width, b.imageSize / grid.height);
    const gt = Uint8Array.from(grid.mask, (v) => (v > 0.5 ? 1 : 0));
    out.push(diceCoefficient(gt, ellipse));
  }
  return out;
}

/** Mean `ellipseInBoxDice` over a validation set, or null for an empty one. */
export function meanEllipseDice(valSet: PromptedMasks[]): number | null {
  const count = valSet.reduce((n, b) => n + b.batchSize, 0);
  return count > 0 ? valSet.flatMap(ellipseInBoxDice).reduce((a, v) => a + v, 0) / count : null;
}
