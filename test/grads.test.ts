/**
 * scripts/golden-check.ts on the golden fixture: every forward tensor, every gradient (prompt
 * encoder frozen), the AdamW sample, and weights.pt == weights.safetensors.
 */
import { describe, expect, it } from 'vitest';
import { runGoldenCheck } from '../scripts/golden-check.js';
import { GOLDEN_DIR } from './helpers/golden.js';

describe('golden check (forward, gradients, AdamW)', () => {
  it('passes every check on golden-small256', async () => {
    const out: string[] = [];
    const report = await runGoldenCheck(GOLDEN_DIR, (l) => out.push(l));
    const failures = report.lines.filter((l) => !l.ok).map((l) => `${l.name}: ${l.what} ${l.error}`);
    const worst = (prefix: string) => Math.max(...report.lines.filter((l) => l.name.startsWith(prefix)).map((l) => l.error));
    console.log(
      `${report.passed} passed, ${report.failed} failed; worst gradient rel L2 error ${worst('grad ').toExponential(2)}, ` +
        `worst AdamW abs error ${worst('adamw ').toExponential(2)}`,
    );
    expect(failures).toEqual([]);
    // 281 gradients, 13 AdamW samples, the forward tensors and the weight-file checks
    expect(report.lines.filter((l) => l.name.startsWith('grad ')).length).toBe(281);
    expect(report.lines.filter((l) => l.name.startsWith('adamw ')).length).toBe(13);
    expect(report.failed).toBe(0);
  });
});
