import { readFileSync } from 'node:fs';

/** A named float32 tensor on the host, row-major. */
export interface HostTensor {
  data: Float32Array;
  shape: number[];
}
export type StateDict = Map<string, HostTensor>;

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, U8: 1, I8: 1, BOOL: 1 };

function toFloat32(dtype: string, bytes: Uint8Array, count: number, where: string): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  switch (dtype) {
    case 'F32':
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
      return out;
    case 'F64':
      for (let i = 0; i < count; i++) out[i] = view.getFloat64(i * 8, true);
      return out;
    case 'BF16':
      for (let i = 0; i < count; i++) {
        const b = new DataView(new ArrayBuffer(4));
        b.setUint16(0, view.getUint16(i * 2, true), false);
        out[i] = b.getFloat32(0, false);
      }
      return out;
    case 'F16':
      for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
      return out;
    default:
      throw new Error(`${where}: dtype ${dtype} cannot be read as float32 weights`);
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

/** Parse a .safetensors buffer into float32 host tensors. */
export function parseSafetensors(buf: Uint8Array, source: string): StateDict {
  if (buf.byteLength < 8) throw new Error(`${source}: too short to be a safetensors file`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen <= 0 || 8 + headerLen > buf.byteLength) {
    throw new Error(`${source}: not a safetensors file (header length ${headerLen} does not fit ${buf.byteLength} bytes)`);
  }
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + headerLen)));
  } catch {
    throw new Error(`${source}: not a safetensors file (header is not JSON)`);
  }
  const dataStart = 8 + headerLen;
  const out: StateDict = new Map();
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [begin, end] = info.data_offsets;
    const count = info.shape.reduce((a, b) => a * b, 1);
    const width = DTYPE_BYTES[info.dtype];
    if (width === undefined) throw new Error(`${source}: tensor '${name}' has unknown dtype ${info.dtype}`);
    if (end - begin !== count * width || dataStart + end > buf.byteLength) {
      throw new Error(`${source}: tensor '${name}' data is truncated or inconsistent with its shape [${info.shape}]`);
    }
    const bytes = buf.subarray(dataStart + begin, dataStart + end);
    out.set(name, { data: toFloat32(info.dtype, bytes, count, `${source}: '${name}'`), shape: info.shape });
  }
  return out;
}

export function readSafetensors(path: string): StateDict {
  return parseSafetensors(readFileSync(path), path);
}

/** Serialize float32 tensors as safetensors (keys sorted, like the reference writer). */
export function encodeSafetensors(tensors: StateDict, metadata?: Record<string, string>): Uint8Array {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
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
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength;
  }
  return out;
}
