/** The server's side of the inference worker (inference-worker.ts): requests by id, progress, cancel. */
import { Worker } from 'node:worker_threads';
import type { Box2D } from '../onnx/predict.js';
import type { Click } from '../onnx/runtime.js';
import type { Axis } from './views.js';

interface PromptRequest {
  volumeId: string;
  /** the file, read again by the worker exactly as `medtune predict` reads it */
  path: string;
  axis: Axis;
  index: number;
  box?: Box2D;
  points?: Click[];
}

export type WorkerRequest =
  | ({ type: 'segment'; id: number } & PromptRequest)
  | ({ type: 'propagate'; id: number; box: Box2D } & PromptRequest)
  | { type: 'cancel'; id: number }
  | { type: 'close'; volumeId: string };

export type WorkerReply =
  | { type: 'result'; id: number; mask: Uint8Array; iou: number; cached: boolean; ms: number }
  | { type: 'progress'; id: number; done: number; total: number }
  | { type: 'error'; id: number; message: string; cancelled: boolean };

export class CancelledError extends Error {
  constructor() {
    super('propagation cancelled');
  }
}

interface Pending {
  resolve: (r: Extract<WorkerReply, { type: 'result' }>) => void;
  reject: (e: Error) => void;
  progress?: (done: number, total: number) => void;
}

export class InferenceWorker {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;

  constructor(exportDir: string, threads?: number) {
    this.worker = new Worker(new URL('./inference-worker-entry.mjs', import.meta.url), { workerData: { exportDir, threads } });
    this.worker.on('message', (m: WorkerReply) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      if (m.type === 'progress') return p.progress?.(m.done, m.total);
      this.pending.delete(m.id);
      if (m.type === 'result') p.resolve(m);
      else p.reject(m.cancelled ? new CancelledError() : new Error(m.message));
    });
    this.worker.on('error', (err) => {
      for (const p of this.pending.values()) p.reject(new Error(`inference worker failed: ${err.message}`));
      this.pending.clear();
    });
  }

  private call(req: WorkerRequest & { id: number }, progress?: Pending['progress']): Promise<Extract<WorkerReply, { type: 'result' }>> {
    return new Promise((resolve, reject) => {
      this.pending.set(req.id, { resolve, reject, progress });
      this.worker.postMessage(req);
    });
  }

  /** One view slice from a box and/or clicks -> the (rows * cols) mask, its IoU estimate, whether the embedding was cached. */
  segment(req: PromptRequest): Promise<{ mask: Uint8Array; iou: number; cached: boolean; ms: number }> {
    return this.call({ type: 'segment', id: this.nextId++, ...req });
  }

  /**
   * Propagation along the view from its slice (a (count, rows, cols) mask, 1 = object).
   * `started` gets the id to `cancel`; a cancelled run rejects with `CancelledError`.
   */
  propagate(req: PromptRequest & { box: Box2D }, started: (id: number) => void, progress: (done: number, total: number) => void): Promise<Uint8Array> {
    const id = this.nextId++;
    started(id);
    return this.call({ type: 'propagate', id, ...req }, progress).then((r) => r.mask);
  }

  cancel(id: number): void {
    this.worker.postMessage({ type: 'cancel', id } satisfies WorkerRequest);
  }

  forget(volumeId: string): void {
    this.worker.postMessage({ type: 'close', volumeId } satisfies WorkerRequest);
  }

  async terminate(): Promise<void> {
    await this.worker.terminate();
  }
}
