// Correction clicks against the official sample_one_point_from_error_center (cv2's exact distance transform).
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readNpz } from '../src/io/npz.js';
import { nextCorrectionClick, squaredDepth } from '../src/data/clicks.js';

const fx = readNpz(join(import.meta.dirname, 'fixtures', 'clicks', 'clicks.npz'));
const [count, h, w] = fx.gt.shape;
const gts = fx.gt.data as Uint8Array;
const preds = fx.pred.data as Uint8Array;
const fnDepth = fx.fn_dt.data as Float32Array;
const points = fx.points.data as Float32Array;
const labels = fx.labels.data as Int32Array;

describe('squaredDepth', () => {
  it('is the exact Euclidean distance transform of cv2 (DIST_L2, precise, border outside) on 200 masks', () => {
    let worst = 0;
    for (let i = 0; i < count; i++) {
      const g = gts.subarray(i * h * w, (i + 1) * h * w);
      const p = preds.subarray(i * h * w, (i + 1) * h * w);
      const fn = Uint8Array.from(g, (v, j) => (v && !p[j] ? 1 : 0));
      const ours = squaredDepth(fn, h, w);
      const ref = fnDepth.subarray(i * h * w, (i + 1) * h * w);
      for (let j = 0; j < h * w; j++) worst = Math.max(worst, Math.abs(Math.sqrt(ours[j]) - ref[j]));
    }
    expect(worst).toBeLessThan(1e-5);
  });

  it('matches a hand-computed case: a 3x5 block inside a 5x7 image', () => {
    const region = new Uint8Array(35);
    for (let y = 1; y <= 3; y++) for (let x = 1; x <= 5; x++) region[y * 7 + x] = 1;
    const d = squaredDepth(region, 5, 7);
    expect(Array.from(d.subarray(7, 14))).toEqual([0, 1, 1, 1, 1, 1, 0]);
    expect(Array.from(d.subarray(14, 21))).toEqual([0, 1, 4, 4, 4, 1, 0]);
    // the border counts as outside: a full image is 1 deep at its edge
    expect(Array.from(squaredDepth(new Uint8Array(9).fill(1), 3, 3))).toEqual([1, 1, 1, 1, 4, 1, 1, 1, 1]);
  });
});

describe('nextCorrectionClick', () => {
  it('picks the same point and label as the official sampler on 200 cases', () => {
    const mismatches: string[] = [];
    for (let i = 0; i < count; i++) {
      const c = nextCorrectionClick(gts.subarray(i * h * w, (i + 1) * h * w), preds.subarray(i * h * w, (i + 1) * h * w), h, w);
      const [x, y] = [points[2 * i], points[2 * i + 1]];
      if (c.x !== x || c.y !== y || c.label !== labels[i]) mismatches.push(`case ${i}: ours ${c.x},${c.y}/${c.label} ref ${x},${y}/${labels[i]}`);
    }
    expect(mismatches).toEqual([]);
  });

  it('clicks positive in the middle of a missed object when nothing is predicted', () => {
    const gt = new Uint8Array(49);
    for (let y = 1; y <= 5; y++) for (let x = 1; x <= 5; x++) gt[y * 7 + x] = 1;
    expect(nextCorrectionClick(gt, new Uint8Array(49), 7, 7)).toEqual({ x: 3, y: 3, label: 1 });
  });

  it('rejects masks of the wrong size', () => {
    expect(() => nextCorrectionClick(new Uint8Array(4), new Uint8Array(6), 2, 2)).toThrow(/2x2/);
  });
});
