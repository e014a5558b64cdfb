import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';

/** A named float32 tensor on the host, row-major. */
export interface HostTensor {
  data: Float32Array;
  shape: number[];
}
export type StateDict = Map<string, HostTensor>;

/** Element dtypes, named as safetensors names them (PyTorch storages map onto the same names). */
export type DType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

export function isDType(name: string): name is DType {
  return Object.hasOwn(DTYPE_BYTES, name);
}

export const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Decode `count` elements of `dtype` from `bytes` into float32 (PyTorch's `.float()`:
 * float16/bfloat16/float64 are converted, integers and booleans become their values).
 * `where` names the tensor in errors.
 */
export function decodeToFloat32(dtype: string, bytes: Uint8Array, count: number, where: string, littleEndian = true): Float32Array {
  if (!isDType(dtype)) throw new Error(`${where}: dtype ${dtype} cannot be read as float32 weights`);
  const need = count * DTYPE_BYTES[dtype];
  if (bytes.byteLength < need) throw new Error(`${where}: ${bytes.byteLength} bytes hold fewer than ${count} ${dtype} elements`);
  const out = new Float32Array(count);
  if (dtype === 'F32' && littleEndian === HOST_LITTLE_ENDIAN) {
    // a byte copy: keeps NaN payloads and is much faster than per-element reads
    new Uint8Array(out.buffer).set(bytes.subarray(0, need));
    return out;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'F32':
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, littleEndian);
      return out;
    case 'F64':
      for (let i = 0; i < count; i++) out[i] = view.getFloat64(i * 8, littleEndian);
      return out;
    case 'BF16': {
      // bfloat16 is the top half of a float32: shift the bits into place, exactly
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = view.getUint16(i * 2, littleEndian) << 16;
      return out;
    }
    case 'F16':
      for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(i * 2, littleEndian));
      return out;
    case 'I64':
      for (let i = 0; i < count; i++) out[i] = Number(view.getBigInt64(i * 8, littleEndian));
      return out;
    case 'I32':
      for (let i = 0; i < count; i++) out[i] = view.getInt32(i * 4, littleEndian);
      return out;
    case 'I16':
      for (let i = 0; i < count; i++) out[i] = view.getInt16(i * 2, littleEndian);
      return out;
    case 'I8':
      for (let i = 0; i < count; i++) out[i] = view.getInt8(i);
      return out;
    case 'U8':
      for (let i = 0; i < count; i++) out[i] = view.getUint8(i);
      return out;
    case 'BOOL':
      for (let i = 0; i < count; i++) out[i] = view.getUint8(i) ? 1 : 0;
      return out;
  }
}

export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** One tensor's entry in a safetensors header. */
export interface SafetensorsEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

function isShape(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((d) => Number.isSafeInteger(d) && d >= 0);
}

/**
 * Read and validate the JSON header at the start of `buf` (which may be only the file's first
 * bytes); returns the entries and where the data section starts. `fileBytes` is the whole
 * file's length, for the bounds checks.
 */
