/**
 * Prompt-level evaluation (`medtune eval --per-slice`): every (slice, label) with foreground is
 * one sample, prompted as a user would prompt it.
 *
 * - Box: the label's bounding box on the slice (inclusive pixel indices, as training and `predict`
 *   take it) with each side pushed outwards by a uniform integer 0..boxShift in the volume's own
 *   pixels, clamped to the slice. The draws come from a generator seeded by (seed, case, slice,
 *   label), so a sample's box does not depend on which other samples run (shards agree).
 * - Baseline: the ellipse filling the same box (its pixel extent), scored beside the model.
 * - Clicks (`clicks` K > 0): K correction rounds as in SAM2's interactive setting: a click from
 *   the current error (`nextCorrectionClick`), then a prediction from the box, every click so
 *   far and the previous round's low-res logits as mask prompt. Dice and IoU after each round.
 * - NoC@85 / NoC@90: the clicks after which IoU first reaches 0.85 / 0.90 (0: the box alone),
 *   NOC_CAP when it is not reached within the K clicks run (run K = 20 for the usual NoC).
 * Means are over samples; per label over that label's samples.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import seedrandom from 'seedrandom';
import { nextCorrectionClick } from '../data/clicks.js';
import { labelBoxesOf } from '../data/sampling.js';
import { shiftBox } from '../data/transforms.js';
import type { LabelArray } from '../data/volume.js';
import { readNpz, type NpyArray } from '../io/npz.js';
import { shardCases, type Shard } from '../shard.js';
import { ellipseInBox } from '../eval/baseline.js';
import { byCaseName, gatherShards, toLabelData } from '../eval/evaluate.js';
import { labelName, readLabelNames } from '../eval/labels.js';
import { diceCoefficient, intersectionOverUnion } from '../eval/metrics.js';

export const NOC_CAP = 20;
export const NOC_THRESHOLDS = [0.85, 0.9] as const;

export interface PromptSettings {
  boxShift: number;
  seed: string;
  clicks: number;
  /** the single mask chosen with the official stability fallback (else the single-mask token's, as it is) */
  stability: boolean;
}

/** A prompt on one slice, in the slice's pixels. */
export interface SlicePromptInput {
  box: [number, number, number, number];
  /** x, y, label (1 positive, 0 negative) */
  points: Array<[number, number, number]>;
  /** the previous round's low-res logits */
  mask?: Float32Array;
}

/** One slice, ready to be prompted (its image encoded once): prompt -> binary mask (H * W) and low-res logits. */
export type PromptedSlice = (prompt: SlicePromptInput) => Promise<{ mask: Uint8Array; lowRes: Float32Array }>;

/** Prepares slice `z` of a case for prompting. */
export type SliceSegmenter = (z: number) => Promise<PromptedSlice>;

export interface PromptCase {
  name: string;
  depth: number;
  height: number;
  width: number;
  /** (D * H * W) ground-truth labels */
  gts: ArrayLike<number>;
}

export interface PromptRow {
  case: string;
  slice: number;
  label: number;
  name: string;
  /** the shifted box given to the model */
  box: [number, number, number, number];
  dsc: number;
  ellipse_dsc: number;
  /** with clicks: Dice and IoU after 0..K clicks (0 = the box alone) */
  click_dsc?: number[];
  click_iou?: number[];
}

/** The shifted box of one sample: the draws depend only on (seed, case, slice, label). */
export function shiftedBox(box: readonly [number, number, number, number], settings: PromptSettings, key: { case: string; slice: number; label: number }, height: number, width: number): [number, number, number, number] {
  const rng = seedrandom(`${settings.seed}/${key.case}/${key.slice}/${key.label}`);
  const [x0, y0, x1, y1] = shiftBox(box, settings.boxShift, [rng(), rng(), rng(), rng()], Infinity);
  return [x0, y0, Math.min(x1, width - 1), Math.min(y1, height - 1)];
}

