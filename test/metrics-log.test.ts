/** The console's throughput figure: readable for a 55 s step at 1024 as for the demo's 9.6 img/s. */
import { describe, expect, it } from 'vitest';
import { formatRate } from '../src/train/metrics-log.js';

describe('formatRate', () => {
  it('keeps two significant digits below 1 img/s and one decimal above', () => {
    expect(formatRate(1 / 55.4)).toBe('0.018');
    expect(formatRate(0.203)).toBe('0.20');
    expect(formatRate(9.64)).toBe('9.6');
    expect(formatRate(120)).toBe('120.0');
    expect(formatRate(0)).toBe('0.0');
  });
});