function parseHeader(buf: Uint8Array, fileBytes: number, source: string): { entries: Map<string, SafetensorsEntry>; dataStart: number; metadata: Record<string, string> } {
  if (fileBytes < 8 || buf.byteLength < 8) throw new Error(`${source}: too short to be a safetensors file (${fileBytes} bytes)`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen <= 0 || 8 + headerLen > fileBytes) {
    throw new Error(`${source}: not a safetensors file (header length ${headerLen} does not fit ${fileBytes} bytes)`);
  }
  if (8 + headerLen > buf.byteLength) throw new Error(`${source}: header is cut short`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + headerLen)));
  } catch {
    throw new Error(`${source}: not a safetensors file (header is not JSON)`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new Error(`${source}: not a safetensors file (header is not a JSON object)`);
  }
  const dataStart = 8 + headerLen;
  const dataBytes = fileBytes - dataStart;
  const entries = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      // the format allows only strings here; anything else is left out rather than refused
      if (typeof raw === 'object' && raw !== null) metadata = Object.fromEntries(Object.entries(raw).filter(([, v]) => typeof v === 'string'));
      continue;
    }
    const info = raw as Partial<SafetensorsEntry> | null;
    const offsets = info?.data_offsets;
    if (
      !info ||
      typeof info.dtype !== 'string' ||
      !isShape(info.shape) ||
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      throw new Error(`${source}: tensor '${name}' has a malformed header entry ${JSON.stringify(raw)}`);
    }
    const width = isDType(info.dtype) ? DTYPE_BYTES[info.dtype] : undefined;
    if (width === undefined) throw new Error(`${source}: tensor '${name}' has unknown dtype ${info.dtype}`);
    const count = info.shape.reduce((a, b) => a * b, 1);
    const [begin, end] = offsets;
    if (end - begin !== count * width) {
      throw new Error(`${source}: tensor '${name}' data (${end - begin} bytes) is inconsistent with its shape [${info.shape}] of ${info.dtype}`);
    }
    if (end > dataBytes) {
      throw new Error(`${source}: tensor '${name}' data is truncated (ends at byte ${end} of a ${dataBytes}-byte data section)`);
    }
    entries.set(name, { dtype: info.dtype, shape: info.shape, data_offsets: [begin, end] });
  }
  return { entries, dataStart, metadata };
}

/** Parse a .safetensors buffer into float32 host tensors. */
export function parseSafetensors(buf: Uint8Array, source: string): StateDict {
  return parseSafetensorsWithMetadata(buf, source).tensors;
}

/** `parseSafetensors` and the header's `__metadata__` strings. */
export function parseSafetensorsWithMetadata(buf: Uint8Array, source: string): { tensors: StateDict; metadata: Record<string, string> } {
  const { entries, dataStart, metadata } = parseHeader(buf, buf.byteLength, source);
  const out: StateDict = new Map();
  for (const [name, info] of entries) {
    const [begin, end] = info.data_offsets;
    const count = info.shape.reduce((a, b) => a * b, 1);
    const bytes = buf.subarray(dataStart + begin, dataStart + end);
    out.set(name, { data: decodeToFloat32(info.dtype, bytes, count, `${source}: '${name}'`), shape: info.shape });
  }
  return { tensors: out, metadata };
}

function readFileOrThrow(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read file (${(err as Error).message})`);
  }
}

export function readSafetensors(path: string): StateDict {
  return parseSafetensors(readFileOrThrow(path), path);
}

/** Names, dtypes and shapes of a safetensors file's tensors, reading only its header. */
export function readSafetensorsHeader(path: string): Map<string, SafetensorsEntry> {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new Error(`${path}: cannot read file (${(err as Error).message})`);
  }
  try {
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(Math.min(size, 8));
    readSync(fd, head, 0, head.byteLength, 0);
    if (size < 8) return parseHeader(head, size, path).entries;
    const headerLen = Number(head.readBigUInt64LE(0));
    const want = 8 + Math.min(headerLen, Math.max(0, size - 8));
    const buf = Buffer.alloc(want);
    readSync(fd, buf, 0, want, 0);
    return parseHeader(buf, size, path).entries;
  } finally {
    closeSync(fd);
  }
}

/** Serialize float32 tensors as safetensors (keys sorted, like the reference writer). */
export function encodeSafetensors(tensors: StateDict, metadata?: Record<string, string>): Uint8Array {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    if (name === '__metadata__') throw new Error(`safetensors: '__metadata__' is reserved and cannot name a tensor`);
    if (!(t.data instanceof Float32Array)) throw new Error(`safetensors: tensor '${name}' is not float32 data`);
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (!isShape(t.shape) || count !== t.data.length) {
      throw new Error(`safetensors: tensor '${name}' has ${t.data.length} values but shape [${t.shape}]`);
    }
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  // pad the header so the data section starts 8-byte aligned
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.byteLength;
  for (const name of names) {
    const t = tensors.get(name)!;
    if (HOST_LITTLE_ENDIAN) {
      out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    } else {
      const view = new DataView(out.buffer, pos, t.data.byteLength);
      for (let i = 0; i < t.data.length; i++) view.setFloat32(i * 4, t.data[i], true);
    }
    pos += t.data.byteLength;
  }
  return out;
}