/** Clicks after which `ious` first reaches `threshold` (index 0 = no click), else NOC_CAP. */
export function clicksToReach(ious: readonly number[], threshold: number): number {
  const k = ious.findIndex((v) => v >= threshold);
  return k < 0 ? NOC_CAP : Math.min(k, NOC_CAP);
}

/** Every (slice, label) sample of one case, in slice then label order. */
export async function evaluateCasePrompts(c: PromptCase, segment: SliceSegmenter, settings: PromptSettings, names: ReadonlyMap<number, string>): Promise<PromptRow[]> {
  const { depth, height: H, width: W } = c;
  const plane = H * W;
  if (c.gts.length !== depth * plane) throw new Error(`${c.name}: ${c.gts.length} label values for a ${depth}x${H}x${W} volume`);
  const rows: PromptRow[] = [];
  for (let z = 0; z < depth; z++) {
    const boxes = labelBoxesOf(c.gts as LabelArray, z * plane, W, H);
    if (boxes.size === 0) continue;
    const slice = await segment(z);
    for (const label of [...boxes.keys()].sort((a, b) => a - b)) {
      const gt = new Uint8Array(plane);
      for (let i = 0; i < plane; i++) gt[i] = c.gts[z * plane + i] === label ? 1 : 0;
      const box = shiftedBox(boxes.get(label)!, settings, { case: c.name, slice: z, label }, H, W);
      let r = await slice({ box, points: [] });
      const row: PromptRow = {
        case: c.name,
        slice: z,
        label,
        name: labelName(names, label),
        box,
        dsc: diceCoefficient(gt, r.mask),
        ellipse_dsc: diceCoefficient(gt, ellipseInBox([box[0], box[1], box[2] + 1, box[3] + 1], H, W)),
      };
      if (settings.clicks > 0) {
        row.click_dsc = [row.dsc];
        row.click_iou = [intersectionOverUnion(gt, r.mask)];
        const points: SlicePromptInput['points'] = [];
        for (let k = 0; k < settings.clicks; k++) {
          const click = nextCorrectionClick(gt, r.mask, H, W);
          points.push([click.x, click.y, click.label]);
          r = await slice({ box, points: points.slice(), mask: r.lowRes });
          row.click_dsc.push(diceCoefficient(gt, r.mask));
          row.click_iou.push(intersectionOverUnion(gt, r.mask));
        }
      }
      rows.push(row);
    }
  }
  return rows;
}

export interface PromptGroupSummary {
  n: number;
  dsc: number;
  ellipse_dsc: number;
  /** with clicks: mean Dice / IoU after 0..K clicks, mean NoC */
  click_dsc?: number[];
  click_iou?: number[];
  noc85?: number;
  noc90?: number;
}

export interface PromptEvalReport {
  settings: PromptSettings;
  rows: PromptRow[];
  all: PromptGroupSummary;
  /** by label name, in label order */
  perLabel: Array<{ label: number; name: string; summary: PromptGroupSummary }>;
  numCases: number;
  warnings: string[];
}

function mean(values: number[]): number {
  return values.length ? values.reduce((a, v) => a + v, 0) / values.length : NaN;
}

function summarizeGroup(rows: PromptRow[], clicks: number): PromptGroupSummary {
  const s: PromptGroupSummary = { n: rows.length, dsc: mean(rows.map((r) => r.dsc)), ellipse_dsc: mean(rows.map((r) => r.ellipse_dsc)) };
  if (clicks > 0) {
    s.click_dsc = Array.from({ length: clicks + 1 }, (_, k) => mean(rows.map((r) => r.click_dsc![k])));
    s.click_iou = Array.from({ length: clicks + 1 }, (_, k) => mean(rows.map((r) => r.click_iou![k])));
    s.noc85 = mean(rows.map((r) => clicksToReach(r.click_iou!, NOC_THRESHOLDS[0])));
    s.noc90 = mean(rows.map((r) => clicksToReach(r.click_iou!, NOC_THRESHOLDS[1])));
  }
  return s;
}

