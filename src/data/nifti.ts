/**
 * NIfTI (.nii / .nii.gz) reading and NIfTI-1 writing.
 *
 * Axis and spacing conventions (the ones the medical segmentation challenge npz files use):
 * - NIfTI stores voxels with x varying fastest, then y, then z. Read as a flat row-major array the
 *   data is therefore already (D, H, W) = (z, y, x): exactly what SimpleITK's GetArrayFromImage
 *   returns and what the challenge npz files hold in `imgs` / `gts`. No transposition happens.
 * - `spacing` is (x, y, z) = pixdim[1..3], SimpleITK's GetSpacing() order, which is also the order
 *   the challenge npz files store in `spacing` (they write `img_sitk.GetSpacing()`). To pair a
 *   spacing value with an array axis, reverse it: array axis 0 (z) has spacing[2].
 * - `origin` and `direction` follow SimpleITK (ITK) too: physical coordinates in LPS, `direction`
 *   the 3x3 direction cosines row-major (column j is the direction of index axis j = x, y, z).
 *   NIfTI's qform/sform are RAS; the first two rows flip sign. The transform used is the sform
 *   when sform_code > 0 and its 3x3 part is orthogonal, else the qform when qform_code > 0, else
 *   the sform, else pixdim scaling alone.
 *
 * Writing keeps the input's geometry: `encodeNifti(data, shape, { like })` copies pixdim,
 * qform/sform codes, quaternion, offsets, srow and units from the header that was read, so a label
 * map written for an image overlays it in any viewer. Without a header to copy, a geometry
 * (spacing, origin, direction as above) is turned into matching qform and sform.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { gunzipSync, gzipSync } from 'fflate';
import * as nifti from 'nifti-reader-js';

export type NiftiTypedArray =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array;

export type NiftiDtype = 'uint8' | 'int8' | 'uint16' | 'int16' | 'uint32' | 'int32' | 'float32' | 'float64';

interface DtypeInfo {
  code: number;
  bytes: number;
  make: (n: number) => NiftiTypedArray;
}

const DTYPES: Record<NiftiDtype, DtypeInfo> = {
  uint8: { code: 2, bytes: 1, make: (n) => new Uint8Array(n) },
  int16: { code: 4, bytes: 2, make: (n) => new Int16Array(n) },
  int32: { code: 8, bytes: 4, make: (n) => new Int32Array(n) },
  float32: { code: 16, bytes: 4, make: (n) => new Float32Array(n) },
  float64: { code: 64, bytes: 8, make: (n) => new Float64Array(n) },
  int8: { code: 256, bytes: 1, make: (n) => new Int8Array(n) },
  uint16: { code: 512, bytes: 2, make: (n) => new Uint16Array(n) },
  uint32: { code: 768, bytes: 4, make: (n) => new Uint32Array(n) },
};

const CODE_NAMES: Record<number, string> = {
  1: 'binary (1 bit)',
  32: 'complex64',
  128: 'rgb24',
  1024: 'int64',
  1280: 'uint64',
  1536: 'float128',
  1792: 'complex128',
  2048: 'complex256',
  2304: 'rgba32',
};

function dtypeOfCode(code: number): NiftiDtype | undefined {
  return (Object.keys(DTYPES) as NiftiDtype[]).find((k) => DTYPES[k].code === code);
}

export function dtypeOfArray(a: NiftiTypedArray): NiftiDtype {
  if (a instanceof Uint8Array) return 'uint8';
  if (a instanceof Int8Array) return 'int8';
  if (a instanceof Uint16Array) return 'uint16';
  if (a instanceof Int16Array) return 'int16';
  if (a instanceof Uint32Array) return 'uint32';
  if (a instanceof Int32Array) return 'int32';
  if (a instanceof Float32Array) return 'float32';
  return 'float64';
}

/** The header fields that define where voxels are in space; copied verbatim when writing. */
export interface NiftiTransform {
  /** pixdim[0..7]; pixdim[0] is qfac (+1 or -1), pixdim[1..3] the spacing (x, y, z) */
  pixdim: number[];
  qformCode: number;
  sformCode: number;
  /** quatern_b, quatern_c, quatern_d */
  quatern: [number, number, number];
  /** qoffset_x, qoffset_y, qoffset_z */
  qoffset: [number, number, number];
  /** srow_x, srow_y, srow_z (4 values each) */
  srow: [number[], number[], number[]];
  xyztUnits: number;
}

/** SimpleITK-style geometry (see the module comment). */
export interface NiftiGeometry {
  /** (x, y, z) mm */
  spacing: [number, number, number];
  /** LPS mm */
  origin: [number, number, number];
  /** 3x3 row-major, LPS */
  direction: number[];
}

