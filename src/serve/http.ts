/** Small helpers for the node:http server: errors with a status, JSON replies, bodies with a size limit, safe paths. */
import { realpathSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isAbsolute, relative, resolve } from 'node:path';

/** An error whose message is shown to the page, with its HTTP status. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const bytes = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': bytes.length, 'cache-control': 'no-store' });
  res.end(bytes);
}

export function sendBytes(res: ServerResponse, type: string, bytes: Uint8Array, headers: Record<string, string> = {}): void {
  res.writeHead(200, { 'content-type': type, 'content-length': bytes.byteLength, 'cache-control': 'no-store', ...headers });
  res.end(bytes);
}

/** The request body, refused with 413 once it passes `limit` bytes. */
export async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) throw new HttpError(413, `upload of ${declared} bytes is over the limit of ${limit} bytes (--max-upload-mb)`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new HttpError(413, `upload is over the limit of ${limit} bytes (--max-upload-mb)`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

export async function readJson<T>(req: IncomingMessage, limit = 1 << 20): Promise<T> {
  const body = await readBody(req, limit);
  try {
    return JSON.parse(body.toString('utf8')) as T;
  } catch {
    throw new HttpError(400, 'request body is not JSON');
  }
}

function inside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/**
 * A path given by the page (already decoded), resolved under `root`: refused when it names
 * something outside the folder, either lexically (`..`, an absolute path) or through a symlink.
 */
export function resolveInside(root: string, given: string): string {
  if (given.includes('\0')) throw new HttpError(400, 'a path with a NUL byte');
  const rootReal = realpathSync(root);
  const candidate = resolve(rootReal, given);
  if (!inside(rootReal, candidate)) throw new HttpError(403, `${given}: outside the served folder`);
  let real: string;
  try {
    real = realpathSync(candidate);
  } catch {
    throw new HttpError(404, `${given}: no such file`);
  }
  if (!inside(rootReal, real)) throw new HttpError(403, `${given}: links outside the served folder`);
  return real;
}
