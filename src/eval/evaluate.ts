/**
 * Evaluation of label maps in the medical segmentation challenge convention: per case and label
 * DSC and NSD, and their means.
 *
 * Files: a prediction npz holds `segs`; the ground-truth npz of the same name holds `gts` (same
 * shape) and, for 3D volumes, `spacing`.
 *
 * Conventions, made explicit because they decide the numbers:
 * - Arrays are (D, H, W) = (z, y, x) for volumes and (H, W) for 2D images. `spacing` in the npz is
 *   (x, y, z) in mm, SimpleITK's `GetSpacing()` order, as the challenges' preprocessing writes it
 *   (and `medtune prepare` too). It is reversed to (z, y, x) to pair with the array axes
 *   (`spacingOrder: 'xyz'`, the default). With `spacingOrder: 'zyx'` the stored values are used in
 *   array-axis order as they are, which is what the challenge evaluation scripts do
 *   (`compute_surface_distances(gts, segs, spacing)`); use it to reproduce their numbers exactly.
 * - 2D cases are scored as the challenge scripts score them (`nsd2d: 'slab'`, the default): the
 *   (H, W) mask becomes an (H, W, 1) volume with spacing (1, 1, 1), so the surface includes the two
 *   caps of the slab. `nsd2d: 'contour'` scores the 2D contour instead (marching squares), with the
 *   stored (x, y) spacing when there is one, else 1 mm.
 * - Labels scored: the non-zero labels present in the ground truth (as the challenges do). Labels
 *   found only in the prediction are reported in `warnings`; with `labels: 'union'` they are scored
 *   too (DSC 0, NSD 0). A case whose ground truth has no foreground is scored on the prediction's
 *   labels (each 0), or, if the prediction is empty too, as one row with label 0 and DSC = NSD = 1.
 * - Both masks of a label empty: DSC 1, NSD 1; exactly one empty: 0 (the challenge convention).
 *   The challenge scripts additionally set NSD to 0 when a case's DSC is at most 0.2; not done here.
 * - `mean`: the mean over cases of each case's mean over its labels (how the challenges average).
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { readNpz, type NpyArray } from '../io/npz.js';
import { shardCases, type Shard } from '../shard.js';
import { labelName, readLabelNames } from './labels.js';
import { scoreBinary } from './metrics.js';

export type SpacingOrder = 'xyz' | 'zyx';
export type Nsd2dMode = 'slab' | 'contour';
export type LabelSet = 'gt' | 'union';

export interface EvalOptions {
  /** NSD tolerance in mm (default 2) */
  toleranceMm?: number;
  spacingOrder?: SpacingOrder;
  nsd2d?: Nsd2dMode;
  labels?: LabelSet;
  /** score only this share of the ground-truth files (SLURM array, Kubernetes Indexed Job) */
  shard?: Shard;
}

/** A label map, flat row-major, with its shape. */
export interface LabelMap {
  data: ArrayLike<number>;
  shape: number[];
}

export interface CaseLabelResult {
  case: string;
  label: number;
  dsc: number;
  nsd: number;
}

export interface EvalReport {
  cases: CaseLabelResult[];
  mean: { dsc: number; nsd: number };
  /** per label (in label order): mean over the cases that score it */
  perLabel: Array<{ label: number; name: string; n: number; dsc: number; nsd: number }>;
  /** names of the labels (labels.json / dataset.json beside the ground truth) */
  labelNames: Record<string, string>;
  /** number of cases that entered the mean */
  numCases: number;
  toleranceMm: number;
  warnings: string[];
}

/** One case to score: `spacing` as stored in the ground-truth file (see the conventions above). */
export interface EvalCase {
  name: string;
  gt: LabelMap;
  pred: LabelMap;
  spacing?: number[];
}

function labelsOf(data: ArrayLike<number>): number[] {
  const seen = new Set<number>();
  let last = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v !== 0 && v !== last) {
      seen.add(v);
      last = v;
    }
  }
  return [...seen].sort((a, b) => a - b);
}

function binaryMask(data: ArrayLike<number>, label: number): Uint8Array {
  const m = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) if (data[i] === label) m[i] = 1;
  return m;
}

