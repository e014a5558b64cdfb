import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  computeSurfaceDistances,
  contourLengthTable2d,
  diceCoefficient,
  normalizedSurfaceDice,
  scoreBinary,
  squaredDistanceTransform,
  surfaceAreaTable3d,
  surfaceDiceAtTolerance,
} from '../src/eval/metrics.js';
import { buildMask, type MaskOp } from './fixtures/surface-distance/masks.js';

interface RefCase {
  name: string;
  shape: number[];
  spacing: number[];
  tolerances: number[];
  gt: MaskOp[];
  pred: MaskOp[];
  ref: {
    dsc: number | null;
    nsd: Array<number | null>;
    gt_voxels: number;
    pred_voxels: number;
    surfels_gt: number;
    surfels_pred: number;
    area_gt: number;
    area_pred: number;
  };
}

const fixture = JSON.parse(
  readFileSync(new URL('./fixtures/surface-distance/reference.json', import.meta.url), 'utf8'),
) as { cases: RefCase[] };

describe('NSD and DSC against google-deepmind/surface-distance', () => {
  let maxNsdErr = 0;
  it.each(fixture.cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const gt = buildMask(c.gt, c.shape);
    const pred = buildMask(c.pred, c.shape, gt);
    // the generator reproduces the reference's masks
    expect(gt.reduce((a, b) => a + b, 0)).toBe(c.ref.gt_voxels);
    expect(pred.reduce((a, b) => a + b, 0)).toBe(c.ref.pred_voxels);

    const sd = computeSurfaceDistances(gt, pred, c.shape, c.spacing);
    expect(sd.surfelAreasGt.length).toBe(c.ref.surfels_gt);
    expect(sd.surfelAreasPred.length).toBe(c.ref.surfels_pred);
    const areaGt = sd.surfelAreasGt.reduce((a, b) => a + b, 0);
    const areaPred = sd.surfelAreasPred.reduce((a, b) => a + b, 0);
    expect(Math.abs(areaGt - c.ref.area_gt)).toBeLessThanOrEqual(1e-9 * Math.max(1, c.ref.area_gt));
    expect(Math.abs(areaPred - c.ref.area_pred)).toBeLessThanOrEqual(1e-9 * Math.max(1, c.ref.area_pred));

    const scores = scoreBinary(gt, pred, c.shape, c.spacing, c.tolerances);
    if (c.ref.dsc === null) {
      // both empty: the reference says NaN, the challenge convention (ours) says 1
      expect(scores.dsc).toBe(1);
      expect(scores.nsd.every((v) => v === 1)).toBe(true);
      expect(Number.isNaN(surfaceDiceAtTolerance(sd, c.tolerances[0]))).toBe(true);
      return;
    }
    expect(scores.dsc).toBe(c.ref.dsc);
    c.tolerances.forEach((t, i) => {
      const ref = c.ref.nsd[i] as number;
      const err = Math.abs(scores.nsd[i] - ref);
      maxNsdErr = Math.max(maxNsdErr, err);
      expect(err, `tolerance ${t}`).toBeLessThanOrEqual(1e-3);
      // in fact the agreement is to rounding error
      expect(err, `tolerance ${t}`).toBeLessThanOrEqual(1e-9);
      expect(normalizedSurfaceDice(gt, pred, c.shape, c.spacing, t)).toBe(scores.nsd[i]);
    });
  });

  it('reports the largest deviation, over every reference NSD value', () => {
    // recomputed here, so the bound holds whether or not the cases above ran, and it covers them all
    let compared = 0;
    for (const c of fixture.cases) {
      if (c.ref.dsc === null) continue;
      const gt = buildMask(c.gt, c.shape);
      const nsd = scoreBinary(gt, buildMask(c.pred, c.shape, gt), c.shape, c.spacing, c.tolerances).nsd;
      c.tolerances.forEach((_, i) => {
        maxNsdErr = Math.max(maxNsdErr, Math.abs(nsd[i] - (c.ref.nsd[i] as number)));
        compared++;
      });
    }
    const expected = fixture.cases.filter((c) => c.ref.dsc !== null).reduce((n, c) => n + c.tolerances.length, 0);
    expect(compared).toBe(expected);
    expect(compared).toBeGreaterThan(0);
    console.log(`max |NSD - reference| over ${compared} values in ${fixture.cases.length} cases: ${maxNsdErr.toExponential(2)}`);
    expect(maxNsdErr).toBeLessThanOrEqual(1e-9);
  });
});

