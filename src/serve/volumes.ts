/**
 * The volumes open in `medtune serve`: read as `medtune predict` reads them (so the page's masks
 * equal the CLI's), their display values, a label map with undo, slices along the three views,
 * and cancellable propagation jobs. Inference runs in the worker (inference.ts).
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { loadInput, writeOutput, type LoadedInput } from '../commands/predict.js';
import { percentiles } from '../data/intensity.js';
import { parseNpy, readNpz } from '../io/npz.js';
import { scaledData } from '../data/nifti.js';
import { checkBox, checkPoints, npyNumbers, type Box2D } from '../onnx/predict.js';
import type { Click } from '../onnx/runtime.js';
import { HttpError } from './http.js';
import type { InferenceWorker } from './inference.js';
import { AXES, viewDims, voxelIndex, type Axis } from './views.js';

interface UndoEntry {
  /** voxel indices changed and their previous labels (a whole-volume change keeps a full copy) */
  indices?: Uint32Array;
  previous: Uint16Array;
}

const MAX_UNDO = 50;

export class OpenVolume {
  readonly id = randomUUID();
  readonly labels: Uint16Array;
  readonly depth: number;
  readonly height: number;
  readonly width: number;
  readonly channels: 1 | 3;
  private readonly undoStack: UndoEntry[] = [];

  constructor(
    readonly name: string,
    readonly path: string,
    readonly input: LoadedInput,
    /** display values (D, H, W[, 3]): the file's own intensities (HU for CT) */
    readonly display: Float32Array,
    /** the 0.5 and 99.5 percentiles of the nonzero display values (the MR window) */
    readonly percentileRange: [number, number],
  ) {
    ({ depth: this.depth, height: this.height, width: this.width, channels: this.channels } = input.pixels);
    this.labels = new Uint16Array(this.depth * this.height * this.width);
  }

  describe(): object {
    const spacing = this.input.spacing ?? [1, 1, 1];
    return {
      id: this.id,
      name: this.name,
      shape: [this.depth, this.height, this.width],
      channels: this.channels,
      spacing,
      views: Object.fromEntries(AXES.map((a) => [a, viewDims(a, this.depth, this.height, this.width)])),
      percentileRange: this.percentileRange,
    };
  }

  checkSlice(axis: Axis, k: number): { count: number; rows: number; cols: number } {
    if (!AXES.includes(axis)) throw new HttpError(400, `unknown view '${axis}' (axial, coronal or sagittal)`);
    const v = viewDims(axis, this.depth, this.height, this.width);
    if (!(Number.isInteger(k) && k >= 0 && k < v.count)) throw new HttpError(400, `${axis} slice ${k} is outside 0..${v.count - 1}`);
    return v;
  }

