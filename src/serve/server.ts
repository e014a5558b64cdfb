/**
 * The `medtune serve` web server (node:http): the segment page and the runs page, and the JSON /
 * binary API behind them. Safe by default:
 * - files come only from the folders named on the command line (`--data`, `--runs`; paths are
 *   resolved with realpath and refused outside them) and from uploads (size-limited);
 * - every /api request carries the page's random token (a header no other origin can set, so
 *   no cross-site request reaches the API); state-changing requests from another Origin are refused;
 * - bound to loopback, requests naming another Host are refused (DNS rebinding);
 * - a bad file or request becomes a message for the page; the server keeps running.
 */
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { readdirSync, realpathSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, join, relative } from 'node:path';
import type { Box2D } from '../onnx/predict.js';
import type { Click, OnnxModel } from '../onnx/runtime.js';
import { pageHtml, pageScript, STYLE } from './bundle.js';
import { HttpError, readBody, readJson, resolveInside, sendBytes, sendJson } from './http.js';
import { listRuns, readRun, runOverlays } from './runs.js';
import { CancelledError, InferenceWorker } from './inference.js';
import { AXES, type Axis } from './views.js';
import { VolumeStore, type PropagationJob } from './volumes.js';

export interface ServeOptions {
  /** the export (its manifest is read here; its sessions run in the inference worker) */
  model?: OnnxModel;
  threads?: number;
  data?: string;
  runs?: string;
  host: string;
  port: number;
  maxUploadBytes: number;
}

export interface RunningServer {
  server: Server;
  url: string;
  token: string;
  close(): Promise<void>;
}

const INPUT_FILE = /\.(nii|nii\.gz|npz|npy|png|jpe?g)$/i;

/** Files the segment page can open under the data folder (symlinks that lead out are left out). */
function listDataFiles(root: string): string[] {
  const rootReal = realpathSync(root);
  const found: string[] = [];
  const visit = (dir: string, depth: number) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.name.startsWith('.') || found.length >= 5000) continue;
      const rel = relative(rootReal, join(dir, e.name));
      if (e.isDirectory()) {
        if (depth < 4) visit(join(dir, e.name), depth + 1);
      } else if (INPUT_FILE.test(e.name)) {
        try {
          resolveInside(rootReal, rel);
          found.push(rel);
        } catch {
          // a link out of the folder, or a dangling one: not offered
        }
      }
    }
  };
  visit(rootReal, 0);
  return found.sort();
}

function isLoopback(host: string): boolean {
  return host === '127.0.0.1' || host === 'localhost' || host === '::1';
}

function sameToken(given: string | undefined, token: string): boolean {
  if (!given || given.length !== token.length) return false;
  return timingSafeEqual(Buffer.from(given), Buffer.from(token));
}

function needModel(worker: InferenceWorker | undefined): InferenceWorker {
  if (!worker) throw new HttpError(409, 'no model: start `medtune serve` with --onnx EXPORT_DIR to segment');
  return worker;
}

function axisOf(v: unknown): Axis {
  if (!AXES.includes(v as Axis)) throw new HttpError(400, `unknown view '${v}' (axial, coronal or sagittal)`);
  return v as Axis;
}

interface PromptBody {
  axis: Axis;
  index: number;
  label: number;
  box?: Box2D;
  points?: Click[];
}

function promptOf(b: Partial<PromptBody>): PromptBody {
  const box = b.box;
  if (box !== undefined && !(Array.isArray(box) && box.length === 4 && box.every(Number.isFinite))) throw new HttpError(400, 'box: expected [x0, y0, x1, y1]');
  const points = b.points;
  if (points !== undefined && !(Array.isArray(points) && points.every((p) => Array.isArray(p) && p.length === 3 && p.every(Number.isFinite)))) {
    throw new HttpError(400, 'points: expected [[x, y, label], ...]');
  }
  return { axis: axisOf(b.axis), index: Number(b.index), label: Number(b.label), box, points };
}