export interface NiftiVolume {
  /** stored voxel values (scl_slope / scl_inter not applied; see `scaledData`), (D, H, W) row-major */
  data: NiftiTypedArray;
  /** (D, H, W) = (dim[3], dim[2], dim[1]); D = 1 for a 2D image */
  shape: [number, number, number];
  dtype: NiftiDtype;
  sclSlope: number;
  sclInter: number;
  transform: NiftiTransform;
  geometry: NiftiGeometry;
  source: string;
}

function isGzip(b: Uint8Array): boolean {
  return b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b;
}

function toArrayBuffer(b: Uint8Array): ArrayBuffer {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b.buffer;
  // (a Node Buffer's slice() is a view into a shared pool, so copy explicitly)
  const copy = new Uint8Array(b.byteLength);
  copy.set(b);
  return copy.buffer;
}

// ---------------------------------------------------------------------------------------------
// Geometry

type Mat3 = number[][];

/** NIfTI quaternion (b, c, d) + qfac -> 3x3 rotation (with qfac applied to the third column). */
function quaternToRotation(b: number, c: number, d: number, qfac: number): Mat3 {
  let a = 1 - (b * b + c * c + d * d);
  if (a < 1e-7) {
    // nifti1_io: a is 0 and (b, c, d) renormalized
    const s = 1 / Math.sqrt(b * b + c * c + d * d);
    b *= s;
    c *= s;
    d *= s;
    a = 0;
  } else {
    a = Math.sqrt(a);
  }
  const q = qfac < 0 ? -1 : 1;
  return [
    [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), q * 2 * (b * d + a * c)],
    [2 * (b * c + a * d), a * a + c * c - b * b - d * d, q * 2 * (c * d - a * b)],
    [2 * (b * d - a * c), 2 * (c * d + a * b), q * (a * a + d * d - c * c - b * b)],
  ];
}

/** 3x3 rotation (columns orthonormal, det +1) -> quaternion (b, c, d) with a >= 0 (nifti1_io's method). */
function rotationToQuatern(r: Mat3): [number, number, number] {
  const [[r11, r12, r13], [r21, r22, r23], [r31, r32, r33]] = r;
  let a = r11 + r22 + r33 + 1;
  let b: number;
  let c: number;
  let d: number;
  if (a > 0.5) {
    a = 0.5 * Math.sqrt(a);
    b = (0.25 * (r32 - r23)) / a;
    c = (0.25 * (r13 - r31)) / a;
    d = (0.25 * (r21 - r12)) / a;
  } else {
    const xd = 1 + r11 - (r22 + r33);
    const yd = 1 + r22 - (r11 + r33);
    const zd = 1 + r33 - (r11 + r22);
    if (xd > 1) {
      b = 0.5 * Math.sqrt(xd);
      c = (0.25 * (r12 + r21)) / b;
      d = (0.25 * (r13 + r31)) / b;
      a = (0.25 * (r32 - r23)) / b;
    } else if (yd > 1) {
      c = 0.5 * Math.sqrt(yd);
      b = (0.25 * (r12 + r21)) / c;
      d = (0.25 * (r23 + r32)) / c;
      a = (0.25 * (r13 - r31)) / c;
    } else {
      d = 0.5 * Math.sqrt(zd);
      b = (0.25 * (r13 + r31)) / d;
      c = (0.25 * (r23 + r32)) / d;
      a = (0.25 * (r21 - r12)) / d;
    }
    if (a < 0) {
      b = -b;
      c = -c;
      d = -d;
    }
  }
  return [b, c, d];
}

function det3(m: Mat3): number {
  return (
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
    m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
    m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
  );
}

/** RAS affine (3x4) in use for this header, as ITK/SimpleITK would choose it (see module comment). */
export function affineOf(t: NiftiTransform): number[][] {
  const [dx, dy, dz] = [t.pixdim[1] || 1, t.pixdim[2] || 1, t.pixdim[3] || 1];
  const sformUsable = () => {
    if (t.sformCode <= 0) return false;
    const cols = [0, 1, 2].map((j) => [t.srow[0][j], t.srow[1][j], t.srow[2][j]]);
    const norms = cols.map((c) => Math.hypot(...c));
    if (norms.some((n) => !(n > 0))) return false;
    for (let i = 0; i < 3; i++)
      for (let j = i + 1; j < 3; j++) {
        const dot = cols[i].reduce((s, v, k) => s + v * cols[j][k], 0) / (norms[i] * norms[j]);
        if (Math.abs(dot) > 1e-4) return false;
      }
    return true;
  };
  if (sformUsable()) return t.srow.map((r) => r.slice(0, 4));
  if (t.qformCode > 0) {
    const r = quaternToRotation(t.quatern[0], t.quatern[1], t.quatern[2], t.pixdim[0]);
    return [0, 1, 2].map((i) => [r[i][0] * dx, r[i][1] * dy, r[i][2] * dz, t.qoffset[i]]);
  }
  if (t.sformCode > 0) return t.srow.map((r) => r.slice(0, 4));
  return [
    [dx, 0, 0, 0],
    [0, dy, 0, 0],
    [0, 0, dz, 0],
  ];
}

