/**
 * Reads PyTorch checkpoints as `torch.save` writes them (PyTorch >= 1.6): a zip archive holding
 * `<name>/data.pkl` (a pickle whose tensors refer to storages by persistent id) and the raw
 * storages `<name>/data/<key>`, plus `<name>/byteorder`. Official SAM2 / SAM2.1 / MedSAM2
 * checkpoints are `{"model": state_dict}`; MedSAM2 fine-tuning checkpoints are
 * `{"model", "optimizer", "epoch"}`.
 *
 * Unpickling uses `pickleparser` with resolvers for torch's globals: nothing in the file is
 * executed, unknown classes become inert placeholder objects, and tensors are decoded lazily, so
 * an optimizer state or other extras cost nothing unless read.
 */
import { readFileSync } from 'node:fs';
import { unzipSync } from 'fflate';
import { NameRegistry, Parser } from 'pickleparser';
import { DTYPE_BYTES, HOST_LITTLE_ENDIAN, decodeToFloat32, type DType, type StateDict } from './safetensors.js';

/** torch storage class name -> element dtype */
const STORAGE_DTYPES: Record<string, DType> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
  UntypedStorage: 'U8',
};

/** What a `torch.XxxStorage` global unpickles to. */
class StorageType {
  constructor(readonly name: string) {}
}

/** One storage referenced by a persistent id: `('storage', type, key, location, numel)`. */
class TorchStorage {
  private decoded?: Float32Array;
  constructor(
    private readonly archive: TorchArchive,
    readonly typeName: string,
    readonly key: string,
    readonly numel: number,
  ) {}

  get dtype(): DType | undefined {
    return STORAGE_DTYPES[this.typeName];
  }

  /** The whole storage as float32, decoded once and shared by every tensor viewing it. */
  values(where: string): Float32Array {
    if (this.decoded) return this.decoded;
    const dtype = this.dtype;
    if (!dtype) throw new Error(`${where}: storage type torch.${this.typeName} is not supported (only float, integer and bool tensors)`);
    const bytes = this.archive.storageBytes(this.key, where);
    if (bytes.byteLength < this.numel * DTYPE_BYTES[dtype]) {
      throw new Error(`${where}: storage data/${this.key} has ${bytes.byteLength} bytes, fewer than its ${this.numel} ${dtype} elements`);
    }
    // float32 in host order: view the archive's private copy of the bytes; tensors slice from it
    this.decoded =
      dtype === 'F32' && this.archive.littleEndian === HOST_LITTLE_ENDIAN && bytes.byteOffset % 4 === 0
        ? new Float32Array(bytes.buffer, bytes.byteOffset, this.numel)
        : decodeToFloat32(dtype, bytes, this.numel, where, this.archive.littleEndian);
    return this.decoded;
  }
}

/** A tensor as pickled by `torch._utils._rebuild_tensor_v2`: a strided view into a storage. */
export class TorchTensor {
  constructor(
    readonly storage: TorchStorage,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}

  get dtype(): string {
    return this.storage.dtype ?? `torch.${this.storage.typeName}`;
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** The tensor's values as a fresh row-major float32 array (strided views are gathered). */
  toFloat32(where: string): Float32Array {
    const n = this.numel;
    const { shape, stride, storageOffset: offset } = this;
    if (n === 0) return new Float32Array(0);
    // bounds: the furthest element the view touches must lie inside the storage
    let last = offset;
    for (let d = 0; d < shape.length; d++) last += (shape[d] - 1) * stride[d];
    let first = offset;
    for (let d = 0; d < shape.length; d++) first += Math.min(0, (shape[d] - 1) * stride[d]);
    if (first < 0 || last >= this.storage.numel) {
      throw new Error(
        `${where}: view (offset ${offset}, shape [${shape}], stride [${stride}]) reaches outside its storage of ${this.storage.numel} elements`,
      );
    }
    const src = this.storage.values(where);
    if (isContiguous(shape, stride)) return src.slice(offset, offset + n);
    // general strided gather, row-major over the view's shape
    const out = new Float32Array(n);
    const rank = shape.length;
    const idx = new Array<number>(rank).fill(0);
    let pos = offset;
    for (let i = 0; i < n; i++) {
      out[i] = src[pos];
      for (let d = rank - 1; d >= 0; d--) {
        idx[d]++;
        pos += stride[d];
        if (idx[d] < shape[d]) break;
        pos -= stride[d] * shape[d];
        idx[d] = 0;
      }
    }
    return out;
  }
}

function isContiguous(shape: number[], stride: number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}

function isIntArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((x) => Number.isSafeInteger(x));
}

