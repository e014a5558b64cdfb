/**
 * Comparing against the official model's golden fixture (test/fixtures/golden-small256, README
 * tolerances): the forward error measure, and the 3D propagation protocol of propagation.npz (a
 * mask prompt on the middle slice, then forward and reverse propagation through the memory path).
 * Shared by scripts/golden-check.ts, the tests and the ONNX check.
 */
import type { NpyArray } from '../io/npz.js';
import type { Sam2FrameGraphs } from './frame-graphs.js';
import type { SliceResult } from './video-output.js';
import { grayToModelInput, VolumePropagator } from './video-predictor.js';

/** README: forward tensors max |ours - ref| <= 1e-4 * max(1, max |ref|). */
export const FORWARD_TOL = 1e-4;
/** README: per slice max |ours - ref| <= 1e-3 * max(1, max |ref|) ... */
export const PROPAGATION_TOL = 1e-3;
/** ... and the masks `> 0` agree on at least 99.9% of pixels. */
export const PROPAGATION_AGREEMENT = 0.999;

/**
 * max |ours - ref| / max(floor, max |ref|). With the default floor 1 it is the README's error
 * measure for forward tensors and slices; a small floor makes it purely relative.
 */
export function maxRelError(ours: ArrayLike<number>, ref: ArrayLike<number>, floor = 1): number {
  if (ours.length !== ref.length) throw new Error(`size mismatch: ${ours.length} values vs ${ref.length} in the reference`);
  let maxErr = 0;
  let maxRef = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(ours[i] - ref[i]);
    maxErr = Number.isNaN(d) ? Infinity : Math.max(maxErr, d);
    maxRef = Math.max(maxRef, Math.abs(ref[i]));
  }
  return maxErr / Math.max(floor, maxRef);
}

export interface PropagationLine {
  /** `fwd.i` / `rev.i`, the fixture's key */
  name: string;
  /** max |ours - ref| / max(1, max |ref|) */
  error: number;
  /** fraction of pixels where `ours > 0` equals `ref > 0` */
  agreement: number;
  ok: boolean;
  result: SliceResult;
}

/** Runs the fixture protocol on `graphs` and compares every slice with its reference. */
export async function checkGoldenPropagation<H>(
  graphs: Sam2FrameGraphs<H>,
  prop: Record<string, NpyArray>,
  onSlice?: (r: SliceResult) => void,
): Promise<PropagationLine[]> {
  const [depth, height, width] = prop.slices.shape;
  const slices = prop.slices.data as Float32Array;
  const maskData = prop.mask.data as unknown as ArrayLike<number | boolean>;
  const mask = Float32Array.from({ length: height * width }, (_, i) => (maskData[i] ? 1 : 0));
  const results = await new VolumePropagator(graphs).propagate(
    {
      numFrames: depth,
      height,
      width,
      image: (i) => grayToModelInput(slices.subarray(i * height * width, (i + 1) * height * width)),
    },
    { frameIdx: Math.floor(depth / 2), mask },
    { onSlice },
  );
  return results.map((result) => {
    const name = `${result.direction === 'forward' ? 'fwd' : 'rev'}.${result.frameIdx}`;
    const ref = prop[name]?.data as Float32Array | undefined;
    if (!ref) return { name, error: Infinity, agreement: 0, ok: false, result };
    let agree = 0;
    for (let i = 0; i < ref.length; i++) if (result.logits[i] > 0 === ref[i] > 0) agree++;
    const error = maxRelError(result.logits, ref);
    const agreement = agree / ref.length;
    return { name, error, agreement, ok: error <= PROPAGATION_TOL && agreement >= PROPAGATION_AGREEMENT, result };
  });
}