/** SimpleITK-style geometry (LPS) from a header's transform. */
export function geometryOf(t: NiftiTransform): NiftiGeometry {
  const aff = affineOf(t);
  const spacing: [number, number, number] = [Math.abs(t.pixdim[1]) || 1, Math.abs(t.pixdim[2]) || 1, Math.abs(t.pixdim[3]) || 1];
  const direction: number[] = [];
  for (let i = 0; i < 3; i++) {
    const flip = i < 2 ? -1 : 1; // RAS -> LPS
    for (let j = 0; j < 3; j++) {
      const norm = Math.hypot(aff[0][j], aff[1][j], aff[2][j]) || 1;
      direction.push((flip * aff[i][j]) / norm + 0); // + 0 turns -0 into 0
    }
  }
  const origin: [number, number, number] = [-aff[0][3] + 0, -aff[1][3] + 0, aff[2][3] + 0];
  return { spacing, origin, direction };
}

/** Header transform fields (qform and sform, both set, code 1 = scanner) for a SimpleITK-style geometry. */
export function transformOf(g: NiftiGeometry): NiftiTransform {
  const [sx, sy, sz] = g.spacing;
  if (![sx, sy, sz].every((s) => s > 0 && Number.isFinite(s))) throw new Error(`invalid spacing (${g.spacing.join(', ')})`);
  if (g.direction.length !== 9) throw new Error(`direction must have 9 values, got ${g.direction.length}`);
  // RAS rotation: flip the first two rows of the LPS direction
  const r: Mat3 = [0, 1, 2].map((i) => [0, 1, 2].map((j) => (i < 2 ? -1 : 1) * g.direction[i * 3 + j]));
  let qfac = 1;
  if (det3(r) < 0) {
    qfac = -1;
    for (let i = 0; i < 3; i++) r[i][2] = -r[i][2];
  }
  const quatern = rotationToQuatern(r);
  const offset: [number, number, number] = [-g.origin[0] + 0, -g.origin[1] + 0, g.origin[2] + 0];
  const srow = [0, 1, 2].map((i) => [
    (i < 2 ? -1 : 1) * g.direction[i * 3] * sx + 0,
    (i < 2 ? -1 : 1) * g.direction[i * 3 + 1] * sy + 0,
    (i < 2 ? -1 : 1) * g.direction[i * 3 + 2] * sz + 0,
    offset[i],
  ]) as [number[], number[], number[]];
  return {
    pixdim: [qfac, sx, sy, sz, 0, 0, 0, 0],
    qformCode: 1,
    sformCode: 1,
    quatern,
    qoffset: offset,
    srow,
    xyztUnits: 2, // mm
  };
}

// ---------------------------------------------------------------------------------------------
// Reading

