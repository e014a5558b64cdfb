import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'fflate';
import { afterAll, describe, expect, it } from 'vitest';
import {
  encodeNifti,
  geometryOf,
  parseNifti,
  readNifti,
  scaledData,
  writeNifti,
  type NiftiGeometry,
  type NiftiTypedArray,
} from '../src/data/nifti.js';

const dir = mkdtempSync(join(tmpdir(), 'medtune-nifti-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A hand-built NIfTI-1 header + data, written field by field (independent of encodeNifti). */
function handMade(opts: { littleEndian: boolean; dims?: number[]; datatype?: number; bitpix?: number; truncate?: number }): Uint8Array {
  const [W, H, D] = [4, 3, 2];
  const dims = opts.dims ?? [3, W, H, D, 1, 1, 1, 1];
  const le = opts.littleEndian;
  const out = new Uint8Array(352 + W * H * D * 2);
  const v = new DataView(out.buffer);
  v.setInt32(0, 348, le);
  dims.forEach((x, i) => v.setInt16(40 + 2 * i, x, le));
  v.setInt16(70, opts.datatype ?? 4, le); // int16
  v.setInt16(72, opts.bitpix ?? 16, le);
  [-1, 0.5, 0.75, 3, 0, 0, 0, 0].forEach((x, i) => v.setFloat32(76 + 4 * i, x, le)); // qfac -1
  v.setFloat32(108, 352, le);
  v.setFloat32(112, 2, le); // scl_slope
  v.setFloat32(116, 1, le); // scl_inter
  out[123] = 2; // mm
  v.setInt16(252, 1, le); // qform_code
  v.setInt16(254, 0, le); // sform_code
  // 90 degrees about z: a = cos 45, d = sin 45
  v.setFloat32(256, 0, le);
  v.setFloat32(260, 0, le);
  v.setFloat32(264, Math.SQRT1_2, le);
  [1, 2, 3].forEach((x, i) => v.setFloat32(268 + 4 * i, x, le));
  out.set([0x6e, 0x2b, 0x31, 0], 344);
  // voxel (x, y, z) = x + 10 y + 100 z, x fastest
  let i = 0;
  for (let z = 0; z < D; z++) for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) v.setInt16(352 + 2 * i++, x + 10 * y + 100 * z, le);
  return opts.truncate ? out.subarray(0, out.length - opts.truncate) : out;
}

describe('NIfTI reading', () => {
  it.each([true, false])('hand-made header (little endian: %s): axes, spacing, geometry, scaling', (littleEndian) => {
    const vol = parseNifti(handMade({ littleEndian }), 'hand.nii');
    expect(vol.shape).toEqual([2, 3, 4]); // (D, H, W) = (z, y, x)
    expect(vol.dtype).toBe('int16');
    // row-major (z, y, x) index
    for (let z = 0; z < 2; z++) for (let y = 0; y < 3; y++) for (let x = 0; x < 4; x++) expect(vol.data[(z * 3 + y) * 4 + x]).toBe(x + 10 * y + 100 * z);
    expect(vol.geometry.spacing).toEqual([0.5, 0.75, 3]); // (x, y, z)
    // qform R = [[0,-1,0],[1,0,0],[0,0,1]], qfac -1 negates column 3; LPS flips rows 1 and 2
    const dir = vol.geometry.direction.map((d) => Math.round(d * 1e6) / 1e6 + 0);
    expect(dir).toEqual([0, 1, 0, -1, 0, 0, 0, 0, -1]);
    expect(vol.geometry.origin).toEqual([-1, -2, 3]);
    expect(vol.sclSlope).toBe(2);
    expect(vol.sclInter).toBe(1);
    const scaled = scaledData(vol);
    expect(scaled[(1 * 3 + 2) * 4 + 3]).toBe(2 * 123 + 1);
  });

  it('gzip is detected from the bytes', () => {
    const raw = handMade({ littleEndian: true });
    const a = parseNifti(raw, 'a.nii');
    const b = parseNifti(gzipSync(raw), 'a.nii.gz');
    expect(Array.from(b.data)).toEqual(Array.from(a.data));
  });

  it('a 4D header with one volume is a 3D volume; more volumes are refused', () => {
    expect(parseNifti(handMade({ littleEndian: true, dims: [4, 4, 3, 2, 1, 1, 1, 1] }), 'x.nii').shape).toEqual([2, 3, 4]);
    expect(() => parseNifti(handMade({ littleEndian: true, dims: [4, 4, 3, 1, 2, 1, 1, 1] }), 'x4d.nii')).toThrow(
      /x4d\.nii: a 4D image with dim\[4\] = 2/,
    );
  });

  it('corrupt and unsupported files give clear errors naming the file', () => {
    const garbage = new Uint8Array(600).map((_, i) => (i * 37) & 0xff);
    expect(() => parseNifti(garbage, 'garbage.nii')).toThrow(/garbage\.nii: not a NIfTI file/);
    expect(() => parseNifti(new Uint8Array(10), 'tiny.nii')).toThrow(/tiny\.nii: not a NIfTI file \(only 10 bytes/);
    expect(() => parseNifti(handMade({ littleEndian: true, truncate: 5 }), 'cut.nii')).toThrow(/cut\.nii: truncated: 48 bytes of voxel data expected/);
    const badGz = new Uint8Array([0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(() => parseNifti(badGz, 'bad.nii.gz')).toThrow(/bad\.nii\.gz: corrupt gzip data/);
    const truncatedGz = gzipSync(handMade({ littleEndian: true })).subarray(0, 40);
    expect(() => parseNifti(truncatedGz, 'cut.nii.gz')).toThrow(/cut\.nii\.gz/);
    expect(() => parseNifti(handMade({ littleEndian: true, datatype: 128, bitpix: 24 }), 'rgb.nii')).toThrow(
      /rgb\.nii: unsupported NIfTI data type rgb24/,
    );
    const pair = handMade({ littleEndian: true });
    pair.set([0x6e, 0x69, 0x31, 0], 344); // "ni1"
    expect(() => parseNifti(pair, 'pair.hdr')).toThrow(/pair\.hdr: a NIfTI \.hdr\/\.img pair/);
    expect(() => readNifti(join(dir, 'missing.nii.gz'))).toThrow(/missing\.nii\.gz: cannot read \(ENOENT\)/);
    const path = join(dir, 'junk.nii');
    writeFileSync(path, garbage);
    expect(() => readNifti(path)).toThrow(new RegExp(`${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not a NIfTI file`));
  });
});

describe('NIfTI writing', () => {
  const geometry: NiftiGeometry = {
    spacing: [0.8, 0.9, 2.5],
    origin: [-10.5, 20.25, 33],
    // a rotation about z by 0.3 rad with a flipped z axis (det -1), in LPS
    direction: [-Math.cos(0.3), Math.sin(0.3), 0, -Math.sin(0.3), -Math.cos(0.3), 0, 0, 0, -1],
  };
  const shape = [3, 5, 7];
  const n = 3 * 5 * 7;
  const arrays: Record<string, NiftiTypedArray> = {
    uint8: new Uint8Array(n).map((_, i) => (i * 7) % 256),
    int16: new Int16Array(n).map((_, i) => i * 101 - 3000),
    uint16: new Uint16Array(n).map((_, i) => i * 601),
    int32: new Int32Array(n).map((_, i) => i * 1_000_003 - 7),
    float32: new Float32Array(n).map((_, i) => Math.sin(i) * 1e3),
    float64: new Float64Array(n).map((_, i) => Math.cos(i) / 3),
  };

  it.each(Object.keys(arrays))('round trip %s: bitwise data and geometry', (name) => {
    const data = arrays[name];
    for (const gzip of [false, true]) {
      const bytes = encodeNifti(data, shape, { geometry, gzip });
      expect(bytes[0] === 0x1f && bytes[1] === 0x8b).toBe(gzip);
      const back = parseNifti(bytes, 'rt.nii');
      expect(back.dtype).toBe(name);
      expect(back.shape).toEqual(shape);
      expect(Buffer.from(back.data.buffer).equals(Buffer.from(data.buffer))).toBe(true);
      back.geometry.spacing.forEach((s, i) => expect(s).toBeCloseTo(geometry.spacing[i], 6));
      back.geometry.origin.forEach((s, i) => expect(s).toBeCloseTo(geometry.origin[i], 4));
      back.geometry.direction.forEach((s, i) => expect(s).toBeCloseTo(geometry.direction[i], 6));
      // the qform alone gives the same geometry as the sform
      expect(back.transform.qformCode).toBe(1);
      const fromQform = geometryOf({ ...back.transform, sformCode: 0 });
      fromQform.origin.forEach((s, i) => expect(s).toBeCloseTo(geometry.origin[i], 4));
      fromQform.direction.forEach((s, i) => expect(s).toBeCloseTo(geometry.direction[i], 6));
    }
  });

  it('labels written like an image keep its header geometry exactly (files, .nii and .nii.gz)', () => {
    const imagePath = join(dir, 'image.nii.gz');
    writeFileSync(imagePath, handMade({ littleEndian: false })); // big-endian, qform only, qfac -1
    const image = readNifti(imagePath);
    const labels = new Uint8Array(image.data.length).map((_, i) => i % 3);
    for (const name of ['labels.nii.gz', 'labels.nii']) {
      const out = join(dir, name);
      writeNifti(out, labels, image.shape, { like: image });
      const raw = readFileSync(out);
      expect(raw[0] === 0x1f && raw[1] === 0x8b).toBe(name.endsWith('.gz'));
      const back = readNifti(out);
      expect(back.shape).toEqual(image.shape);
      expect(back.dtype).toBe('uint8');
      expect(Array.from(back.data)).toEqual(Array.from(labels));
      expect(back.transform).toEqual(image.transform);
      expect(back.geometry).toEqual(image.geometry);
      expect(back.sclSlope).toBe(1);
      expect(back.sclInter).toBe(0);
    }
    expect(() => encodeNifti(new Uint8Array(5), [5], {})).toThrow(/\(D, H, W\)/);
    expect(() => encodeNifti(new Uint8Array(5), [2, 3, 4])).toThrow(/5 values do not fill shape/);
    expect(() => encodeNifti(new Uint8Array(6), [1, 2, 3], { like: image })).toThrow(/differs from the reference image/);
  });

  it('2D images come back as one slice', () => {
    const img = new Uint8Array(12).map((_, i) => i);
    const back = parseNifti(encodeNifti(img, [3, 4]), '2d.nii');
    expect(back.shape).toEqual([1, 3, 4]);
    expect(Array.from(back.data)).toEqual(Array.from(img));
  });
});
