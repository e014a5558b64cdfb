import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump } from 'npyjs';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeNpz, type TypedArray } from '../src/io/npz.js';
import { isNpyFolder, loadNpyPair, readNpyHeader } from '../src/data/npy-folder.js';
import { SliceStore, buildSampleIndex, resolveDataEntries, sampleSource } from '../src/data/sampling.js';
import { loadNpzVolume } from '../src/data/volume.js';

const CT = join(import.meta.dirname, 'fixtures/ct-lesion/CT_Lesion_000001_02_01_008-023.npz');
const tmp = mkdtempSync(join(tmpdir(), 'medtune-volume-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function writeNpz(name: string, arrays: Record<string, { data: TypedArray; shape: number[] }>, compress = true): string {
  const path = join(tmp, name);
  writeFileSync(path, encodeNpz(arrays, compress));
  return path;
}

const u8 = (shape: number[], fill: (i: number) => number = () => 0) => {
  const n = shape.reduce((a, b) => a * b, 1);
  return { data: Uint8Array.from({ length: n }, (_, i) => fill(i)), shape };
};

describe('real CT lesion volume', () => {
  it('loads: shapes, spacing, labels', () => {
    const v = loadNpzVolume(CT);
    expect([v.depth, v.height, v.width, v.channels]).toEqual([16, 512, 512, 1]);
    expect(v.imgs.length).toBe(16 * 512 * 512);
    expect(v.gts.length).toBe(16 * 512 * 512);
    expect(v.spacing?.[2]).toBe(5);
    expect(v.spacing?.[0]).toBeCloseTo(0.314453, 5);
    expect(new Set(v.gts)).toEqual(new Set([0, 1]));
  });

  it('indexes the 7 slices that hold the lesion, with its bounding boxes', () => {
    const store = new SliceStore(resolveDataEntries(CT));
    const index = buildSampleIndex(store);
    expect(index.length).toBe(7);
    expect(Array.from(index.slice)).toEqual([5, 6, 7, 8, 9, 10, 11]);
    expect(Array.from(new Set(index.label))).toEqual([1]);
    expect(sampleSource(index, 0)).toBe('CT_Lesion_000001_02_01_008-023.npz#slice=5,label=1');
    // bounding box of slice 9 from a direct scan of the label map
    const v = loadNpzVolume(CT);
    let [x0, y0, x1, y1] = [512, 512, -1, -1];
    for (let i = 0; i < 512 * 512; i++) {
      if (!v.gts[9 * 512 * 512 + i]) continue;
      const x = i % 512;
      const y = Math.floor(i / 512);
      [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
    }
    const box = store.slice(0, 9).labelBoxes.get(1)!;
    expect(box).toEqual([x0, y0, x1, y1]);
    expect(x1 - x0 + 1).toBe(59); // 59 x 53 pixels, as measured when the fixture was chosen
    expect(y1 - y0 + 1).toBe(53);
  });

  it('reads stored (uncompressed) npz the same as deflated', () => {
    const v = loadNpzVolume(CT);
    const path = writeNpz('stored.npz', { imgs: { data: v.imgs, shape: [16, 512, 512] }, gts: { data: v.gts, shape: [16, 512, 512] } }, false);
    const w = loadNpzVolume(path);
    expect(Buffer.compare(w.imgs, v.imgs)).toBe(0);
    expect(Buffer.compare(w.gts as Uint8Array, v.gts as Uint8Array)).toBe(0);
    expect(w.spacing).toBeUndefined();
  });
});

describe('shapes', () => {
  it('2D gray (H,W), 2D RGB (H,W,3) and 3D RGB (D,H,W,3)', () => {
    const lab = (shape: number[]) => u8(shape, (i) => (i === 5 ? 2 : 0));
    const gray = loadNpzVolume(writeNpz('gray2d.npz', { imgs: u8([4, 6]), gts: lab([4, 6]) }));
    expect([gray.depth, gray.height, gray.width, gray.channels]).toEqual([1, 4, 6, 1]);
    const rgb = loadNpzVolume(writeNpz('rgb2d.npz', { imgs: u8([4, 6, 3]), gts: lab([4, 6]) }));
    expect([rgb.depth, rgb.height, rgb.width, rgb.channels]).toEqual([1, 4, 6, 3]);
    const rgb3 = loadNpzVolume(writeNpz('rgb3d.npz', { imgs: u8([2, 4, 6, 3]), gts: lab([2, 4, 6]) }));
    expect([rgb3.depth, rgb3.height, rgb3.width, rgb3.channels]).toEqual([2, 4, 6, 3]);
  });

  it('several labels on one slice give one sample each', () => {
    const gts = u8([3, 8, 8], (i) => (i === 64 + 3 ? 1 : i === 64 + 40 ? 4 : i === 128 + 9 ? 4 : 0));
    const path = writeNpz('multi.npz', { imgs: u8([3, 8, 8]), gts });
    const index = buildSampleIndex(new SliceStore(resolveDataEntries(path)));
    const got = Array.from({ length: index.length }, (_, i) => sampleSource(index, i));
    expect(got).toEqual(['multi.npz#slice=1,label=1', 'multi.npz#slice=1,label=4', 'multi.npz#slice=2,label=4']);
  });
});

describe('bad input: clear errors naming the file', () => {
  const good = () => ({ imgs: u8([2, 4, 4]), gts: u8([2, 4, 4], (i) => (i === 3 ? 1 : 0)) });
  const cases: [string, () => string, RegExp][] = [
    ['missing file', () => join(tmp, 'nope.npz'), /nope\.npz: file not found/],
    ['npz without imgs', () => writeNpz('noimgs.npz', { gts: good().gts }), /noimgs\.npz: npz has no 'imgs' array \(found: gts\)/],
    ['npz without gts', () => writeNpz('nogts.npz', { imgs: good().imgs }), /nogts\.npz: npz has no 'gts' array \(found: imgs\)/],
    [
      'mismatched shapes',
      () => writeNpz('mismatch.npz', { imgs: u8([2, 4, 4]), gts: u8([2, 4, 5], () => 1) }),
      /mismatch\.npz: imgs shape \(2,4,4\) does not match gts shape \(2,4,5\)/,
    ],
    ['empty label volume', () => writeNpz('empty.npz', { imgs: u8([2, 4, 4]), gts: u8([2, 4, 4]) }), /empty\.npz: empty label volume/],
    [
      'corrupt zip',
      () => {
        const p = join(tmp, 'corrupt.npz');
        writeFileSync(p, Buffer.from('PK\x03\x04 this is not really a zip file'));
        return p;
      },
      /corrupt\.npz: not a readable npz \(zip\) file/,
    ],
    [
      'truncated zip',
      () => {
        const p = join(tmp, 'truncated.npz');
        writeFileSync(p, readFileSync(CT).subarray(0, 500_000));
        return p;
      },
      /truncated\.npz: not a readable npz \(zip\) file/,
    ],
    [
      'float images',
      () => writeNpz('float.npz', { imgs: { data: new Float32Array(32), shape: [2, 4, 4] }, gts: good().gts }),
      /float\.npz: imgs must be uint8 \(0\.\.255\), got dtype 'f4'/,
    ],
    [
      'negative labels',
      () => writeNpz('neg.npz', { imgs: good().imgs, gts: { data: Int16Array.from({ length: 32 }, (_, i) => (i === 1 ? -1 : 0)), shape: [2, 4, 4] } }),
      /neg\.npz:gts: label map has a negative label \(-1\)/,
    ],
  ];

  for (const [name, make, message] of cases) {
    it(name, () => {
      const path = make();
      expect(() => loadNpzVolume(path)).toThrow(message);
    });
  }

  it('the index reports every bad file at once, before training', () => {
    const ok = writeNpz('ok.npz', good());
    writeNpz('empty.npz', { imgs: u8([2, 4, 4]), gts: u8([2, 4, 4]) });
    writeNpz('mismatch.npz', { imgs: u8([2, 4, 4]), gts: u8([2, 4, 5], () => 1) });
    const files = [ok, ...['nope.npz', 'empty.npz', 'mismatch.npz'].map((f) => join(tmp, f))];
    expect(() => resolveDataEntries(files)).toThrow(/nope\.npz: file not found/);
    // a file that disappears between listing and indexing
    const entries = files.map((path) => ({ kind: 'npz' as const, path }));
    let err: Error | undefined;
    try {
      buildSampleIndex(new SliceStore(entries));
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).toMatch(/^3 bad data file\(s\):/);
    expect(err?.message).toMatch(/nope\.npz: file not found/);
    expect(err?.message).toMatch(/empty\.npz: empty label volume/);
    expect(err?.message).toMatch(/mismatch\.npz: imgs shape/);
    const warnings: string[] = [];
    const index = buildSampleIndex(new SliceStore(entries), { onBadFile: 'warn', log: (m) => warnings.push(m) });
    expect(index.length).toBe(1);
    expect(warnings[0]).toMatch(/3 bad data file\(s\)[\s\S]*left out/);
  });

  it('a directory without npz files, or an unknown file type', () => {
    const dir = join(tmp, 'nothing');
    mkdirSync(dir, { recursive: true });
    expect(() => resolveDataEntries(dir)).toThrow(/nothing: directory has no \.npz files/);
    const txt = join(tmp, 'x.txt');
    writeFileSync(txt, 'x');
    expect(() => resolveDataEntries(txt)).toThrow(/x\.txt: not an \.npz file or a data directory/);
  });
});

describe('npy folder (MedSAM format)', () => {
  const dir = join(tmp, 'npy');
  const npy = (data: TypedArray, shape: number[]) => new Uint8Array(dump(data, shape));
  mkdirSync(join(dir, 'imgs'), { recursive: true });
  mkdirSync(join(dir, 'gts'), { recursive: true });
  // 16x16x3 float64 image in [0,1]; 4x4 label map, label 2 at (row 1, col 2)
  const img = Float64Array.from({ length: 16 * 16 * 3 }, (_, i) => (i % 3) / 2);
  const gt = Uint8Array.from({ length: 16 }, (_, i) => (i === 6 ? 2 : 0));
  writeFileSync(join(dir, 'imgs', 'case_a.npy'), npy(img, [16, 16, 3]));
  writeFileSync(join(dir, 'gts', 'case_a.npy'), npy(gt, [4, 4]));

  it('is recognized and loads image and label map at their own sizes', () => {
    expect(isNpyFolder(dir)).toBe(true);
    const entries = resolveDataEntries(dir);
    expect(entries).toEqual([{ kind: 'npy', path: join(dir, 'imgs', 'case_a.npy'), gtPath: join(dir, 'gts', 'case_a.npy') }]);
    expect(readNpyHeader(entries[0].path)).toEqual({ dtype: 'f8', shape: [16, 16, 3], fortranOrder: false });
    const pair = loadNpyPair(entries[0] as { kind: 'npy'; path: string; gtPath: string });
    expect([pair.height, pair.width, pair.channels, pair.labelHeight, pair.labelWidth]).toEqual([16, 16, 3, 4, 4]);
    expect(pair.image).toBeInstanceOf(Float32Array);
    const store = new SliceStore(entries);
    const index = buildSampleIndex(store);
    expect(index.length).toBe(1);
    expect(sampleSource(index, 0)).toBe('case_a.npy#label=2');
    expect(store.slice(0, 0).labelBoxes.get(2)).toEqual([2, 1, 2, 1]);
    expect(store.slice(0, 0).imageScale).toBe(1);
  });

  it('an image holding NaN is refused, naming the file', () => {
    const nanDir = join(tmp, 'npy-nan');
    mkdirSync(join(nanDir, 'imgs'), { recursive: true });
    mkdirSync(join(nanDir, 'gts'), { recursive: true });
    const withNaN = Float32Array.from(img);
    withNaN[7] = NaN;
    writeFileSync(join(nanDir, 'imgs', 'case_n.npy'), npy(withNaN, [16, 16, 3]));
    writeFileSync(join(nanDir, 'gts', 'case_n.npy'), npy(gt, [4, 4]));
    const path = join(nanDir, 'imgs', 'case_n.npy');
    expect(() => loadNpyPair({ kind: 'npy', path, gtPath: join(nanDir, 'gts', 'case_n.npy') })).toThrow(`${path}: the image holds NaN values (first at flat index 7)`);
  });

  it('a label file without its image, and a wrong image shape, are named', () => {
    const bad = join(tmp, 'npy-bad');
    mkdirSync(join(bad, 'imgs'), { recursive: true });
    mkdirSync(join(bad, 'gts'), { recursive: true });
    writeFileSync(join(bad, 'gts', 'lonely.npy'), npy(gt, [4, 4]));
    expect(() => resolveDataEntries(bad)).toThrow(/gts\/lonely\.npy: no matching image .*imgs\/lonely\.npy/);
    writeFileSync(join(bad, 'imgs', 'lonely.npy'), npy(new Float32Array(16 * 16 * 2), [16, 16, 2]));
    expect(() => buildSampleIndex(new SliceStore(resolveDataEntries(bad)))).toThrow(
      /imgs\/lonely\.npy: image shape \(16,16,2\) is not \(H,W,3\) or \(H,W\)/,
    );
  });
});