/** Parse a NIfTI-1 or NIfTI-2 single file (.nii bytes, gzipped or not). `source` names it in errors. */
export function parseNifti(fileBytes: Uint8Array, source: string): NiftiVolume {
  let bytes = fileBytes;
  if (isGzip(bytes)) {
    try {
      bytes = gunzipSync(bytes);
    } catch (err) {
      throw new Error(`${source}: corrupt gzip data (${(err as Error).message})`);
    }
  }
  const buf = toArrayBuffer(bytes);
  if (bytes.length >= 348) {
    const magic = String.fromCharCode(bytes[344], bytes[345], bytes[346]);
    if (magic === 'ni1') throw new Error(`${source}: a NIfTI .hdr/.img pair; only single-file .nii / .nii.gz is supported`);
  }
  if (!nifti.isNIFTI(buf)) {
    throw new Error(
      bytes.length < 348
        ? `${source}: not a NIfTI file (only ${bytes.length} bytes, a header needs 348)`
        : `${source}: not a NIfTI file (no n+1 / n+2 magic in the header)`,
    );
  }
  let header: nifti.NIFTI1 | nifti.NIFTI2;
  try {
    header = nifti.readHeader(buf);
  } catch (err) {
    throw new Error(`${source}: unreadable NIfTI header (${(err as Error).message})`);
  }
  const isV2 = header instanceof nifti.NIFTI2;
  const dims = header.dims.map(Number);
  const ndim = dims[0];
  if (!(ndim >= 1 && ndim <= 7)) throw new Error(`${source}: invalid dim[0] = ${ndim}`);
  const extent = (i: number) => (i <= ndim ? Math.max(1, dims[i]) : 1);
  for (let i = 4; i <= ndim; i++) {
    if (extent(i) > 1) {
      throw new Error(`${source}: a ${ndim}D image with dim[${i}] = ${dims[i]}; only single 3D volumes (or 2D images) are supported`);
    }
  }
  const shape: [number, number, number] = [extent(3), extent(2), extent(1)];
  const dtype = dtypeOfCode(header.datatypeCode);
  if (!dtype) {
    const name = CODE_NAMES[header.datatypeCode] ?? `code ${header.datatypeCode}`;
    throw new Error(`${source}: unsupported NIfTI data type ${name}`);
  }
  const info = DTYPES[dtype];
  const n = shape[0] * shape[1] * shape[2];
  const offset = Number(header.vox_offset);
  const need = n * info.bytes;
  if (offset + need > bytes.length) {
    throw new Error(
      `${source}: truncated: ${need} bytes of voxel data expected from offset ${offset}, file has ${Math.max(0, bytes.length - offset)}`,
    );
  }
  const data = info.make(n);
  const raw = new Uint8Array(data.buffer);
  raw.set(bytes.subarray(offset, offset + need));
  if (!header.littleEndian && info.bytes > 1) {
    for (let i = 0; i < raw.length; i += info.bytes) raw.subarray(i, i + info.bytes).reverse();
  }

  // transform fields, read raw (srow is not kept by the header object when the qform is in use)
  const view = new DataView(buf);
  const le = header.littleEndian;
  const srowAt = (base: number, size: 4 | 8) =>
    [0, 1, 2, 3].map((k) => (size === 4 ? view.getFloat32(base + 4 * k, le) : view.getFloat64(base + 8 * k, le)));
  const srow: [number[], number[], number[]] = isV2
    ? [srowAt(400, 8), srowAt(432, 8), srowAt(464, 8)]
    : [srowAt(280, 4), srowAt(296, 4), srowAt(312, 4)];
  const pixdim = header.pixDims.map(Number);
  while (pixdim.length < 8) pixdim.push(0);
  const transform: NiftiTransform = {
    pixdim,
    qformCode: header.qform_code,
    sformCode: header.sform_code,
    quatern: [header.quatern_b, header.quatern_c, header.quatern_d],
    qoffset: [header.qoffset_x, header.qoffset_y, header.qoffset_z],
    srow,
    xyztUnits: header.xyzt_units,
  };
  // spatial units: convert meters / microns to mm for the geometry (the header itself is kept)
  const unit = header.xyzt_units & 0x07;
  const toMm = unit === 1 ? 1000 : unit === 3 ? 0.001 : 1;
  const g = geometryOf(transform);
  const geometry: NiftiGeometry =
    toMm === 1
      ? g
      : {
          spacing: g.spacing.map((s) => s * toMm) as [number, number, number],
          origin: g.origin.map((o) => o * toMm) as [number, number, number],
          direction: g.direction,
        };
  return {
    data,
    shape,
    dtype,
    sclSlope: header.scl_slope,
    sclInter: header.scl_inter,
    transform,
    geometry,
    source,
  };
}

export function readNifti(path: string): NiftiVolume {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return parseNifti(bytes, path);
}