/** Means over all samples and per label, from the rows (in their order, so shards merged in case order give the same numbers). */
export function summarizePrompts(rows: PromptRow[], settings: PromptSettings, warnings: string[] = []): PromptEvalReport {
  const labels = [...new Map(rows.map((r) => [r.label, r.name])).entries()].sort((a, b) => a[0] - b[0]);
  return {
    settings,
    rows,
    all: summarizeGroup(rows, settings.clicks),
    perLabel: labels.map(([label, name]) => ({ label, name, summary: summarizeGroup(rows.filter((r) => r.label === label), settings.clicks) })),
    numCases: new Set(rows.map((r) => r.case)).size,
    warnings,
  };
}

// ---------------------------------------------------------------------------------------------
// Output

/** `{"mean":{"dsc"},"per_label":{name:{...}},"baseline":{"ellipse_dsc"},"clicks":{...}|null,"cases":[...]}` */
export function promptReportJson(r: PromptEvalReport): string {
  const clicks = r.settings.clicks > 0 ? { dsc: r.all.click_dsc, iou: r.all.click_iou, noc85: r.all.noc85, noc90: r.all.noc90, noc_cap: NOC_CAP } : null;
  return JSON.stringify({
    settings: r.settings,
    mean: { dsc: r.all.dsc },
    per_label: Object.fromEntries(r.perLabel.map((l) => [l.name, { label: l.label, ...l.summary }])),
    baseline: { ellipse_dsc: r.all.ellipse_dsc },
    clicks,
    samples: r.all.n,
    cases: r.rows,
  });
}