  /** One view slice of the display values, (rows, cols[, 3]) float32. */
  displaySlice(axis: Axis, k: number): Float32Array {
    const { rows, cols } = this.checkSlice(axis, k);
    const C = this.channels;
    const out = new Float32Array(rows * cols * C);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = voxelIndex(axis, k, r, c, this.height, this.width);
        for (let ch = 0; ch < C; ch++) out[(r * cols + c) * C + ch] = this.display[v * C + ch];
      }
    }
    return out;
  }

  /** One view slice of the label map, (rows, cols) uint16. */
  labelSlice(axis: Axis, k: number): Uint16Array {
    const { rows, cols } = this.checkSlice(axis, k);
    const out = new Uint16Array(rows * cols);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = this.labels[voxelIndex(axis, k, r, c, this.height, this.width)];
    return out;
  }

  /** Replace `label` on the voxels `indices` by `mask` (1 = label, 0 = cleared where it was `label`), with an undo entry. */
  private paint(indices: Uint32Array, mask: Uint8Array, label: number): number {
    const previous = new Uint16Array(indices.length);
    let count = 0;
    for (let i = 0; i < indices.length; i++) {
      const v = indices[i];
      previous[i] = this.labels[v];
      if (mask[i]) {
        this.labels[v] = label;
        count++;
      } else if (this.labels[v] === label) this.labels[v] = 0;
    }
    this.pushUndo({ indices, previous });
    return count;
  }

  private pushUndo(e: UndoEntry): void {
    this.undoStack.push(e);
    if (this.undoStack.length > MAX_UNDO) this.undoStack.shift();
  }

  /** Put the label map back as it was before the last change; false when there is none. */
  undo(): boolean {
    const e = this.undoStack.pop();
    if (!e) return false;
    if (e.indices) for (let i = 0; i < e.indices.length; i++) this.labels[e.indices[i]] = e.previous[i];
    else this.labels.set(e.previous);
    return true;
  }

  /** Segment one view slice from a box and/or clicks and write the mask as `label` there. */
  async segmentSlice(worker: InferenceWorker, req: { axis: Axis; index: number; label: number; box?: Box2D; points?: Click[] }): Promise<{ pixels: number; iou: number; cached: boolean; ms: number }> {
    const { rows, cols } = this.checkSlice(req.axis, req.index);
    checkLabel(req.label);
    const dims = { height: rows, width: cols };
    try {
      if (req.box) checkBox(req.box, dims);
      if (req.points) checkPoints(req.points, dims);
    } catch (err) {
      throw new HttpError(400, (err as Error).message);
    }
    if (!req.box && !req.points?.length) throw new HttpError(400, 'draw a box or add a click first');
    const r = await worker.segment({ volumeId: this.id, path: this.path, axis: req.axis, index: req.index, box: req.box, points: req.points });
    const indices = new Uint32Array(rows * cols);
    for (let r2 = 0; r2 < rows; r2++) for (let c = 0; c < cols; c++) indices[r2 * cols + c] = voxelIndex(req.axis, req.index, r2, c, this.height, this.width);
    const pixels = this.paint(indices, r.mask, req.label);
    return { pixels, iou: r.iou, cached: r.cached, ms: r.ms };
  }

  /**
   * Propagate a box (and clicks) on one view slice through the volume along that view, as
   * `medtune predict` does for a 3D box whose middle slice is that slice, and make the result the
   * whole of `label`.
   */
  async propagate(worker: InferenceWorker, req: { axis: Axis; index: number; label: number; box: Box2D; points?: Click[] }, job: PropagationJob): Promise<number> {
    const { rows, cols, count } = this.checkSlice(req.axis, req.index);
    checkLabel(req.label);
    try {
      checkBox(req.box, { height: rows, width: cols });
      if (req.points) checkPoints(req.points, { height: rows, width: cols });
    } catch (err) {
      throw new HttpError(400, (err as Error).message);
    }
    const seg = await worker.propagate(
      { volumeId: this.id, path: this.path, axis: req.axis, index: req.index, box: req.box, points: req.points },
      (id) => (job.cancel = () => worker.cancel(id)),
      (done, total) => Object.assign(job, { done, total }),
    );
    const previous = this.labels.slice();
    let voxels = 0;
    for (let kk = 0; kk < count; kk++) {
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          const v = voxelIndex(req.axis, kk, r, c, this.height, this.width);
          if (seg[(kk * rows + r) * cols + c]) {
            this.labels[v] = req.label;
            voxels++;
          } else if (this.labels[v] === req.label) this.labels[v] = 0;
        }
      }
    }
    this.pushUndo({ previous });
    return voxels;
  }

  /** The label map as `medtune predict` writes it: NIfTI in the input's geometry, or npz `segs` (with spacing). */
  async encode(format: 'nifti' | 'npz', workDir: string): Promise<{ bytes: Uint8Array; filename: string }> {
    const maxLabel = this.labels.reduce((m, v) => (v > m ? v : m), 0);
    const data = maxLabel > 255 ? this.labels : Uint8Array.from(this.labels);
    const stem = this.name.replace(/\.(nii\.gz|nii|npz|npy|png|jpe?g)$/i, '');
    const filename = `${stem}_mask.${format === 'nifti' ? 'nii.gz' : 'npz'}`;
    const file = join(workDir, `${randomUUID()}-${filename}`);
    const is2d = this.input.shape.length === 2;
    await writeOutput(file, data, is2d ? this.input.shape : [this.depth, this.height, this.width], this.input, is2d);
    try {
      return { bytes: readFileSync(file), filename };
    } finally {
      rmSync(file, { force: true });
    }
  }
}