/** The unzipped archive: data.pkl, the storages and the byte order. */
class TorchArchive {
  readonly prefix: string;
  readonly littleEndian: boolean;
  constructor(
    readonly source: string,
    private readonly entries: Record<string, Uint8Array>,
  ) {
    const pkls = Object.keys(entries).filter((n) => /^[^/]+\/data\.pkl$/.test(n) || n === 'data.pkl');
    if (pkls.length === 0) {
      const names = Object.keys(entries);
      throw new Error(
        `${source}: zip archive has no data.pkl, so it is not a torch.save checkpoint (entries: ${names.slice(0, 8).join(', ')}${names.length > 8 ? ', ...' : ''})`,
      );
    }
    if (pkls.length > 1) throw new Error(`${source}: zip archive holds several data.pkl (${pkls.join(', ')}); expected one checkpoint`);
    this.prefix = pkls[0].slice(0, -'data.pkl'.length);
    const order = entries[`${this.prefix}byteorder`];
    const byteorder = order ? new TextDecoder().decode(order).trim() : 'little';
    if (byteorder !== 'little' && byteorder !== 'big') throw new Error(`${source}: unknown byteorder '${byteorder}'`);
    this.littleEndian = byteorder === 'little';
  }

  get pickle(): Uint8Array {
    return this.entries[`${this.prefix}data.pkl`];
  }

  storageBytes(key: string, where: string): Uint8Array {
    const bytes = this.entries[`${this.prefix}data/${key}`];
    if (!bytes) throw new Error(`${where}: storage data/${key} is missing from the archive`);
    return bytes;
  }
}

const ZIP_LOCAL = 0x04034b50;
const ZIP_EOCD = 0x06054b50;

function unzipCheckpoint(buf: Uint8Array, source: string): Record<string, Uint8Array> {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.byteLength < 4 || view.getUint32(0, true) !== ZIP_LOCAL) {
    if (buf.byteLength >= 2 && buf[0] === 0x80 && buf[1] >= 2 && buf[1] <= 5) {
      throw new Error(
        `${source}: this is a bare pickle (the legacy torch.save format of PyTorch < 1.6, or pickle.dump), not a zip checkpoint; ` +
          're-save it with a current PyTorch (torch.save(torch.load(path), path)) or convert it to .safetensors',
      );
    }
    throw new Error(`${source}: not a PyTorch checkpoint (not a zip archive; torch.save writes zip files starting with "PK")`);
  }
  // the end-of-central-directory record sits in the last 22 + up to 65535 (comment) bytes
  let hasEocd = false;
  for (let i = buf.byteLength - 22; i >= Math.max(0, buf.byteLength - 22 - 65535); i--) {
    if (view.getUint32(i, true) === ZIP_EOCD) {
      hasEocd = true;
      break;
    }
  }
  if (!hasEocd) {
    throw new Error(`${source}: truncated or damaged checkpoint: the zip's end-of-central-directory record is missing (incomplete download or copy?)`);
  }
  try {
    return unzipSync(buf);
  } catch (err) {
    throw new Error(`${source}: damaged checkpoint: the zip archive cannot be read (${(err as Error).message})`);
  }
}

/** Resolves the globals torch.save pickles; anything else becomes pickleparser's inert placeholder. */
class TorchNames extends NameRegistry {
  private readonly storageTypes = new Map<string, StorageType>();

  constructor() {
    super();
    this.register('collections', 'OrderedDict', () => new Map());
    const rebuild = (storage: unknown, offset: unknown, size: unknown, stride: unknown) => {
      if (!(storage instanceof TorchStorage)) throw new Error('tensor rebuilt from something other than a storage');
      if (!Number.isSafeInteger(offset) || !isIntArray(size) || !isIntArray(stride) || size.length !== stride.length) {
        throw new Error(`tensor with malformed offset/size/stride (${String(offset)}, ${String(size)}, ${String(stride)})`);
      }
      if (size.some((d) => d < 0)) throw new Error(`tensor with negative size [${size}]`);
      return new TorchTensor(storage, offset as number, size, stride);
    };
    this.register('torch._utils', '_rebuild_tensor_v2', rebuild);
    this.register('torch._utils', '_rebuild_tensor', rebuild);
    this.register('torch._utils', '_rebuild_parameter', (data: unknown) => data);
    this.register('torch._utils', '_rebuild_parameter_with_state', (data: unknown) => data);
    this.register('torch._tensor', '_rebuild_from_type_v2', (func: unknown, _type: unknown, args: unknown) => {
      if (typeof func !== 'function' || !Array.isArray(args)) throw new Error('malformed _rebuild_from_type_v2');
      return func(...args);
    });
  }