/** The shape and spacing (array-axis order) the surface metric runs on for this case. */
function metricGeometry(c: EvalCase, opts: ScoringOptions): { shape: number[]; spacing: number[] } {
  const shape = c.gt.shape;
  if (shape.length === 2) {
    if (opts.nsd2d === 'slab') return { shape: [shape[0], shape[1], 1], spacing: [1, 1, 1] };
    if (c.spacing && c.spacing.length >= 2) {
      const s = opts.spacingOrder === 'xyz' ? [c.spacing[1], c.spacing[0]] : [c.spacing[0], c.spacing[1]];
      return { shape, spacing: s };
    }
    return { shape, spacing: [1, 1] };
  }
  if (shape.length === 3) {
    if (!c.spacing || c.spacing.length !== 3) {
      throw new Error(`${c.name}: a 3D ground truth needs a 3-value \`spacing\`, got ${c.spacing ? `(${c.spacing.join(', ')})` : 'none'}`);
    }
    const s = opts.spacingOrder === 'xyz' ? [c.spacing[2], c.spacing[1], c.spacing[0]] : c.spacing.slice();
    return { shape, spacing: s };
  }
  throw new Error(`${c.name}: expected a 2D (H, W) or 3D (D, H, W) label map, got shape (${shape.join(', ')})`);
}

/** The options that change a score, filled in. */
type ScoringOptions = Required<Omit<EvalOptions, 'shard'>>;

function withDefaults(opts: EvalOptions): ScoringOptions {
  const o = {
    toleranceMm: opts.toleranceMm ?? 2,
    spacingOrder: opts.spacingOrder ?? 'xyz',
    nsd2d: opts.nsd2d ?? 'slab',
    labels: opts.labels ?? 'gt',
  };
  if (!(o.toleranceMm >= 0) || !Number.isFinite(o.toleranceMm)) throw new Error(`tolerance must be a non-negative number of mm, got ${o.toleranceMm}`);
  return o;
}

/** Score one case: a row per label, and warnings. */
export function evaluateCase(c: EvalCase, options: EvalOptions = {}): { rows: CaseLabelResult[]; warnings: string[] } {
  const opts = withDefaults(options);
  const gs = c.gt.shape;
  const ps = c.pred.shape;
  if (gs.length !== ps.length || gs.some((n, i) => n !== ps[i])) {
    throw new Error(`${c.name}: prediction shape (${ps.join(', ')}) does not match ground truth shape (${gs.join(', ')})`);
  }
  const { shape, spacing } = metricGeometry(c, opts);
  const warnings: string[] = [];
  const gtLabels = labelsOf(c.gt.data);
  const predLabels = labelsOf(c.pred.data);
  const predOnly = predLabels.filter((l) => !gtLabels.includes(l));
  let labels: number[];
  if (gtLabels.length === 0) {
    labels = predLabels;
    warnings.push(
      predLabels.length
        ? `${c.name}: ground truth has no foreground; prediction labels ${predOnly.join(', ')} scored 0`
        : `${c.name}: ground truth and prediction are both empty; scored 1`,
    );
  } else if (opts.labels === 'union') {
    labels = [...new Set([...gtLabels, ...predLabels])].sort((a, b) => a - b);
  } else {
    labels = gtLabels;
    if (predOnly.length) warnings.push(`${c.name}: labels only in the prediction, not scored: ${predOnly.join(', ')}`);
  }
  if (labels.length === 0) return { rows: [{ case: c.name, label: 0, dsc: 1, nsd: 1 }], warnings };
  const rows = labels.map((label) => {
    const s = scoreBinary(binaryMask(c.gt.data, label), binaryMask(c.pred.data, label), shape, spacing, [opts.toleranceMm]);
    return { case: c.name, label, dsc: s.dsc, nsd: s.nsd[0] };
  });
  return { rows, warnings };
}

/** Aggregate rows: mean over cases of per-case label means, and per label the mean over cases. */
export function summarize(rows: CaseLabelResult[], toleranceMm: number, warnings: string[] = [], names: ReadonlyMap<number, string> = new Map()): EvalReport {
  const byCase = new Map<string, CaseLabelResult[]>();
  const byLabel = new Map<number, CaseLabelResult[]>();
  const add = <K>(m: Map<K, CaseLabelResult[]>, k: K, r: CaseLabelResult) => (m.get(k) ?? m.set(k, []).get(k)!).push(r);
  for (const r of rows) {
    add(byCase, r.case, r);
    add(byLabel, r.label, r);
  }
  const mean = (list: CaseLabelResult[], k: 'dsc' | 'nsd') => list.reduce((a, r) => a + r[k], 0) / list.length;
  let dsc = 0;
  let nsd = 0;
  for (const list of byCase.values()) {
    dsc += mean(list, 'dsc');
    nsd += mean(list, 'nsd');
  }
  const n = byCase.size;
  const perLabel = [...byLabel.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([label, list]) => ({ label, name: labelName(names, label), n: list.length, dsc: mean(list, 'dsc'), nsd: mean(list, 'nsd') }));
  return {
    cases: rows,
    mean: { dsc: n ? dsc / n : NaN, nsd: n ? nsd / n : NaN },
    perLabel,
    labelNames: Object.fromEntries(names),
    numCases: n,
    toleranceMm,
    warnings,
  };
}

