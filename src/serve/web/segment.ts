/// <reference lib="dom" />
/**
 * The segment page: a slice of the open volume on a canvas (window presets and drag), a box and
 * +/- clicks per label sent to the server (which holds the label map), propagation with progress
 * and cancel, undo, download. Prompts are in the view slice's pixels, rounded to whole pixels.
 */
import { WINDOW_PRESETS, windowBounds } from '../../data/intensity.js';
import { $, getJson, postJson, request } from './api.js';

type Axis = 'axial' | 'coronal' | 'sagittal';
type Box = [number, number, number, number];
type Click = [number, number, number];

interface VolumeInfo {
  id: string;
  name: string;
  shape: [number, number, number];
  channels: number;
  spacing: number[];
  views: Record<Axis, { count: number; rows: number; cols: number }>;
  percentileRange: [number, number];
}

interface Prompt {
  box?: Box;
  points: Click[];
}

interface Label {
  value: number;
  name: string;
  color: [number, number, number];
}

const canvas = $<HTMLCanvasElement>('view');
const ctx = canvas.getContext('2d')!;
const message = $<HTMLDivElement>('message');

let volume: VolumeInfo | null = null;
let axis: Axis = 'axial';
let index = 0;
let window01: { lo: number; hi: number } = { lo: 0, hi: 1 };
let slice: { data: Float32Array; rows: number; cols: number; channels: number } | null = null;
let labelSlice: Uint16Array | null = null;
const labels: Label[] = [{ value: 1, name: 'object 1', color: [255, 140, 0] }];
let activeLabel = 1;
/** the prompt being built on each (view, slice, label) */
const prompts = new Map<string, Prompt>();
/** one entry per change of the server's label map, so Undo also restores the prompt it came from */
const history: Array<{ key: string; before: Prompt | undefined } | { key: null }> = [];
let job: string | null = null;
/** a box being drawn (left button) or a window being changed (right button) */
let drag: { kind: 'box' | 'window'; x0: number; y0: number; x: number; y: number; sx: number; sy: number; start: typeof window01 } | null = null;

function say(text: string, error = false): void {
  message.textContent = text;
  message.className = error ? 'error' : '';
}

async function guarded(action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (err) {
    say((err as Error).message, true);
  }
}

const promptKey = () => `${axis}:${index}:${activeLabel}`;
const currentPrompt = (): Prompt => prompts.get(promptKey()) ?? { points: [] };

// ───────────── windows ─────────────

function windowPresets(): Record<string, { lo: number; hi: number }> {
  const out: Record<string, { lo: number; hi: number }> = {};
  if (volume) out['MR / percentile 0.5–99.5'] = { lo: volume.percentileRange[0], hi: volume.percentileRange[1] };
  for (const [name, w] of Object.entries(WINDOW_PRESETS)) {
    const [lo, hi] = windowBounds(w);
    out[`CT ${name}`] = { lo, hi };
  }
  return out;
}

function showWindow(): void {
  const width = window01.hi - window01.lo;
  $<HTMLOutputElement>('window-text').textContent = `center ${(window01.lo + width / 2).toFixed(0)}, width ${width.toFixed(0)}`;
}

function fillWindows(): void {
  const select = $<HTMLSelectElement>('window');
  select.replaceChildren(...Object.keys(windowPresets()).map((name) => new Option(name, name)));
  window01 = { ...Object.values(windowPresets())[0] };
  showWindow();
}

$<HTMLSelectElement>('window').addEventListener('change', (e) => {
  window01 = { ...windowPresets()[(e.target as HTMLSelectElement).value] };
  showWindow();
  draw();
});

// ───────────── drawing ─────────────

