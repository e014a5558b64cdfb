import { describe, expect, it } from 'vitest';
import { lrScale } from '../src/train/schedule.js';

describe('lr schedule', () => {
  const opts = { lr: 1e-4, minLr: 1e-5, warmupSteps: 10, maxSteps: 110 };
  it('warms up linearly, then follows a cosine to min_lr', () => {
    expect(lrScale(0, opts)).toBeCloseTo(0.1, 12);
    expect(lrScale(9, opts)).toBeCloseTo(1, 12);
    expect(lrScale(10, opts)).toBeCloseTo(1, 12);
    expect(lrScale(60, opts)).toBeCloseTo(0.1 + 0.9 * 0.5, 12);
    expect(lrScale(110, opts)).toBeCloseTo(0.1, 12);
    expect(lrScale(500, opts)).toBeCloseTo(0.1, 12);
    for (let s = 11; s < 110; s++) expect(lrScale(s, opts)).toBeLessThanOrEqual(lrScale(s - 1, opts));
  });
  it('is constant without warmup when min_lr equals lr', () => {
    expect(lrScale(0, { lr: 1, minLr: 1, warmupSteps: 0, maxSteps: 5 })).toBe(1);
    expect(lrScale(3, { lr: 1, minLr: 1, warmupSteps: 0, maxSteps: 5 })).toBe(1);
  });
});