/** Voxel values with scl_slope / scl_inter applied (the stored array itself when they are identity). */
export function scaledData(v: NiftiVolume): NiftiTypedArray {
  const slope = v.sclSlope;
  const inter = v.sclInter;
  if (!Number.isFinite(slope) || slope === 0 || (slope === 1 && (inter === 0 || !Number.isFinite(inter)))) return v.data;
  const out = v.dtype === 'float64' ? new Float64Array(v.data.length) : new Float32Array(v.data.length);
  const b = Number.isFinite(inter) ? inter : 0;
  for (let i = 0; i < out.length; i++) out[i] = v.data[i] * slope + b;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface EncodeOptions {
  /** copy the geometry of this volume's header */
  like?: NiftiVolume;
  /** or build it from a SimpleITK-style geometry */
  geometry?: NiftiGeometry;
  /** gzip the result (.nii.gz) */
  gzip?: boolean;
  description?: string;
}

/** Encode a (D, H, W) volume as a single-file NIfTI-1 (little-endian, vox_offset 352). */
export function encodeNifti(data: NiftiTypedArray, shape: readonly number[], opts: EncodeOptions = {}): Uint8Array {
  if (shape.length !== 3 && shape.length !== 2) throw new Error(`NIfTI output needs a (D, H, W) or (H, W) shape, got (${shape.join(', ')})`);
  const [D, H, W] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  if (D * H * W !== data.length) throw new Error(`NIfTI output: ${data.length} values do not fill shape (${shape.join(', ')})`);
  if (opts.like) {
    const s = opts.like.shape;
    if (s[0] !== D || s[1] !== H || s[2] !== W) {
      throw new Error(`NIfTI output shape (${D}, ${H}, ${W}) differs from the reference image ${opts.like.source} (${s.join(', ')})`);
    }
  }
  const t: NiftiTransform = opts.like
    ? opts.like.transform
    : opts.geometry
      ? transformOf(opts.geometry)
      : transformOf({ spacing: [1, 1, 1], origin: [0, 0, 0], direction: [1, 0, 0, 0, 1, 0, 0, 0, 1] });
  const dtype = dtypeOfArray(data);
  const info = DTYPES[dtype];
  const out = new Uint8Array(352 + data.length * info.bytes);
  const v = new DataView(out.buffer);
  const le = true;
  v.setInt32(0, 348, le);
  out[38] = 'r'.charCodeAt(0);
  const dim = [shape.length === 2 ? 2 : 3, W, H, D, 1, 1, 1, 1];
  dim.forEach((x, i) => v.setInt16(40 + 2 * i, x, le));
  v.setInt16(70, info.code, le);
  v.setInt16(72, info.bytes * 8, le);
  const pixdim = t.pixdim.slice(0, 8);
  while (pixdim.length < 8) pixdim.push(0);
  if (pixdim[0] !== -1) pixdim[0] = 1;
  pixdim.forEach((x, i) => v.setFloat32(76 + 4 * i, x, le));
  v.setFloat32(108, 352, le);
  v.setFloat32(112, 1, le); // scl_slope
  v.setFloat32(116, 0, le); // scl_inter
  out[123] = t.xyztUnits & 0xff;
  let cmin = Infinity;
  let cmax = -Infinity;
  for (let i = 0; i < data.length; i++) {
    if (data[i] < cmin) cmin = data[i];
    if (data[i] > cmax) cmax = data[i];
  }
  if (data.length && Number.isFinite(cmin) && Number.isFinite(cmax)) {
    v.setFloat32(124, cmax, le);
    v.setFloat32(128, cmin, le);
  }
  const descrip = (opts.description ?? 'medtune').slice(0, 79);
  for (let i = 0; i < descrip.length; i++) out[148 + i] = descrip.charCodeAt(i) & 0x7f;
  v.setInt16(252, t.qformCode, le);
  v.setInt16(254, t.sformCode, le);
  t.quatern.forEach((x, i) => v.setFloat32(256 + 4 * i, x, le));
  t.qoffset.forEach((x, i) => v.setFloat32(268 + 4 * i, x, le));
  t.srow.forEach((row, r) => row.forEach((x, k) => v.setFloat32(280 + 16 * r + 4 * k, x, le)));
  out.set([0x6e, 0x2b, 0x31, 0x00], 344); // "n+1\0"
  // bytes 348..351: no extension
  const body = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (info.bytes === 1 || isLittleEndianHost()) out.set(body, 352);
  else for (let i = 0; i < data.length; i++) writeLe(v, 352 + i * info.bytes, dtype, data[i]);
  return opts.gzip ? gzipSync(out, { level: 6 }) : out;
}

function isLittleEndianHost(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}

function writeLe(v: DataView, at: number, dtype: NiftiDtype, x: number): void {
  switch (dtype) {
    case 'int16':
      return v.setInt16(at, x, true);
    case 'uint16':
      return v.setUint16(at, x, true);
    case 'int32':
      return v.setInt32(at, x, true);
    case 'uint32':
      return v.setUint32(at, x, true);
    case 'float32':
      return v.setFloat32(at, x, true);
    case 'float64':
      return v.setFloat64(at, x, true);
    default:
      v.setUint8(at, x);
  }
}

/** Write a NIfTI-1 file; gzipped when the path ends in .gz. */
export function writeNifti(path: string, data: NiftiTypedArray, shape: readonly number[], opts: Omit<EncodeOptions, 'gzip'> = {}): void {
  writeFileSync(path, encodeNifti(data, shape, { ...opts, gzip: path.endsWith('.gz') }));
}

export function isNiftiPath(path: string): boolean {
  return /\.nii(\.gz)?$/i.test(path);
}