describe('metric edge cases', () => {
  it('DSC: both empty 1, one empty 0, counts', () => {
    expect(diceCoefficient([0, 0, 0], [0, 0, 0])).toBe(1);
    expect(diceCoefficient([1, 0, 0], [0, 0, 0])).toBe(0);
    expect(diceCoefficient([0, 0, 0], [0, 7, 0])).toBe(0);
    expect(diceCoefficient([1, 1, 0, 0], [0, 1, 1, 0])).toBe(0.5);
  });

  it('NSD: both empty 1, one empty 0, identical 1', () => {
    const shape = [5, 6, 7];
    const empty = new Uint8Array(210);
    const one = new Uint8Array(210);
    one[2 * 42 + 3 * 7 + 3] = 1;
    expect(normalizedSurfaceDice(empty, empty, shape, [1, 1, 1], 2)).toBe(1);
    expect(normalizedSurfaceDice(one, empty, shape, [1, 1, 1], 2)).toBe(0);
    expect(normalizedSurfaceDice(empty, one, shape, [1, 1, 1], 2)).toBe(0);
    expect(normalizedSurfaceDice(one, one, shape, [3, 1, 0.5], 0)).toBe(1);
    expect(normalizedSurfaceDice(new Uint8Array(12), new Uint8Array(12), [3, 4], [1, 1], 1)).toBe(1);
  });

  it('rejects bad shapes and spacing', () => {
    expect(() => computeSurfaceDistances([1, 0], [1, 0], [2], [1])).toThrow(/2D and 3D/);
    expect(() => computeSurfaceDistances([1, 0, 0, 0], [1, 0, 0, 0], [2, 2], [1, 1, 1])).toThrow(/spacing has 3 values/);
    expect(() => computeSurfaceDistances([1, 0, 0, 0], [1, 0, 0], [2, 2], [1, 1])).toThrow(/prediction: mask has 3 elements/);
    expect(() => computeSurfaceDistances([1, 0, 0, 0], [1, 0, 0, 0], [2, 2], [1, 0])).toThrow(/positive/);
  });

  it('surface tables: a cube face and a straight contour have the expected size', () => {
    // a flat face cell (4 foreground corners on one side) has area s1*s2 for a normal along axis 0
    const t3 = surfaceAreaTable3d([2, 3, 5]);
    expect(t3[0b11110000]).toBeCloseTo(15, 12);
    expect(t3[0b11001100]).toBeCloseTo(10, 12); // normal along axis 1: s0*s2
    expect(t3[0b10101010]).toBeCloseTo(6, 12); // normal along axis 2: s0*s1
    expect(t3[0]).toBe(0);
    expect(t3[255]).toBe(0);
    // complement symmetry
    for (let c = 0; c < 256; c++) expect(t3[c]).toBeCloseTo(t3[255 - c], 12);
    const t2 = contourLengthTable2d([2, 3]);
    expect(t2[0b0011]).toBe(3);
    expect(t2[0b0101]).toBe(2);
    expect(t2[0b0110]).toBeCloseTo(Math.sqrt(13), 12);
  });

  it('distance transform is exact with anisotropic spacing', () => {
    const dims = [7, 9, 11];
    const features = new Uint8Array(7 * 9 * 11);
    const pts = [
      [1, 2, 3],
      [6, 8, 0],
      [3, 0, 10],
    ];
    for (const [a, b, c] of pts) features[(a * 9 + b) * 11 + c] = 1;
    const s = [2.5, 0.7, 1.3];
    const d2 = squaredDistanceTransform(features, dims, s);
    for (let a = 0; a < 7; a++)
      for (let b = 0; b < 9; b++)
        for (let c = 0; c < 11; c++) {
          const brute = Math.min(...pts.map(([x, y, z]) => ((a - x) * s[0]) ** 2 + ((b - y) * s[1]) ** 2 + ((c - z) * s[2]) ** 2));
          expect(d2[(a * 9 + b) * 11 + c]).toBeCloseTo(brute, 10);
        }
  });
});
