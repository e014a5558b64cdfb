/**
 * Worker thread of `medtune serve`: all onnxruntime work. onnxruntime-node runs a session
 * synchronously, so inference on the server's own thread would stop it answering the page (progress,
 * cancel, other requests) for as long as an image encoder runs. The worker reads each volume with
 * `loadInput`, as `medtune predict` does, and keeps per volume its views and the image embeddings
 * of recently prompted slices.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadInput } from '../commands/predict.js';
import { binarize, segmentVolume, sliceToModelInput, type Pixels01 } from '../onnx/predict.js';
import { decodePrompt, embedImage, OnnxModel, type ImageEmbedding } from '../onnx/runtime.js';
import type { WorkerReply, WorkerRequest } from './inference.js';
import { reslice, type Axis } from './views.js';

const port = parentPort!;
const { exportDir, threads } = workerData as { exportDir: string; threads?: number };
const model = OnnxModel.open(exportDir, { threads });

/** image embeddings kept per volume (a 1024 model's embedding is about 16 MB) */
const MAX_EMBEDDINGS = 12;
const MAX_VOLUMES = 4;

interface WorkerVolume {
  views: Map<Axis, Pixels01>;
  embeddings: Map<string, Promise<ImageEmbedding>>;
}

const volumes = new Map<string, Promise<WorkerVolume>>();
const cancelled = new Set<number>();

function volume(id: string, path: string): Promise<WorkerVolume> {
  let v = volumes.get(id);
  if (!v) {
    v = loadInput(path).then((input) => ({ views: new Map([['axial', input.pixels]]), embeddings: new Map() }));
    volumes.set(id, v);
    v.catch(() => volumes.delete(id));
    if (volumes.size > MAX_VOLUMES) volumes.delete(volumes.keys().next().value!);
  }
  return v;
}

async function view(id: string, path: string, axis: Axis): Promise<Pixels01> {
  const v = await volume(id, path);
  let p = v.views.get(axis);
  if (!p) {
    p = reslice(v.views.get('axial')!, axis);
    v.views.set(axis, p);
  }
  return p;
}

/** The image embedding of a view slice, computed once while it stays among the most recent. */
async function embedding(id: string, path: string, axis: Axis, k: number): Promise<{ embedding: ImageEmbedding; cached: boolean }> {
  const v = await volume(id, path);
  const key = `${axis}:${k}`;
  let e = v.embeddings.get(key);
  const cached = e !== undefined;
  if (e) v.embeddings.delete(key);
  else {
    const p = await view(id, path, axis);
    const n = p.height * p.width * p.channels;
    e = embedImage(model, sliceToModelInput(p.data.subarray(k * n, (k + 1) * n), p.height, p.width, p.channels, model.geometry.S));
    e.catch(() => v.embeddings.delete(key));
  }
  v.embeddings.set(key, e); // most recent last
  if (v.embeddings.size > MAX_EMBEDDINGS) v.embeddings.delete(v.embeddings.keys().next().value!);
  return { embedding: await e, cached };
}

async function handle(m: WorkerRequest): Promise<void> {
  if (m.type === 'cancel') {
    cancelled.add(m.id);
    return;
  }
  if (m.type === 'close') {
    volumes.delete(m.volumeId);
    return;
  }
  const reply = (r: WorkerReply, transfer: ArrayBuffer[] = []) => port.postMessage(r, transfer);
  try {
    if (m.type === 'segment') {
      const t0 = performance.now();
      const p = await view(m.volumeId, m.path, m.axis);
      const { embedding: e, cached } = await embedding(m.volumeId, m.path, m.axis, m.index);
      const r = await decodePrompt(model, e, p, { box: m.box, points: m.points });
      const mask = binarize(r.logits);
      reply({ type: 'result', id: m.id, mask, iou: r.iou, cached, ms: performance.now() - t0 }, [mask.buffer as ArrayBuffer]);
    } else {
      const p = await view(m.volumeId, m.path, m.axis);
      const [x0, y0, x1, y1] = m.box;
      const k = m.index;
      const total = p.depth - k + (k > 0 ? k + 1 : 0);
      let done = 0;
      const seg = await segmentVolume(model, p, [{ label: 1, box: [x0, y0, k, x1, y1, k], points: m.points }], {
        onSlice: () => {
          if (cancelled.has(m.id)) throw new Error('cancelled');
          reply({ type: 'progress', id: m.id, done: ++done, total });
        },
      });
      const mask = seg as Uint8Array;
      reply({ type: 'result', id: m.id, mask, iou: 0, cached: false, ms: 0 }, [mask.buffer as ArrayBuffer]);
    }
  } catch (err) {
    reply({ type: 'error', id: m.id, message: (err as Error).message, cancelled: cancelled.has(m.id) });
  } finally {
    cancelled.delete(m.id);
  }
}

port.on('message', (m: WorkerRequest) => void handle(m));