  override resolve(module: string, name: string) {
    // `torch.XxxStorage`: one marker per class; unsupported ones fail only if a tensor using them is read
    if (module === 'torch' && name.endsWith('Storage')) {
      let t = this.storageTypes.get(name);
      if (!t) this.storageTypes.set(name, (t = new StorageType(name)));
      return t as unknown as () => unknown;
    }
    return super.resolve(module, name);
  }
}

/**
 * Unpickle a torch.save archive held in `buf`. Tensors come back as lazy `TorchTensor`s,
 * dicts as `Map`s, tuples and lists as arrays.
 */
export function parseTorchCheckpoint(buf: Uint8Array, source: string): unknown {
  const archive = new TorchArchive(source, unzipCheckpoint(buf, source));
  const parser = new Parser({
    nameResolver: new TorchNames(),
    unpicklingTypeOfDictionary: 'Map',
    persistentResolver: {
      resolve: (pid: unknown) => {
        if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length < 5) {
          throw new Error(`unsupported persistent id ${JSON.stringify(pid)}`);
        }
        const [, type, key, , numel] = pid;
        if (!(type instanceof StorageType)) throw new Error(`storage ${String(key)} has an unknown storage class`);
        if (typeof key !== 'string' || !Number.isSafeInteger(numel) || numel < 0) {
          throw new Error(`malformed storage reference ${String(key)} / ${String(numel)}`);
        }
        return new TorchStorage(archive, type.name, key, numel);
      },
    },
  });
  try {
    return parser.parse(archive.pickle);
  } catch (err) {
    throw new Error(`${source}: ${archive.prefix}data.pkl cannot be unpickled as a torch checkpoint (${(err as Error).message})`);
  }
}

export function readTorchCheckpoint(path: string): unknown {
  let buf: Uint8Array;
  try {
    buf = readFileSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read file (${(err as Error).message})`);
  }
  return parseTorchCheckpoint(buf, path);
}

function describe(v: unknown): string {
  if (v instanceof Map) return 'dict';
  if (Array.isArray(v)) return 'tuple/list';
  if (v === null) return 'None';
  if (typeof v === 'object') {
    const proto = Object.getPrototypeOf(v) as { __module__?: string; __name__?: string };
    if (proto?.__name__) return `${proto.__module__}.${proto.__name__}`;
    return v.constructor?.name ?? 'object';
  }
  return typeof v;
}

/**
 * The model state dict inside an unpickled checkpoint, as name -> lazy tensor:
 * `obj["model"]` (official SAM2 / MedSAM2 layout), `obj["state_dict"]`, or `obj` itself when it
 * is a flat name -> tensor dict.
 */
export function findTorchStateDict(obj: unknown, source: string): Map<string, TorchTensor> {
  if (!(obj instanceof Map)) throw new Error(`${source}: checkpoint holds a ${describe(obj)}, expected a dict with a state dict`);
  let sd: unknown;
  let where = '';
  if (obj.get('model') instanceof Map) {
    sd = obj.get('model');
    where = "['model']";
  } else if (obj.get('state_dict') instanceof Map) {
    sd = obj.get('state_dict');
    where = "['state_dict']";
  } else if ([...obj.values()].some((v) => v instanceof TorchTensor)) {
    sd = obj;
  } else {
    const keys = [...obj.keys()].map(String);
    throw new Error(
      `${source}: checkpoint holds no tensors where a state dict is expected (no 'model' or 'state_dict' dict, no tensors at the top; top-level keys: ${keys.slice(0, 10).join(', ') || 'none'})`,
    );
  }
  const out = new Map<string, TorchTensor>();
  for (const [k, v] of sd as Map<unknown, unknown>) {
    if (typeof k !== 'string') throw new Error(`${source}: state dict${where} has a non-string key ${String(k)}`);
    if (!(v instanceof TorchTensor)) throw new Error(`${source}: state dict${where} entry '${k}' is a ${describe(v)}, not a tensor`);
    out.set(k, v);
  }
  if (out.size === 0) throw new Error(`${source}: state dict${where} is empty (the checkpoint holds no tensors)`);
  return out;
}

/** Read a torch.save checkpoint's model state dict as float32 host tensors. */
export function readTorchStateDict(path: string): StateDict {
  const refs = findTorchStateDict(readTorchCheckpoint(path), path);
  const out: StateDict = new Map();
  for (const [name, t] of refs) out.set(name, { data: t.toFloat32(`${path}: '${name}'`), shape: [...t.shape] });
  return out;
}

/** Names, dtypes and shapes of a torch checkpoint's state dict, without decoding the data. */
export function readTorchStateDictShapes(path: string): Map<string, { dtype: string; shape: number[] }> {
  const refs = findTorchStateDict(readTorchCheckpoint(path), path);
  return new Map([...refs].map(([name, t]) => [name, { dtype: t.dtype, shape: [...t.shape] }]));
}
