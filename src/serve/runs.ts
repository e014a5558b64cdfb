/**
 * Training runs under `--runs DIR` for the runs page: every folder holding a `metrics.jsonl`
 * (the run itself or one level below), its `config.yaml`, its metrics read from a byte offset
 * (so the page polls only what was appended), and the validation overlays from its TensorBoard
 * event files.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { readEvents } from '../train/tensorboard.js';
import { HttpError, resolveInside } from './http.js';

export interface RunInfo {
  name: string;
  modified: number;
}

/** Runs under the root: folders with a metrics.jsonl, at depth 0, 1 or 2, newest first. */
export function listRuns(root: string): RunInfo[] {
  const runs: RunInfo[] = [];
  const visit = (dir: string, depth: number) => {
    const metrics = join(dir, 'metrics.jsonl');
    if (existsSync(metrics)) runs.push({ name: relative(root, dir) || '.', modified: statSync(metrics).mtimeMs });
    if (depth === 2) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory() && !e.name.startsWith('.') && e.name !== 'tensorboard') visit(join(dir, e.name), depth + 1);
    }
  };
  visit(root, 0);
  return runs.sort((a, b) => b.modified - a.modified);
}

function runDir(root: string, name: string): string {
  const dir = resolveInside(root, name);
  if (!existsSync(join(dir, 'metrics.jsonl'))) throw new HttpError(404, `${name}: not a run (no metrics.jsonl)`);
  return dir;
}

/** Metric rows appended since byte `from` (whole lines only), the run's config text, and the next offset. */
export function readRun(root: string, name: string, from: number): { config: string | null; rows: object[]; next: number } {
  const dir = runDir(root, name);
  const bytes = readFileSync(join(dir, 'metrics.jsonl'));
  // a shorter file means the run was resumed and its log cut back: read it again from the start
  const start = from <= bytes.length ? from : 0;
  const end = bytes.lastIndexOf(0x0a) + 1;
  const rows: object[] = [];
  if (end > start) {
    for (const line of bytes.subarray(start, end).toString('utf8').split('\n')) {
      if (!line.trim()) continue;
      try {
        rows.push(JSON.parse(line));
      } catch {
        // a line that is not JSON is skipped, the rest of the log still shows
      }
    }
  }
  const configFile = join(dir, 'config.yaml');
  return { config: existsSync(configFile) ? readFileSync(configFile, 'utf8') : null, rows, next: Math.max(start, end) };
}

/** The validation overlay images a run logged to TensorBoard: step and PNG bytes, in order. */
export function runOverlays(root: string, name: string): Array<{ step: number; png: Uint8Array }> {
  const tb = join(runDir(root, name), 'tensorboard');
  if (!existsSync(tb)) return [];
  const out: Array<{ step: number; png: Uint8Array }> = [];
  for (const file of readdirSync(tb).filter((f) => f.startsWith('events.out.tfevents.')).sort()) {
    for (const e of readEvents(readFileSync(join(tb, file)))) {
      for (const v of e.values ?? []) if ('image' in v) out.push({ step: e.step ?? 0, png: v.image.png });
    }
  }
  return out;
}