/** Score a list of cases (each already in memory). */
export function evaluateCases(cases: Iterable<EvalCase>, options: EvalOptions = {}): EvalReport {
  const opts = withDefaults(options);
  const rows: CaseLabelResult[] = [];
  const warnings: string[] = [];
  for (const c of cases) {
    const r = evaluateCase(c, opts);
    rows.push(...r.rows);
    warnings.push(...r.warnings);
  }
  return summarize(rows, opts.toleranceMm, warnings);
}

// ---------------------------------------------------------------------------------------------
// npz files

/** Integer label data from an npz array (64-bit integers converted; values must be exact). */
export function toLabelData(arr: NpyArray, source: string): ArrayLike<number> {
  const d = arr.data as unknown;
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) {
    const out = new Int32Array(d.length);
    for (let i = 0; i < d.length; i++) {
      const v = Number(d[i]);
      if (v > 2147483647 || v < -2147483648) throw new Error(`${source}: label value ${d[i]} out of range`);
      out[i] = v;
    }
    return out;
  }
  if (
    d instanceof Uint8Array ||
    d instanceof Int8Array ||
    d instanceof Uint16Array ||
    d instanceof Int16Array ||
    d instanceof Uint32Array ||
    d instanceof Int32Array ||
    d instanceof Float32Array ||
    d instanceof Float64Array ||
    d instanceof Uint8ClampedArray
  ) {
    return d;
  }
  throw new Error(`${source}: unsupported label array type ${arr.dtype}`);
}

function requireKey(arrays: Record<string, NpyArray>, key: string, file: string): NpyArray {
  const a = arrays[key];
  if (!a) {
    const have = Object.keys(arrays);
    throw new Error(`${file}: no \`${key}\` array (has: ${have.length ? have.join(', ') : 'nothing'})`);
  }
  return a;
}

/** Ground truth of one npz file: `gts` and, if present, `spacing` (as stored). */
export function readGroundTruth(file: string): { gt: LabelMap; spacing?: number[] } {
  const arrays = readNpz(file);
  const gts = requireKey(arrays, 'gts', file);
  const gt = { data: toLabelData(gts, `${file}:gts`), shape: gts.shape };
  const sp = arrays.spacing;
  const spacing = sp ? Array.from(sp.data as unknown as ArrayLike<number>, Number) : undefined;
  return { gt, spacing };
}

export function readPrediction(file: string): LabelMap {
  const arrays = readNpz(file);
  const segs = requireKey(arrays, 'segs', file);
  return { data: toLabelData(segs, `${file}:segs`), shape: segs.shape };
}

function npzFiles(dir: string, what: string): string[] {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`${what} directory not found: ${dir}`);
  return readdirSync(dir)
    .filter((f) => f.endsWith('.npz'))
    .sort();
}

/**
 * Score every ground-truth npz in `gtDir` against the prediction of the same name in `predDir`.
 * A ground truth without a prediction is an error naming it; predictions without ground truth are
 * reported in the warnings. `onCase` is told of each case as it is scored.
 */
