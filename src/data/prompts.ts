/**
 * The prompts a training sample gets, after SAM2's trainer (`prob_to_use_box_input`,
 * `prob_to_use_pt_input`, a first click drawn uniformly from the object): a (shifted) box with
 * probability `box`, one or more positive clicks with probability `points` (always when the box
 * was not drawn: a sample needs a prompt). Every sample has the same number of point slots,
 * 2 box corners + numPoints[1] clicks when both can occur, unused slots padded with label -1,
 * so that a sample's prediction never depends on which samples share its batch. Correction
 * clicks come later, from the model's error (src/train/corrections.ts).
 */
import type seedrandom from 'seedrandom';

export interface PromptSampling {
  /** probability of a box prompt */
  box: number;
  /** probability of positive clicks (1 when there is no box) */
  points: number;
  /** how many clicks, drawn uniformly in [min, max] */
  numPoints: [number, number];
}



export function isBoxOnly(p: PromptSampling): boolean {
  return p.box >= 1 && p.points <= 0;
}

/** Point slots per sample: 2 box corners when a box can occur, and room for the most clicks when clicks can. */
export function pointSlots(p: PromptSampling): number {
  return (p.box > 0 ? 2 : 0) + (p.box < 1 || p.points > 0 ? p.numPoints[1] : 0);
}

/**
 * Draw one sample's prompt into its slots: `box` in input pixels, `gt` its (size x size) binary
 * ground truth at input resolution. Writes `slots` coords (x, y) and labels (2/3 box corners,
 * 1 clicks, -1 padding at (0, 0)); the draws are a fixed sequence of `rng` calls.
 */
export function drawPrompt(
  rng: seedrandom.PRNG | (() => number),
  p: PromptSampling,
  box: ArrayLike<number>,
  gt: ArrayLike<number>,
  size: number,
  coords: Float32Array,
  labels: Float32Array,
  offset: number,
): void {
  const slots = pointSlots(p);
  coords.fill(0, offset * 2, (offset + slots) * 2);
  labels.fill(-1, offset, offset + slots);
  const useBox = rng() < p.box;
  const useClicks = !useBox || rng() < p.points;
  let k = offset;
  if (useBox) {
    coords.set([box[0], box[1], box[2], box[3]], k * 2);
    labels.set([2, 3], k);
    k += 2;
  }
  if (!useClicks) return;
  const [lo, hi] = p.numPoints;
  const n = lo + Math.floor(rng() * (hi - lo + 1));
  const inside: number[] = [];
  for (let i = 0; i < size * size; i++) if (gt[i] > 0) inside.push(i);
  if (inside.length === 0) throw new Error('drawPrompt: the ground truth is empty');
  for (let c = 0; c < n; c++, k++) {
    const at = inside[Math.floor(rng() * inside.length)];
    coords.set([at % size, Math.floor(at / size)], k * 2);
    labels[k] = 1;
  }
}
