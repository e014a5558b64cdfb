/// <reference lib="dom" />
/**
 * The runs page: the runs under --runs, their loss / Dice / lr / validation Dice curves as SVG
 * (ticked runs on the same plots), polled for new lines of metrics.jsonl every 2 s, the focused
 * run's config.yaml and validation overlays.
 */
import { $, getJson, request } from './api.js';

interface Run {
  name: string;
  rows: Array<Record<string, number>>;
  offset: number;
  color: string;
}

const CHARTS: Array<{ key: string; title: string; log?: boolean }> = [
  { key: 'loss', title: 'training loss' },
  { key: 'dice', title: 'Dice loss' },
  { key: 'val_dice', title: 'validation Dice' },
  { key: 'lr', title: 'learning rate' },
];
const COLORS = ['#4fc3f7', '#ffb74d', '#81c784', '#e57373', '#ba68c8', '#fff176'];
const runs = new Map<string, Run>();
const ticked = new Set<string>();
let focus: string | null = null;
let overlayCount = -1;

function say(text: string, error = false): void {
  const m = $<HTMLSpanElement>('runs-message');
  m.textContent = text;
  m.className = error ? 'error' : '';
}

const SVG = 'http://www.w3.org/2000/svg';
function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>, text?: string): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** One plot: a polyline per ticked run that logged `key`, axes labelled with the ranges. */
function chart(key: string, title: string): SVGSVGElement {
  const W = 420;
  const H = 220;
  const pad = { l: 56, r: 10, t: 20, b: 24 };
  const series = [...ticked]
    .map((name) => runs.get(name)!)
    .filter(Boolean)
    .map((run) => ({ run, pts: run.rows.filter((r) => Number.isFinite(r[key])).map((r) => [r.step, r[key]] as [number, number]) }))
    .filter((s) => s.pts.length > 0);
  const root = svg('svg', { width: W, height: H, class: 'chart', 'data-metric': key });
  root.append(svg('text', { x: pad.l, y: 14 }, title));
  if (series.length === 0) {
    root.append(svg('text', { x: pad.l, y: H / 2 }, 'not logged yet'));
    return root;
  }
  const all = series.flatMap((s) => s.pts);
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (y1 === y0) [y0, y1] = [y0 - (Math.abs(y0) * 0.1 || 0.5), y1 + (Math.abs(y1) * 0.1 || 0.5)];
  const sx = (x: number) => pad.l + ((x - x0) / (x1 - x0 || 1)) * (W - pad.l - pad.r);
  const sy = (y: number) => H - pad.b - ((y - y0) / (y1 - y0)) * (H - pad.t - pad.b);
  root.append(svg('rect', { x: pad.l, y: pad.t, width: W - pad.l - pad.r, height: H - pad.t - pad.b, fill: 'none', stroke: '#444' }));
  const fmt = (v: number) => (Math.abs(v) < 1e-2 && v !== 0 ? v.toExponential(1) : v.toPrecision(3));
  root.append(svg('text', { x: 4, y: pad.t + 10 }, fmt(y1)), svg('text', { x: 4, y: H - pad.b }, fmt(y0)));
  root.append(svg('text', { x: pad.l, y: H - 6 }, `step ${x0}`), svg('text', { x: W - pad.r - 70, y: H - 6 }, `step ${x1}`));
  for (const s of series) {
    const points = s.pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    root.append(svg('polyline', { points, fill: 'none', stroke: s.run.color, 'stroke-width': 1.5, 'data-run': s.run.name, 'data-points': s.pts.length }));
  }
  return root;
}

function drawCharts(): void {
  $<HTMLDivElement>('charts').replaceChildren(...CHARTS.map((c) => chart(c.key, c.title)));
}

async function poll(name: string): Promise<void> {
  const run = runs.get(name)!;
  const r = await getJson<{ config: string | null; rows: Array<Record<string, number>>; next: number }>(
    `/api/run?name=${encodeURIComponent(name)}&from=${run.offset}`,
  );
  if (r.next < run.offset) run.rows = []; // the log was cut back (a resumed run)
  run.rows.push(...r.rows);
  run.offset = r.next;
  if (name === focus) $<HTMLPreElement>('config').textContent = r.config ?? '(no config.yaml)';
}

async function showOverlays(): Promise<void> {
  if (!focus) return;
  const q = `name=${encodeURIComponent(focus)}`;
  const { overlays } = await getJson<{ overlays: Array<{ index: number; step: number }> }>(`/api/run/overlays?${q}`);
  if (overlays.length === overlayCount) return;
  overlayCount = overlays.length;
  const figures = await Promise.all(
    overlays.slice(-12).map(async (o) => {
      const blob = await (await request(`/api/run/overlay?${q}&index=${o.index}`)).blob();
      const fig = document.createElement('figure');
      const img = document.createElement('img');
      img.src = URL.createObjectURL(blob);
      img.alt = `validation overlay at step ${o.step}`;
      const cap = document.createElement('figcaption');
      cap.textContent = `step ${o.step}`;
      fig.append(img, cap);
      return fig;
    }),
  );
  $<HTMLDivElement>('overlays').replaceChildren(...figures);
}

function listRuns(names: string[]): void {
  const list = $<HTMLUListElement>('run-list');
  list.replaceChildren(
    ...names.map((name) => {
      const run = runs.get(name)!;
      const li = document.createElement('li');
      const box = Object.assign(document.createElement('input'), { type: 'checkbox', checked: ticked.has(name), value: name });
      box.addEventListener('change', () => {
        if (box.checked) ticked.add(name);
        else ticked.delete(name);
        void refresh();
      });
      const link = Object.assign(document.createElement('a'), { href: '#', textContent: name });
      link.style.color = run.color;
      link.addEventListener('click', (e) => {
        e.preventDefault();
        focus = name;
        overlayCount = -1;
        ticked.add(name);
        $<HTMLSpanElement>('focus-name').textContent = name;
        void refresh();
      });
      li.append(box, ' ', link);
      return li;
    }),
  );
}

let refreshing = false;
async function refresh(): Promise<void> {
  // one refresh at a time: two polls from the same offset would add the same rows twice
  if (refreshing) return;
  refreshing = true;
  try {
    const { runs: found } = await getJson<{ runs: Array<{ name: string }> }>('/api/runs');
    let added = false;
    for (const r of found) {
      if (!runs.has(r.name)) {
        runs.set(r.name, { name: r.name, rows: [], offset: 0, color: COLORS[runs.size % COLORS.length] });
        added = true;
      }
    }
    if (!focus && found.length) {
      focus = found[0].name;
      ticked.add(focus);
      $<HTMLSpanElement>('focus-name').textContent = focus;
    }
    if (added) listRuns(found.map((r) => r.name));
    await Promise.all([...ticked].map(poll));
    drawCharts();
    await showOverlays();
    say(found.length ? `${found.length} run(s); updated ${new Date().toLocaleTimeString()}` : 'no runs (folders with metrics.jsonl) yet');
    document.body.dataset.ready = '1';
  } catch (err) {
    say((err as Error).message, true);
  } finally {
    refreshing = false;
  }
}

void refresh();
setInterval(() => void refresh(), 2000);