function checkLabel(label: number): void {
  if (!(Number.isInteger(label) && label >= 1 && label <= 65535)) throw new HttpError(400, `label ${label}: must be an integer 1..65535`);
}

export interface PropagationJob {
  id: string;
  state: 'running' | 'done' | 'cancelled' | 'error';
  done: number;
  total: number;
  /** stops the run in the worker (set once it started) */
  cancel?: () => void;
  message?: string;
  voxels?: number;
  ms?: number;
}

/** Display values of the file: its own intensities (HU for CT), images as 0..255. */
function displayValues(input: LoadedInput, path: string): Float32Array {
  const lower = path.toLowerCase();
  if (input.nifti) return Float32Array.from(scaledData(input.nifti));
  if (lower.endsWith('.npz')) return Float32Array.from(npyNumbers(readNpz(path).imgs));
  if (lower.endsWith('.npy')) return Float32Array.from(npyNumbers(parseNpy(readFileSync(path), path)));
  return Float32Array.from(input.pixels.data, (v) => v * 255);
}

/** The 0.5 and 99.5 percentiles of the nonzero values (a sample of at most a million). */
function nonzeroPercentiles(values: Float32Array): [number, number] {
  const step = Math.max(1, Math.floor(values.length / 1_000_000));
  const sample: number[] = [];
  for (let i = 0; i < values.length; i += step) if (values[i] !== 0 && Number.isFinite(values[i])) sample.push(values[i]);
  if (sample.length === 0) return [0, 1];
  const [lo, hi] = percentiles(Float64Array.from(sample), [0.5, 99.5]);
  return hi > lo ? [lo, hi] : [lo, lo + 1];
}

/** The open volumes (a few, the oldest closed first) and the folder for uploads and downloads. */
export class VolumeStore {
  private readonly volumes = new Map<string, OpenVolume>();
  readonly workDir = mkdtempSync(join(tmpdir(), 'medtune-serve-'));
  readonly jobs = new Map<string, PropagationJob>();

  constructor(private readonly maxOpen = 4) {}

  /** Read a file as `medtune predict` does; a bad file becomes a 400 naming it. */
  async open(path: string, name = basename(path)): Promise<OpenVolume> {
    let input: LoadedInput;
    let display: Float32Array;
    try {
      input = await loadInput(path);
      display = displayValues(input, path);
    } catch (err) {
      const msg = (err as Error).message.replaceAll(path, name);
      throw new HttpError(400, msg.includes(name) ? msg : `${name}: ${msg}`);
    }
    const vol = new OpenVolume(name, path, input, display, nonzeroPercentiles(display));
    this.volumes.set(vol.id, vol);
    if (this.volumes.size > this.maxOpen) this.volumes.delete(this.volumes.keys().next().value!);
    return vol;
  }

  get(id: string): OpenVolume {
    const v = this.volumes.get(id);
    if (!v) throw new HttpError(404, `no open volume ${id} (open it again)`);
    return v;
  }

  job(id: string): PropagationJob {
    const j = this.jobs.get(id);
    if (!j) throw new HttpError(404, `no propagation job ${id}`);
    return j;
  }

  close(): void {
    for (const j of this.jobs.values()) j.cancel?.();
    rmSync(this.workDir, { recursive: true, force: true });
  }
}
