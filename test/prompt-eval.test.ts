/** Prompt-level evaluation on hand-built cases with a scripted stand-in for the model; 3D label merging by score. */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ellipseInBoxDice } from '../src/eval/baseline.js';
import { readLabelNames } from '../src/eval/labels.js';
import {
  clicksToReach,
  evaluateCasePrompts,
  NOC_CAP,
  shiftedBox,
  summarizePrompts,
  type PromptCase,
  type SlicePromptInput,
  type SliceSegmenter,
} from '../src/onnx/prompt-eval.js';
import { mergeByScore } from '../src/model/video-output.js';

const root = mkdtempSync(join(tmpdir(), 'medtune-prompt-eval-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A (1, H, W) case with rectangles [label, x0, y0, x1, y1] (inclusive). */
function rectCase(name: string, H: number, W: number, rects: number[][]): PromptCase {
  const gts = new Uint8Array(H * W);
  for (const [l, x0, y0, x1, y1] of rects) for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) gts[y * W + x] = l;
  return { name, depth: 1, height: H, width: W, gts };
}

/** A stand-in model that answers every prompt with the box filled. */
const boxFiller = (H: number, W: number): SliceSegmenter => async () => async (p) => {
  const mask = new Uint8Array(H * W);
  for (let y = p.box[1]; y <= p.box[3]; y++) for (let x = p.box[0]; x <= p.box[2]; x++) mask[y * W + x] = 1;
  return { mask, lowRes: new Float32Array(4) };
};

const tight = { boxShift: 0, seed: '1', clicks: 0, stability: true };

describe('prompt-level evaluation', () => {
  it('NoC: clicks until the IoU first reaches the threshold, the box alone counting 0, capped', () => {
    expect(clicksToReach([0.5, 0.8, 0.86, 0.91], 0.85)).toBe(2);
    expect(clicksToReach([0.5, 0.8, 0.86, 0.91], 0.9)).toBe(3);
    expect(clicksToReach([0.95, 0.2], 0.9)).toBe(0);
    expect(clicksToReach([0.1, 0.2, 0.3], 0.85)).toBe(NOC_CAP);
  });

  it('box shifts: seeded per (seed, case, slice, label), each side 0..N outwards, clamped to the slice', () => {
    const tightBox = [10, 12, 20, 30] as const;
    const key = { case: 'a.npz', slice: 3, label: 2 };
    const settings = { boxShift: 3, seed: '7', clicks: 0, stability: true };
    const box = shiftedBox(tightBox, settings, key, 64, 64);
    expect(shiftedBox(tightBox, settings, key, 64, 64)).toEqual(box);
    const seen = new Set<string>();
    for (let s = 0; s < 50; s++) {
      const b = shiftedBox(tightBox, { ...settings, seed: String(s) }, key, 64, 64);
      seen.add(b.join());
      const d = [tightBox[0] - b[0], tightBox[1] - b[1], b[2] - tightBox[2], b[3] - tightBox[3]];
      for (const v of d) expect(Number.isInteger(v) && v >= 0 && v <= 3).toBe(true);
    }
    expect(seen.size).toBeGreaterThan(20); // 4^4 boxes possible: the seed matters
    expect(shiftedBox(tightBox, { ...settings, boxShift: 0 }, key, 64, 64)).toEqual([...tightBox]);
    // at the border: x0, y0 stop at 0, x1, y1 at the last pixel
    const edge = shiftedBox([0, 0, 63, 40], { ...settings, boxShift: 50 }, key, 41, 64);
    expect(edge).toEqual([0, 0, 63, 40]);
  });

  it('one row per (slice, label) with the model\'s Dice and the ellipse in the same box (hand-computed)', async () => {
    // label 1: 4 x 4 square; label 2: 6 x 2 bar; the box-filling stand-in scores 1 on both with tight boxes
    const c = rectCase('r.npz', 12, 12, [[1, 1, 1, 4, 4], [2, 5, 8, 10, 9]]);
    const rows = await evaluateCasePrompts(c, boxFiller(12, 12), tight, new Map([[1, 'Anterior']]));
    expect(rows.map((r) => [r.slice, r.label, r.name, r.box])).toEqual([
      [0, 1, 'Anterior', [1, 1, 4, 4]],
      [0, 2, '2', [5, 8, 10, 9]],
    ]);
    expect(rows.map((r) => r.dsc)).toEqual([1, 1]);
    // 4 x 4 box: the pixel centres at (+-1.5, +-1.5) from the centre fall outside the radius-2 circle, the other 12 inside
    expect(rows[0].ellipse_dsc).toBeCloseTo((2 * 12) / (16 + 12), 12);
    // 6 x 2 box (radii 3, 1): even the corner centres (2.5, 0.5) are inside (2.5^2/9 + 0.5^2 = 0.94)
    expect(rows[1].ellipse_dsc).toBe(1);
    const report = summarizePrompts(rows, tight);
    expect(report.all).toEqual({ n: 2, dsc: 1, ellipse_dsc: (24 / 28 + 1) / 2 });
    expect(report.perLabel.map((l) => [l.label, l.name, l.summary.n])).toEqual([[1, 'Anterior', 1], [2, '2', 1]]);
  });

  it('correction clicks: from the current error, every click so far with the box, the previous low-res logits as mask prompt', async () => {
    // 9 x 9 slice, label 1 on the 3 x 3 square at rows/cols 3..5
    const c = rectCase('c.npz', 9, 9, [[1, 3, 3, 5, 5]]);
    const gt = c.gts as Uint8Array;
    const withFp = gt.slice();
    withFp[0] = 1; // one false positive at (0, 0)
    const answers = [new Uint8Array(81), withFp, gt.slice()];
    const prompts: SlicePromptInput[] = [];
    const lowRes = answers.map((_, i) => Float32Array.from([i]));
    const scripted: SliceSegmenter = async () => async (p) => {
      const i = prompts.length;
      prompts.push(p);
      return { mask: answers[i], lowRes: lowRes[i] };
    };
    const [row] = await evaluateCasePrompts(c, scripted, { ...tight, clicks: 2 }, new Map());
    // round 1: everything missed -> positive click at the square's centre (deepest); round 2: the lone false positive -> negative click there
    expect(prompts.map((p) => p.points)).toEqual([[], [[4, 4, 1]], [[4, 4, 1], [0, 0, 0]]]);
    expect(prompts.map((p) => p.box)).toEqual([[3, 3, 5, 5], [3, 3, 5, 5], [3, 3, 5, 5]]);
    expect(prompts.map((p) => p.mask)).toEqual([undefined, lowRes[0], lowRes[1]]);
    expect(row.click_iou).toEqual([0, 0.9, 1]);
    expect(row.click_dsc).toEqual([0, 18 / 19, 1]);
    const report = summarizePrompts([row, { ...row, case: 'd.npz', click_iou: [0.86, 0.88, 0.89] }], { ...tight, clicks: 2 });
    expect(report.all.noc85).toBe((1 + 0) / 2);
    expect(report.all.noc90).toBe((1 + NOC_CAP) / 2);
    [0.43, 0.89, 0.945].forEach((v, k) => expect(report.all.click_iou![k]).toBeCloseTo(v, 12));
  });

  it('the training-time ellipse baseline (low-res masks, boxes in input pixels) shares the ellipse', () => {
    // 4 x 4 low-res grid of an 8 px input, box over all of it: the 4 corner cells' centres lie outside
    const b = { batchSize: 2, imageSize: 8, maskSize: 4, boxes: Float32Array.from([0, 0, 8, 8, 0, 0, 4, 4]), masks: new Float32Array(32).fill(1) };
    // second sample: a 4 px box = the top-left 2 x 2 cells, all inside its ellipse ((1 - 2)^2 / 4 * 2 = 0.5); ground truth one of them
    b.masks.fill(0, 16);
    b.masks[16] = 1;
    const [full, small] = ellipseInBoxDice(b);
    expect(full).toBeCloseTo(24 / 28, 12);
    expect(small).toBeCloseTo((2 * 1) / (1 + 4), 12);
  });

  it('label names from labels.json or a Decathlon dataset.json; a broken file is named', () => {
    const a = join(root, 'names-a');
    const b = join(root, 'names-b');
    const bad = join(root, 'names-bad');
    for (const d of [a, b, bad]) mkdirSync(d, { recursive: true });
    writeFileSync(join(a, 'labels.json'), '{"1": "Anterior", "2": "Posterior"}');
    writeFileSync(join(b, 'dataset.json'), '{"labels": {"0": "background", "1": "Anterior"}}');
    writeFileSync(join(bad, 'labels.json'), '{"1": ');
    expect([...readLabelNames(a)]).toEqual([[1, 'Anterior'], [2, 'Posterior']]);
    expect([...readLabelNames(b)]).toEqual([[1, 'Anterior']]);
    expect([...readLabelNames(root)]).toEqual([]);
    expect(() => readLabelNames(bad)).toThrow(/names-bad\/labels\.json: not valid JSON/);
  });
});

describe('3D: labels propagated one by one, merged by score', () => {
  it('a voxel claimed by several labels goes to the highest logit; unclaimed stays 0; ties to the first', () => {
    const out = mergeByScore(
      [
        { label: 1, mask: Uint8Array.from([1, 1, 1, 0, 1, 0]), score: Float32Array.from([2, 0.5, 1, -1, 0.7, 5]) },
        { label: 2, mask: Uint8Array.from([0, 1, 1, 1, 1, 0]), score: Float32Array.from([-1, 3, 0.2, 1, 0.7, 9]) },
      ],
      6,
    );
    expect(Array.from(out)).toEqual([1, 2, 1, 2, 1, 0]);
    expect(() => mergeByScore([{ label: 1, mask: new Uint8Array(2), score: new Float32Array(2) }], 3)).toThrow(/label 1 has 2 voxels, expected 3/);
  });
});