export function evaluateDirs(
  predDir: string,
  gtDir: string,
  options: EvalOptions = {},
  onCase?: (name: string, rows: CaseLabelResult[]) => void,
): EvalReport {
  const opts = withDefaults(options);
  const allGtFiles = npzFiles(gtDir, 'ground-truth');
  const gtFiles = shardCases(allGtFiles, options.shard, (f) => f);
  const predFiles = new Set(npzFiles(predDir, 'prediction'));
  if (allGtFiles.length === 0) throw new Error(`no .npz files in the ground-truth directory ${gtDir}`);
  const missing = gtFiles.filter((f) => !predFiles.has(f));
  if (missing.length) {
    const list = missing.slice(0, 5).map((f) => join(predDir, f)).join(', ');
    throw new Error(`missing prediction for ${missing.length} ground-truth file(s): ${list}${missing.length > 5 ? ', ...' : ''}`);
  }
  const rows: CaseLabelResult[] = [];
  const warnings: string[] = [];
  for (const f of gtFiles) {
    const gtFile = join(gtDir, f);
    const predFile = join(predDir, f);
    const { gt, spacing } = readGroundTruth(gtFile);
    const pred = readPrediction(predFile);
    if (pred.shape.length !== gt.shape.length || pred.shape.some((n, i) => n !== gt.shape[i])) {
      throw new Error(`${predFile}: \`segs\` shape (${pred.shape.join(', ')}) does not match \`gts\` shape (${gt.shape.join(', ')}) in ${gtFile}`);
    }
    let r: { rows: CaseLabelResult[]; warnings: string[] };
    try {
      r = evaluateCase({ name: f, gt, pred, spacing }, opts);
    } catch (err) {
      throw new Error(`${gtFile}: ${(err as Error).message}`);
    }
    rows.push(...r.rows);
    warnings.push(...r.warnings);
    onCase?.(f, r.rows);
  }
  const extra = [...predFiles].filter((f) => !allGtFiles.includes(f));
  if (extra.length) warnings.push(`${extra.length} prediction file(s) without ground truth ignored: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ', ...' : ''}`);
  return summarize(rows, opts.toleranceMm, warnings, readLabelNames(gtDir));
}

/**
 * Hook for prediction-first evaluation (`eval` from an export): `predict` segments the volume of
 * each ground-truth npz (which holds `imgs` and `gts`; boxes come from `gts`, as the challenges
 * derive them) and returns the label map; it is then scored like a prediction file.
 */
export type CasePredictor = (gtFile: string, arrays: Record<string, NpyArray>) => Promise<LabelMap>;

export async function evaluateWithPredictor(
  gtDir: string,
  predict: CasePredictor,
  options: EvalOptions = {},
  onCase?: (name: string, rows: CaseLabelResult[]) => void,
): Promise<EvalReport> {
  const opts = withDefaults(options);
  const allGtFiles = npzFiles(gtDir, 'ground-truth');
  if (allGtFiles.length === 0) throw new Error(`no .npz files in ${gtDir}`);
  const gtFiles = shardCases(allGtFiles, options.shard, (f) => f);
  const rows: CaseLabelResult[] = [];
  const warnings: string[] = [];
  for (const f of gtFiles) {
    const gtFile = join(gtDir, f);
    const arrays = readNpz(gtFile);
    const gts = requireKey(arrays, 'gts', gtFile);
    const gt = { data: toLabelData(gts, `${gtFile}:gts`), shape: gts.shape };
    const spacing = arrays.spacing ? Array.from(arrays.spacing.data as unknown as ArrayLike<number>, Number) : undefined;
    const pred = await predict(gtFile, arrays);
    const r = evaluateCase({ name: basename(f), gt, pred, spacing }, opts);
    rows.push(...r.rows);
    warnings.push(...r.warnings);
    onCase?.(f, r.rows);
  }
  return summarize(rows, opts.toleranceMm, warnings, readLabelNames(gtDir));
}

// ---------------------------------------------------------------------------------------------
// Shards

/** What one shard of a sharded `eval` writes, for `eval --merge`. */
export interface ShardReport {
  format: 'medtune-eval-shard';
  shard: { index: number; count: number };
  toleranceMm: number;
  cases: CaseLabelResult[];
  labelNames?: Record<string, string>;
  warnings: string[];
}

export function shardReport(report: EvalReport, shard: Shard): ShardReport {
  return {
    format: 'medtune-eval-shard',
    shard: { index: shard.index, count: shard.count },
    toleranceMm: report.toleranceMm,
    cases: report.cases,
    labelNames: report.labelNames,
    warnings: report.warnings,
  };
}

export function shardReportName(shard: Shard): string {
  return `eval-shard-${shard.index}-of-${shard.count}.json`;
}

/**
 * Every shard file `<prefix>-<i>-of-<n>.json` in `dirs`, checked: each of the `format`, one
 * count, the same `settings` (a description of what changes the numbers), every index once.
 */
