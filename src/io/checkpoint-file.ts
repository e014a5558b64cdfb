/**
 * One entry point for model weights on disk: official PyTorch checkpoints (`.pt` / `.pth`),
 * `.safetensors` files, and our own run checkpoints (a directory holding `model.safetensors`).
 */
import { closeSync, existsSync, mkdirSync, openSync, readSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { encodeSafetensors, readSafetensors, readSafetensorsHeader, type StateDict } from './safetensors.js';
import { readTorchStateDict, readTorchStateDictShapes } from './torch-checkpoint.js';
import { writeFileSynced } from './synced-write.js';

/** MedSAM2's fine-tuning wrapper stores the SAM2 model as `self.sam2_model`. */
export const WRAPPER_PREFIX = 'sam2_model.';

/** The file name of the weights inside a run checkpoint directory. */
export const MODEL_FILE = 'model.safetensors';
/** An adapter run's checkpoint holds these instead (src/train/adapters.ts): what trained, and its description. */
export const ADAPTER_FILE = 'adapter.safetensors';
export const ADAPTER_META_FILE = 'adapter.json';

type Format = 'torch' | 'safetensors';

/** Resolve `path` to the weights file and its format (by content, so a misnamed file still reads). */
export function resolveCheckpoint(path: string): { file: string; format: Format } {
  let file = path;
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new Error(`${path}: no such checkpoint file or directory`);
  }
  if (st.isDirectory()) {
    file = join(path, MODEL_FILE);
    if (existsSync(join(path, ADAPTER_META_FILE))) {
      throw new Error(`${path}: an adapter run's checkpoint (${ADAPTER_FILE} over base weights it references): \`medtune export --checkpoint ${path}\` turns it into a model`);
    }
    if (!existsSync(file)) throw new Error(`${path}: directory holds no ${MODEL_FILE} (expected a run checkpoint directory)`);
  }
  const head = Buffer.alloc(4);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, head, 0, 4, 0);
  } finally {
    closeSync(fd);
  }
  // torch.save archives are zips ("PK\x03\x04"); everything else is read as safetensors
  if (head.readUInt32LE(0) === 0x04034b50) return { file, format: 'torch' };
  if (/\.(pt|pth|ckpt|bin)$/i.test(file) && head[0] === 0x80) return { file, format: 'torch' }; // legacy pickle: torch reader explains
  return { file, format: 'safetensors' };
}

/**
 * Strip MedSAM2's `sam2_model.` wrapper prefix from the keys that carry it, so finetune
 * checkpoints load with the official key names.
 */
export function stripWrapperPrefix<T>(sd: Map<string, T>, source: string): Map<string, T> {
  if (![...sd.keys()].some((k) => k.startsWith(WRAPPER_PREFIX))) return sd;
  const out = new Map<string, T>();
  for (const [k, v] of sd) {
    const name = k.startsWith(WRAPPER_PREFIX) ? k.slice(WRAPPER_PREFIX.length) : k;
    if (out.has(name)) throw new Error(`${source}: key '${name}' appears both with and without the '${WRAPPER_PREFIX}' prefix`);
    out.set(name, v);
  }
  return out;
}

/**
 * Read model weights as float32 host tensors from a `.pt`/`.pth` torch checkpoint, a
 * `.safetensors` file, or a run checkpoint directory (`model.safetensors` inside). For torch
 * checkpoints the state dict is `ckpt["model"]`; a `sam2_model.` prefix is stripped.
 */
export function readStateDict(path: string): StateDict {
  const { file, format } = resolveCheckpoint(path);
  const sd = format === 'torch' ? readTorchStateDict(file) : readSafetensors(file);
  return stripWrapperPrefix(sd, file);
}

/** The checkpoint's own tensors, name -> dtype and shape, read without decoding the data. */
export function readStateDictShapes(path: string): Map<string, { dtype: string; shape: number[] }> {
  const { file, format } = resolveCheckpoint(path);
  const shapes =
    format === 'torch'
      ? readTorchStateDictShapes(file)
      : new Map([...readSafetensorsHeader(file)].map(([name, e]) => [name, { dtype: e.dtype, shape: e.shape }]));
  return stripWrapperPrefix(shapes, file);
}

/**
 * Write `sd` as safetensors, atomically: the bytes go to a temporary file beside the target,
 * are flushed, and the file is renamed over `path`, so a crash never leaves a half-written
 * checkpoint. A `path` that is an existing directory (or ends in '/') gets `model.safetensors`.
 */
export function writeStateDict(path: string, sd: StateDict, metadata?: Record<string, string>): string {
  let file = path;
  if (path.endsWith('/') || (existsSync(path) && statSync(path).isDirectory())) file = join(path, MODEL_FILE);
  mkdirSync(dirname(file), { recursive: true });
  const bytes = encodeSafetensors(sd, metadata);
  const tmp = join(dirname(file), `.${basename(file)}.tmp-${process.pid}-${Date.now().toString(36)}`);
  try {
    writeFileSynced(tmp, bytes);
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new Error(`${file}: cannot write checkpoint (${(err as Error).message})`);
  }
  return file;
}