function draw(): void {
  if (!slice) return;
  const { data, rows, cols, channels } = slice;
  const img = ctx.createImageData(cols, rows);
  const range = window01.hi - window01.lo || 1;
  const colors = new Map(labels.map((l) => [l.value, l.color]));
  for (let i = 0; i < rows * cols; i++) {
    for (let c = 0; c < 3; c++) {
      const v = data[i * channels + (channels === 3 ? c : 0)];
      const g = Math.max(0, Math.min(255, ((v - window01.lo) / range) * 255));
      const color = labelSlice && labelSlice[i] ? colors.get(labelSlice[i]) ?? [255, 255, 255] : undefined;
      img.data[4 * i + c] = color ? 0.55 * g + 0.45 * color[c] : g;
    }
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  const p = currentPrompt();
  ctx.lineWidth = Math.max(1, cols / 256);
  if (p.box) {
    ctx.strokeStyle = '#00ffff';
    const [x0, y0, x1, y1] = p.box;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  for (const [x, y, l] of p.points) {
    ctx.fillStyle = l ? '#33ff33' : '#ff3333';
    ctx.beginPath();
    ctx.arc(x, y, Math.max(2, cols / 100), 0, 2 * Math.PI);
    ctx.fill();
  }
  if (drag?.kind === 'box') {
    ctx.strokeStyle = '#ffff00';
    ctx.strokeRect(drag.x0, drag.y0, drag.x - drag.x0, drag.y - drag.y0);
  }
}

/** The view's pixel size (mm) along rows and columns, so coronal / sagittal slices keep their aspect. */
function pixelAspect(): number {
  if (!volume) return 1;
  const [sx, sy, sz] = volume.spacing.length === 3 ? volume.spacing : [1, 1, 1];
  const [row, col] = axis === 'axial' ? [sy, sx] : axis === 'coronal' ? [sz, sx] : [sz, sy];
  return row / col || 1;
}

async function loadSlice(): Promise<void> {
  if (!volume) return;
  const q = `axis=${axis}&index=${index}`;
  const [img, lab] = await Promise.all([request(`/api/volumes/${volume.id}/slice?${q}`), request(`/api/volumes/${volume.id}/labels?${q}`)]);
  const rows = Number(img.headers.get('x-rows'));
  const cols = Number(img.headers.get('x-cols'));
  slice = { data: new Float32Array(await img.arrayBuffer()), rows, cols, channels: Number(img.headers.get('x-channels')) };
  labelSlice = new Uint16Array(await lab.arrayBuffer());
  if (canvas.width !== cols || canvas.height !== rows) {
    canvas.width = cols;
    canvas.height = rows;
  }
  const scale = Math.min(768 / cols, 640 / (rows * pixelAspect()));
  canvas.style.width = `${cols * scale}px`;
  canvas.style.height = `${rows * pixelAspect() * scale}px`;
  $<HTMLOutputElement>('slice-number').textContent = `${index} / ${volume.views[axis].count - 1}`;
  draw();
  canvas.dataset.shown = `${axis}:${index}`;
}

async function refreshLabels(): Promise<void> {
  if (!volume) return;
  labelSlice = new Uint16Array(await (await request(`/api/volumes/${volume.id}/labels?axis=${axis}&index=${index}`)).arrayBuffer());
  draw();
}

// ───────────── volume ─────────────

async function showVolume(info: VolumeInfo): Promise<void> {
  volume = info;
  prompts.clear();
  history.length = 0;
  $<HTMLSpanElement>('volume-name').textContent = `${info.name}: ${info.shape.join(' × ')}${info.channels === 3 ? ' RGB' : ''}`;
  fillWindows();
  setAxis(axis);
  await loadSlice();
  say(`opened ${info.name}`);
}

function setAxis(a: Axis): void {
  axis = a;
  const count = volume ? volume.views[a].count : 1;
  index = Math.floor(count / 2);
  const s = $<HTMLInputElement>('slice');
  s.max = String(count - 1);
  s.value = String(index);
}

$<HTMLButtonElement>('open').addEventListener('click', () =>
  guarded(async () => {
    const path = $<HTMLSelectElement>('file').value;
    if (!path) throw new Error('pick a file first');
    say(`opening ${path}…`);
    await showVolume(await postJson<VolumeInfo>('/api/open', { path }));
  }),
);

$<HTMLInputElement>('upload').addEventListener('change', (e) =>
  guarded(async () => {
    const input = e.target as HTMLInputElement;
    const file = input.files?.[0];
    input.value = '';
    if (!file) return;
    say(`uploading ${file.name}…`);
    const res = await request(`/api/upload?name=${encodeURIComponent(file.name)}`, { method: 'POST', body: file });
    await showVolume((await res.json()) as VolumeInfo);
  }),
);

$<HTMLSelectElement>('axis').addEventListener('change', (e) =>
  guarded(async () => {
    setAxis((e.target as HTMLSelectElement).value as Axis);
    await loadSlice();
  }),
);

$<HTMLInputElement>('slice').addEventListener('input', (e) =>
  guarded(async () => {
    index = Number((e.target as HTMLInputElement).value);
    await loadSlice();
  }),
);

canvas.addEventListener('wheel', (e) => {
  if (!volume) return;
  e.preventDefault();
  const next = Math.max(0, Math.min(volume.views[axis].count - 1, index + Math.sign(e.deltaY)));
  if (next === index) return;
  index = next;
  $<HTMLInputElement>('slice').value = String(index);
  void guarded(loadSlice);
});

// ───────────── labels ─────────────

function hex(c: [number, number, number]): string {
  return `#${c.map((v) => v.toString(16).padStart(2, '0')).join('')}`;
}

function fillLabels(): void {
  const select = $<HTMLSelectElement>('label');
  select.replaceChildren(...labels.map((l) => new Option(`${l.value}: ${l.name}`, String(l.value))));
  select.value = String(activeLabel);
  const l = labels.find((x) => x.value === activeLabel)!;
  $<HTMLInputElement>('label-name').value = l.name;
  $<HTMLInputElement>('label-color').value = hex(l.color);
}

$<HTMLSelectElement>('label').addEventListener('change', (e) => {
  activeLabel = Number((e.target as HTMLSelectElement).value);
  fillLabels();
  draw();
});

$<HTMLInputElement>('label-name').addEventListener('change', (e) => {
  labels.find((l) => l.value === activeLabel)!.name = (e.target as HTMLInputElement).value;
  fillLabels();
});

$<HTMLInputElement>('label-color').addEventListener('input', (e) => {
  const v = (e.target as HTMLInputElement).value;
  labels.find((l) => l.value === activeLabel)!.color = [1, 3, 5].map((i) => parseInt(v.slice(i, i + 2), 16)) as [number, number, number];
  draw();
});

const PALETTE: Array<[number, number, number]> = [[255, 140, 0], [30, 144, 255], [50, 205, 50], [220, 20, 60], [186, 85, 211], [255, 215, 0]];
$<HTMLButtonElement>('add-label').addEventListener('click', () => {
  const value = Math.max(...labels.map((l) => l.value)) + 1;
  labels.push({ value, name: `object ${value}`, color: PALETTE[(value - 1) % PALETTE.length] });
  activeLabel = value;
  fillLabels();
  draw();
});
fillLabels();

// ───────────── prompts ─────────────

async function segment(next: Prompt): Promise<void> {
  if (!volume) throw new Error('open a volume or image first');
  const key = promptKey();
  const before = prompts.get(key);
  prompts.set(key, next);
  draw();
  const t0 = performance.now();
  try {
    const r = await postJson<{ pixels: number; iou: number; cached: boolean; ms: number }>(`/api/volumes/${volume.id}/segment`, {
      axis,
      index,
      label: activeLabel,
      box: next.box,
      points: next.points,
    });
    history.push({ key, before });
    await refreshLabels();
    const total = performance.now() - t0;
    say(`mask: ${r.pixels} pixels, IoU estimate ${r.iou.toFixed(3)}; ${total.toFixed(0)} ms in the page, ${r.ms.toFixed(0)} ms in the server (embedding ${r.cached ? 'cached' : 'computed'})`);
  } catch (err) {
    if (before) prompts.set(key, before);
    else prompts.delete(key);
    draw();
    throw err;
  }
}

function pixelAt(e: MouseEvent): [number, number] {
  const r = canvas.getBoundingClientRect();
  const x = ((e.clientX - r.left) / r.width) * canvas.width;
  const y = ((e.clientY - r.top) / r.height) * canvas.height;
  return [Math.max(0, Math.min(canvas.width, Math.round(x))), Math.max(0, Math.min(canvas.height, Math.round(y)))];
}

const tool = () => document.querySelector<HTMLInputElement>('input[name="tool"]:checked')!.value;

canvas.addEventListener('contextmenu', (e) => e.preventDefault());
canvas.addEventListener('mousedown', (e) => {
  if (!slice) return;
  const [x, y] = pixelAt(e);
  if (e.button === 2) drag = { kind: 'window', x0: x, y0: y, x, y, sx: e.clientX, sy: e.clientY, start: { ...window01 } };
  else if (e.button === 0 && tool() === 'box') drag = { kind: 'box', x0: x, y0: y, x, y, sx: e.clientX, sy: e.clientY, start: window01 };
  else if (e.button === 0) {
    const p = currentPrompt();
    void guarded(() => segment({ box: p.box, points: [...p.points, [x, y, tool() === 'positive' ? 1 : 0]] }));
  }
});

window.addEventListener('mousemove', (e) => {
  if (!drag) return;
  [drag.x, drag.y] = pixelAt(e);
  if (drag.kind === 'window') {
    // right-drag: horizontal changes the width, vertical the center (up = brighter)
    const w0 = drag.start.hi - drag.start.lo;
    const width = Math.max(1e-3, w0 * Math.exp((e.clientX - drag.sx) / 200));
    const center = (drag.start.hi + drag.start.lo) / 2 + ((e.clientY - drag.sy) / 200) * w0;
    window01 = { lo: center - width / 2, hi: center + width / 2 };
    showWindow();
  }
  draw();
});

window.addEventListener('mouseup', () => {
  const d = drag;
  drag = null;
  if (!d || d.kind !== 'box') return draw();
  const box: Box = [Math.min(d.x0, d.x), Math.min(d.y0, d.y), Math.max(d.x0, d.x), Math.max(d.y0, d.y)];
  if (box[2] - box[0] < 2 || box[3] - box[1] < 2) return draw();
  // a new box starts a new prompt on this slice
  void guarded(() => segment({ box, points: [] }));
});

$<HTMLButtonElement>('new-prompt').addEventListener('click', () => {
  prompts.delete(promptKey());
  draw();
});

$<HTMLButtonElement>('undo').addEventListener('click', () =>
  guarded(async () => {
    if (!volume) return;
    const { undone } = await postJson<{ undone: boolean }>(`/api/volumes/${volume.id}/undo`, {});
    const last = history.pop();
    if (last?.key) {
      if (last.before) prompts.set(last.key, last.before);
      else prompts.delete(last.key);
    }
    await refreshLabels();
    say(undone ? 'undone' : 'nothing to undo');
  }),
);

// ───────────── propagation ─────────────

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

$<HTMLButtonElement>('propagate').addEventListener('click', () =>
  guarded(async () => {
    if (!volume) throw new Error('open a volume first');
    if (job) throw new Error('a propagation is already running');
    const p = currentPrompt();
    if (!p.box) throw new Error('draw a box on this slice first: propagation starts from it');
    const progress = $<HTMLProgressElement>('progress');
    const cancel = $<HTMLButtonElement>('cancel');
    job = (await postJson<{ job: string }>(`/api/volumes/${volume.id}/propagate`, { axis, index, label: activeLabel, box: p.box, points: p.points })).job;
    cancel.disabled = false;
    $<HTMLButtonElement>('propagate').disabled = true;
    try {
      for (;;) {
        const s = await getJson<{ state: string; done: number; total: number; message?: string; voxels?: number; ms?: number }>(`/api/jobs/${job}`);
        progress.max = s.total || 1;
        progress.value = s.done;
        if (s.state === 'running') {
          say(`propagating: ${s.done} / ${s.total} slices`);
          await sleep(150);
          continue;
        }
        if (s.state === 'error') throw new Error(`propagation failed: ${s.message}`);
        if (s.state === 'cancelled') say('propagation cancelled; the label map is unchanged');
        else {
          history.push({ key: null });
          say(`propagated: ${s.voxels} voxels over ${s.total} slice steps in ${((s.ms ?? 0) / 1000).toFixed(1)} s`);
        }
        break;
      }
    } finally {
      job = null;
      cancel.disabled = true;
      $<HTMLButtonElement>('propagate').disabled = false;
      await refreshLabels();
    }
  }),
);

$<HTMLButtonElement>('cancel').addEventListener('click', () =>
  guarded(async () => {
    if (job) await postJson(`/api/jobs/${job}/cancel`, {});
  }),
);

// ───────────── download ─────────────

async function download(format: 'nifti' | 'npz'): Promise<void> {
  if (!volume) throw new Error('open a volume first');
  const res = await request(`/api/volumes/${volume.id}/download?format=${format}`);
  const name = /filename="([^"]+)"/.exec(res.headers.get('content-disposition') ?? '')?.[1] ?? `mask.${format === 'nifti' ? 'nii.gz' : 'npz'}`;
  const a = document.createElement('a');
  a.href = URL.createObjectURL(await res.blob());
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  say(`downloaded ${name}`);
}
$<HTMLButtonElement>('download-nifti').addEventListener('click', () => guarded(() => download('nifti')));
$<HTMLButtonElement>('download-npz').addEventListener('click', () => guarded(() => download('npz')));

// ───────────── start ─────────────

void guarded(async () => {
  const info = await getJson<{ model: { dir: string; imageSize: number } | null; data: boolean }>('/api/info');
  if (info.data) {
    const { files } = await getJson<{ files: string[] }>('/api/files');
    $<HTMLSelectElement>('file').replaceChildren(...files.map((f) => new Option(f, f)));
  }
  say(info.model ? `model ${info.model.dir} (${info.model.imageSize} px); open a file to start` : 'no model (--onnx): viewing only');
  document.body.dataset.ready = '1';
});