export function gatherShards<R extends { format: string; shard: { index: number; count: number } }>(
  dirs: string[],
  prefix: string,
  format: string,
  settings: (r: R) => string,
): R[] {
  const found: Array<{ file: string; r: R }> = [];
  const pattern = new RegExp(`^${prefix}-\\d+-of-\\d+\\.json$`);
  for (const dir of dirs) {
    if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`shard directory not found: ${dir}`);
    for (const f of readdirSync(dir).filter((n) => pattern.test(n)).sort()) {
      const file = join(dir, f);
      const r = JSON.parse(readFileSync(file, 'utf8')) as R;
      if (r.format !== format) throw new Error(`${file}: not a ${format} file`);
      found.push({ file, r });
    }
  }
  if (found.length === 0) throw new Error(`no ${prefix}-*-of-*.json in ${dirs.join(', ')}`);
  const { count } = found[0].r.shard;
  const first = settings(found[0].r);
  const bad = found.find(({ r }) => r.shard.count !== count || settings(r) !== first);
  if (bad) throw new Error(`${bad.file}: shard of ${bad.r.shard.count} ${settings(bad.r)}, but ${found[0].file} is one of ${count} ${first}`);
  const seen = new Map<number, string>();
  for (const { file, r } of found) {
    if (seen.has(r.shard.index)) throw new Error(`shard ${r.shard.index}/${count} twice: ${seen.get(r.shard.index)} and ${file}`);
    seen.set(r.shard.index, file);
  }
  const missing = Array.from({ length: count }, (_, i) => i).filter((i) => !seen.has(i));
  if (missing.length > 0) throw new Error(`missing shard(s) ${missing.map((i) => `${i}/${count}`).join(', ')} in ${dirs.join(', ')}`);
  return found.map(({ r }) => r);
}

/** Rows of several shards in case-name order, as an unsharded run lists them (a stable sort keeps each case's rows in their order). */
export function byCaseName<T extends { case: string }>(rows: T[]): T[] {
  return rows.sort((a, b) => (a.case < b.case ? -1 : a.case > b.case ? 1 : 0));
}

/**
 * The report of the whole run from its shards' files (found in `dirs`): every shard of one count
 * once, one tolerance. Rows come back in case-name order, as an unsharded run lists them.
 */
export function mergeShardReports(dirs: string[]): EvalReport {
  const shards = gatherShards<ShardReport>(dirs, 'eval-shard', 'medtune-eval-shard', (r) => `at ${r.toleranceMm} mm`);
  const names = new Map(Object.entries(shards[0].labelNames ?? {}).map(([k, v]) => [Number(k), v]));
  return summarize(byCaseName(shards.flatMap((r) => r.cases)), shards[0].toleranceMm, shards.flatMap((r) => r.warnings), names);
}

// ---------------------------------------------------------------------------------------------
// Output

/** `{"cases":[{"case","label","dsc","nsd"}],"mean":{"dsc","nsd"},"per_label":{name:{"label","n","dsc","nsd"}}}` */
export function reportJson(report: EvalReport): string {
  const perLabel = Object.fromEntries(report.perLabel.map((l) => [l.name, { label: l.label, n: l.n, dsc: l.dsc, nsd: l.nsd }]));
  return JSON.stringify({ cases: report.cases, mean: report.mean, per_label: perLabel });
}

export function reportCsv(report: EvalReport): string {
  const lines = ['case,label,dsc,nsd'];
  const q = (s: string) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  for (const r of report.cases) lines.push(`${q(r.case)},${r.label},${r.dsc},${r.nsd}`);
  lines.push(`mean,,${report.mean.dsc},${report.mean.nsd}`);
  return `${lines.join('\n')}\n`;
}

export function reportTable(report: EvalReport): string {
  const names = new Map(Object.entries(report.labelNames).map(([k, v]) => [Number(k), v]));
  const w = Math.max(4, ...report.cases.map((r) => r.case.length));
  const lw = Math.max(5, ...report.perLabel.map((l) => l.name.length));
  const lines = [`${'case'.padEnd(w)}  ${'label'.padStart(lw)}     DSC     NSD`];
  for (const r of report.cases) {
    lines.push(`${r.case.padEnd(w)}  ${labelName(names, r.label).padStart(lw)}  ${r.dsc.toFixed(4)}  ${r.nsd.toFixed(4)}`);
  }
  if (report.perLabel.length > 1) {
    for (const l of report.perLabel) lines.push(`${`mean of ${l.n}`.padEnd(w)}  ${l.name.padStart(lw)}  ${l.dsc.toFixed(4)}  ${l.nsd.toFixed(4)}`);
  }
  lines.push(
    `mean over ${report.numCases} case(s) (NSD at ${report.toleranceMm} mm): DSC ${report.mean.dsc.toFixed(4)}  NSD ${report.mean.nsd.toFixed(4)}`,
  );
  return lines.join('\n');
}