export async function startServer(opts: ServeOptions): Promise<RunningServer> {
  const token = randomBytes(24).toString('hex');
  const store = new VolumeStore();
  // onnxruntime-node runs synchronously: inference gets its own thread so this one keeps answering
  const worker = opts.model ? new InferenceWorker(opts.model.dir, opts.threads) : undefined;
  const loopback = isLoopback(opts.host);

  async function api(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const path = url.pathname;
    const method = req.method ?? 'GET';
    const q = (name: string) => url.searchParams.get(name) ?? '';
    let m: RegExpExecArray | null;

    if (method === 'GET' && path === '/api/info') {
      return sendJson(res, 200, {
        model: opts.model ? { dir: basename(opts.model.dir), imageSize: opts.model.geometry.S } : null,
        data: Boolean(opts.data),
        runs: Boolean(opts.runs),
        maxUploadBytes: opts.maxUploadBytes,
      });
    }
    if (method === 'GET' && path === '/api/files') return sendJson(res, 200, { files: opts.data ? listDataFiles(opts.data) : [] });
    if (method === 'POST' && path === '/api/open') {
      if (!opts.data) throw new HttpError(409, 'no data folder: start `medtune serve` with --data DIR, or upload a file');
      const body = await readJson<{ path?: unknown }>(req);
      if (typeof body.path !== 'string') throw new HttpError(400, 'path: expected a file name under the data folder');
      const file = resolveInside(opts.data, body.path);
      if (!INPUT_FILE.test(file)) throw new HttpError(400, `${body.path}: not a file type the page reads (.nii, .nii.gz, .npz, .npy, .png, .jpg)`);
      return sendJson(res, 200, (await store.open(file, body.path)).describe());
    }
    if (method === 'POST' && path === '/api/upload') {
      const name = basename(q('name'));
      if (!INPUT_FILE.test(name)) throw new HttpError(400, `${name || 'upload'}: not a file type the page reads (.nii, .nii.gz, .npz, .npy, .png, .jpg)`);
      const bytes = await readBody(req, opts.maxUploadBytes);
      const file = join(store.workDir, `${randomUUID()}-${name.replace(/[^\w.-]/g, '_')}`);
      writeFileSync(file, bytes);
      return sendJson(res, 200, (await store.open(file, name)).describe());
    }
    if ((m = /^\/api\/volumes\/([\w-]+)\/(slice|labels|segment|propagate|undo|download)$/.exec(path))) {
      const vol = store.get(m[1]);
      const what = m[2];
      if (method === 'GET' && (what === 'slice' || what === 'labels')) {
        const axis = axisOf(q('axis'));
        const index = Number(q('index'));
        const { rows, cols } = vol.checkSlice(axis, index);
        const data = what === 'slice' ? vol.displaySlice(axis, index) : vol.labelSlice(axis, index);
        return sendBytes(res, 'application/octet-stream', new Uint8Array(data.buffer, data.byteOffset, data.byteLength), {
          'x-rows': String(rows),
          'x-cols': String(cols),
          'x-channels': String(what === 'slice' ? vol.channels : 1),
        });
      }
      if (method === 'GET' && what === 'download') {
        const format = q('format') === 'npz' ? 'npz' : 'nifti';
        const { bytes, filename } = await vol.encode(format, store.workDir);
        return sendBytes(res, 'application/octet-stream', bytes, { 'content-disposition': `attachment; filename="${filename.replace(/[^\w.-]/g, '_')}"` });
      }
      if (method === 'POST' && what === 'segment') {
        const p = promptOf(await readJson(req));
        return sendJson(res, 200, await vol.segmentSlice(needModel(worker), p));
      }
      if (method === 'POST' && what === 'undo') return sendJson(res, 200, { undone: vol.undo() });
      if (method === 'POST' && what === 'propagate') {
        const inference = needModel(worker);
        const p = promptOf(await readJson(req));
        if (!p.box) throw new HttpError(400, 'propagation starts from a box: draw one on this slice first');
        vol.checkSlice(p.axis, p.index);
        const job: PropagationJob = { id: randomUUID(), state: 'running', done: 0, total: 0 };
        store.jobs.set(job.id, job);
        const t0 = performance.now();
        vol
          .propagate(inference, { ...p, box: p.box }, job)
          .then((voxels) => Object.assign(job, { state: 'done', voxels, ms: performance.now() - t0 }))
          .catch((err) => Object.assign(job, err instanceof CancelledError ? { state: 'cancelled' } : { state: 'error', message: (err as Error).message }));
        return sendJson(res, 200, { job: job.id });
      }
    }
    if ((m = /^\/api\/jobs\/([\w-]+)(\/cancel)?$/.exec(path))) {
      const job = store.job(m[1]);
      if (m[2] && method === 'POST') job.cancel?.();
      const { cancel: _, ...visible } = job;
      return sendJson(res, 200, visible);
    }
    if (path.startsWith('/api/run')) {
      if (!opts.runs) throw new HttpError(409, 'no runs folder: start `medtune serve` with --runs DIR');
      if (method === 'GET' && path === '/api/runs') return sendJson(res, 200, { runs: listRuns(opts.runs) });
      if (method === 'GET' && path === '/api/run') return sendJson(res, 200, readRun(opts.runs, q('name'), Number(q('from')) || 0));
      if (method === 'GET' && path === '/api/run/overlays') return sendJson(res, 200, { overlays: runOverlays(opts.runs, q('name')).map((o, i) => ({ index: i, step: o.step })) });
      if (method === 'GET' && path === '/api/run/overlay') {
        const o = runOverlays(opts.runs, q('name'))[Number(q('index'))];
        if (!o) throw new HttpError(404, `no overlay ${q('index')}`);
        return sendBytes(res, 'image/png', o.png);
      }
    }
    throw new HttpError(404, `no such API: ${method} ${path}`);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    res.setHeader('x-content-type-options', 'nosniff');
    res.setHeader('x-frame-options', 'DENY');
    res.setHeader('content-security-policy', "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'");
    const host = req.headers.host ?? '';
    if (loopback && !/^(127\.0\.0\.1|localhost|\[::1\])(:\d+)?$/.test(host)) throw new HttpError(403, `Host '${host}' is not this server`);
    const url = new URL(req.url ?? '/', 'http://local');
    if (url.pathname.startsWith('/api/')) {
      if (!sameToken(req.headers['x-medtune-token'] as string | undefined, token)) throw new HttpError(403, 'missing or wrong page token: reload the page');
      const origin = req.headers.origin;
      if (req.method !== 'GET' && origin && origin !== `http://${host}`) throw new HttpError(403, `cross-origin request from ${origin} refused`);
      return api(req, res, url);
    }
    if (req.method !== 'GET') throw new HttpError(405, `${req.method} ${url.pathname}: not allowed`);
    if (url.pathname === '/') return sendBytes(res, 'text/html; charset=utf-8', Buffer.from(pageHtml('segment', token)));
    if (url.pathname === '/runs') return sendBytes(res, 'text/html; charset=utf-8', Buffer.from(pageHtml('runs', token)));
    if (url.pathname === '/assets/style.css') return sendBytes(res, 'text/css; charset=utf-8', STYLE);
    if (url.pathname === '/assets/segment.js') return sendBytes(res, 'text/javascript; charset=utf-8', await pageScript('segment'));
    if (url.pathname === '/assets/runs.js') return sendBytes(res, 'text/javascript; charset=utf-8', await pageScript('runs'));
    throw new HttpError(404, `${url.pathname}: not found`);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      const status = err instanceof HttpError ? err.status : 500;
      if (status === 500) console.error(`medtune serve: ${req.method} ${req.url}: ${(err as Error).stack ?? err}`);
      if (res.headersSent) res.destroy();
      else {
        // drain what the client still sends so it reads the reply (an over-limit upload)
        req.resume();
        sendJson(res, status, { error: (err as Error).message });
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const shownHost = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return {
    server,
    url: `http://${shownHost}:${port}/`,
    token,
    close: async () => {
      store.close();
      await worker?.terminate();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
  };
}