export function promptReportTable(r: PromptEvalReport): string {
  const k = r.settings.clicks;
  const nameWidth = Math.max(5, ...r.rows.map((x) => x.name.length), ...r.perLabel.map((l) => l.name.length));
  const caseWidth = Math.max(4, ...r.rows.map((x) => x.case.length));
  const f = (v: number | undefined) => (v === undefined || Number.isNaN(v) ? '   -  ' : v.toFixed(4));
  const clickHead = k > 0 ? `  ${Array.from({ length: k }, (_, i) => `+${i + 1} click`.padStart(8)).join('')}` : '';
  const lines = [`${'case'.padEnd(caseWidth)}  slice  ${'label'.padEnd(nameWidth)}     DSC  ellipse${clickHead}`];
  for (const x of r.rows) {
    const curve = x.click_dsc ? `  ${x.click_dsc.slice(1).map((v) => f(v).padStart(8)).join('')}` : '';
    lines.push(`${x.case.padEnd(caseWidth)}  ${String(x.slice).padStart(5)}  ${x.name.padEnd(nameWidth)}  ${f(x.dsc)}   ${f(x.ellipse_dsc)}${curve}`);
  }
  lines.push('');
  const nocHead = k > 0 ? `  NoC@85  NoC@90${clickHead}` : '';
  lines.push(`${'label'.padEnd(nameWidth)}  samples     DSC  ellipse${nocHead}`);
  const group = (name: string, s: PromptGroupSummary) => {
    const tail = k > 0 ? `  ${s.noc85!.toFixed(2).padStart(6)}  ${s.noc90!.toFixed(2).padStart(6)}  ${s.click_dsc!.slice(1).map((v) => f(v).padStart(8)).join('')}` : '';
    lines.push(`${name.padEnd(nameWidth)}  ${String(s.n).padStart(7)}  ${f(s.dsc)}   ${f(s.ellipse_dsc)}${tail}`);
  };
  for (const l of r.perLabel) group(l.name, l.summary);
  group('all', r.all);
  lines.push(
    `${r.all.n} (slice, label) sample(s) of ${r.numCases} case(s); boxes shifted outwards by 0..${r.settings.boxShift} px (seed ${r.settings.seed}); single mask ${r.settings.stability ? 'with the stability fallback' : 'token 0 as it is'}` +
      (k > 0 ? `; ${k} correction click(s), NoC capped at ${NOC_CAP} (not reached within ${k} click(s) counts ${NOC_CAP})` : ''),
  );
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Shards

export interface PromptShardReport {
  format: 'medtune-prompt-eval-shard';
  shard: { index: number; count: number };
  settings: PromptSettings;
  rows: PromptRow[];
  warnings: string[];
}

export function promptShardName(shard: { index: number; count: number }): string {
  return `prompt-eval-shard-${shard.index}-of-${shard.count}.json`;
}

export function promptShardReport(r: PromptEvalReport, shard: { index: number; count: number }): PromptShardReport {
  return { format: 'medtune-prompt-eval-shard', shard: { index: shard.index, count: shard.count }, settings: r.settings, rows: r.rows, warnings: r.warnings };
}

/** The whole run from its shards' files: exactly the unsharded report. */
export function mergePromptShards(dirs: string[]): PromptEvalReport {
  const shards = gatherShards<PromptShardReport>(dirs, 'prompt-eval-shard', 'medtune-prompt-eval-shard', (r) => `with box shift ${r.settings.boxShift}, seed ${r.settings.seed}, ${r.settings.clicks} click(s), stability ${r.settings.stability}`);
  return summarizePrompts(byCaseName(shards.flatMap((r) => r.rows)), shards[0].settings, shards.flatMap((r) => r.warnings));
}

// ---------------------------------------------------------------------------------------------
// A folder of cases

/** How the slices of one npz case (`imgs`, `gts`) are segmented: by an exported model in `eval`, by a stand-in in tests. */
export type SegmenterFactory = (file: string, arrays: Record<string, NpyArray>) => SliceSegmenter;

/**
 * Every npz case of `gtDir` (or this shard's share): `gts` (D, H, W) or (H, W) gives the samples,
 * `imgs` is what `segmenter` reads. Label names come from the folder's labels.json / dataset.json.
 */
export async function evaluatePromptsInDir(
  gtDir: string,
  segmenter: SegmenterFactory,
  settings: PromptSettings,
  opts: { shard?: Shard; onCase?: (name: string, rows: PromptRow[]) => void } = {},
): Promise<PromptEvalReport> {
  if (!(Number.isInteger(settings.boxShift) && settings.boxShift >= 0)) throw new Error(`--box-shift must be a non-negative integer number of pixels, got ${settings.boxShift}`);
  if (!(Number.isInteger(settings.clicks) && settings.clicks >= 0)) throw new Error(`--clicks must be a non-negative integer, got ${settings.clicks}`);
  if (!existsSync(gtDir) || !statSync(gtDir).isDirectory()) throw new Error(`ground-truth directory not found: ${gtDir}`);
  const all = readdirSync(gtDir).filter((f) => f.endsWith('.npz'));
  if (all.length === 0) throw new Error(`no .npz files in ${gtDir}`);
  const names = readLabelNames(gtDir);
  const rows: PromptRow[] = [];
  const warnings: string[] = [];
  for (const f of shardCases(all, opts.shard, (x) => x)) {
    const file = join(gtDir, f);
    const arrays = readNpz(file);
    const gts = arrays.gts;
    if (!gts) throw new Error(`${file}: no \`gts\` array to take the prompts from`);
    if (gts.shape.length !== 2 && gts.shape.length !== 3) throw new Error(`${file}: \`gts\` shape (${gts.shape.join(', ')}) is neither (H, W) nor (D, H, W)`);
    const [depth, height, width] = gts.shape.length === 3 ? gts.shape : [1, ...gts.shape];
    const caseRows = await evaluateCasePrompts({ name: f, depth, height, width, gts: toLabelData(gts, `${file}:gts`) }, segmenter(file, arrays), settings, names);
    if (caseRows.length === 0) warnings.push(`${f}: no foreground on any slice, no samples`);
    rows.push(...caseRows);
    opts.onCase?.(f, caseRows);
  }
  return summarizePrompts(rows, settings, warnings);
}
