import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { mapIntensities, percentileToUint8, percentiles, parseWindow, windowBounds, windowToUint8 } from '../src/data/intensity.js';
import { encodeNifti, type NiftiGeometry, type NiftiTypedArray } from '../src/data/nifti.js';
import { readNpz } from '../src/io/npz.js';
import { pairFiles, prepareDirectories } from '../src/data/prepare.js';

const root = mkdtempSync(join(tmpdir(), 'medtune-prepare-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const geometry: NiftiGeometry = {
  spacing: [0.75, 0.8, 2.5],
  origin: [-100.5, 80.25, -30],
  direction: [1, 0, 0, 0, -1, 0, 0, 0, 1],
};

function writeVolume(path: string, data: NiftiTypedArray, shape: number[], opts: { slope?: number; inter?: number; geo?: NiftiGeometry } = {}) {
  const bytes = encodeNifti(data, shape, { geometry: opts.geo ?? geometry });
  if (opts.slope !== undefined) {
    const v = new DataView(bytes.buffer, bytes.byteOffset);
    v.setFloat32(112, opts.slope, true);
    v.setFloat32(116, opts.inter ?? 0, true);
  }
  writeFileSync(path, bytes);
}

function dirs(name: string) {
  const images = join(root, name, 'images');
  const labels = join(root, name, 'labels');
  const out = join(root, name, 'out');
  mkdirSync(images, { recursive: true });
  mkdirSync(labels, { recursive: true });
  return { images, labels, out };
}

describe('intensity normalization', () => {
  it('CT windows: hand-computed values', () => {
    const hu = [-1000, -160, -159, 0, 40, 100, 240, 1000];
    // soft tissue: [-160, 240] -> trunc((x + 160) / 400 * 255)
    expect(Array.from(windowToUint8(hu, parseWindow('soft-tissue')))).toEqual([0, 0, 0, 102, 127, 165, 255, 255]);
    // lung, center -600 width 1500: [-1350, 150]
    expect(Array.from(windowToUint8([-1400, -1350, -600, 150, 151], parseWindow('-600,1500')))).toEqual([0, 0, 127, 255, 255]);
    expect(parseWindow('lung')).toEqual({ center: -600, width: 1500 });
    expect(parseWindow('bone')).toEqual({ center: 400, width: 1800 });
    expect(parseWindow('brain')).toEqual({ center: 40, width: 80 });
    expect(parseWindow('soft_tissue')).toEqual({ center: 40, width: 400 });
    // brain [0, 80]: 20 -> 63.75 -> 63
    expect(Array.from(windowToUint8([-5, 20, 80], parseWindow('brain')))).toEqual([0, 63, 255]);
    expect(() => parseWindow('wide')).toThrow(/CENTER,WIDTH/);
  });

  it('--window is CENTER,WIDTH on every command; the old WIDTH,LEVEL order is refused, showing the new one', () => {
    expect(parseWindow('40,400')).toEqual({ center: 40, width: 400 });
    expect(parseWindow(' -600 , 1500 ')).toEqual({ center: -600, width: 1500 });
    expect(parseWindow('0,1000')).toEqual({ center: 0, width: 1000 });
    // the labelled form takes any window, in either order
    expect(parseWindow('center=400,width=40')).toEqual({ center: 400, width: 40 });
    expect(parseWindow('w=1500, c=-600')).toEqual({ center: -600, width: 1500 });
    // every preset written the old way (width first) is refused, and the message gives the new order
    expect(() => parseWindow('400,40')).toThrow(/CENTER,WIDTH.*For width 400, level 40 write 40,400; for center 400, width 40 write center=400,width=40/);
    expect(() => parseWindow('1500,-600')).toThrow(/For width 1500, level -600 write -600,1500\.$/);
    expect(() => parseWindow('1800,400')).toThrow(/write 400,1800/);
    expect(() => parseWindow('80,40')).toThrow(/write 40,80/);
    expect(() => parseWindow('center=40,width=0')).toThrow(/width must be positive/);
    expect(() => parseWindow('c=40,c=400')).toThrow(/center= and width= once each/);
    // one apply: the [0, 1] form predict uses and the uint8 form prepare writes agree
    const hu = [-1000, -160, 0, 40, 239, 1000];
    const soft = parseWindow('soft-tissue');
    const unit = mapIntensities(hu, windowBounds(soft), new Float32Array(hu.length), 1);
    expect(Array.from(unit)).toEqual([0, 0, 0.4, 0.5, 0.9975, 1].map((v) => Math.fround(v)));
    expect(Array.from(windowToUint8(hu, soft))).toEqual([0, 0, 102, 127, 254, 255]);
  });

  it('percentiles follow numpy (linear)', () => {
    const v = Float64Array.from({ length: 1000 }, (_, i) => 1000 - i); // 1..1000, shuffled order
    expect(percentiles(v, [0.5, 99.5, 50, 0, 100])).toEqual([5.995, 995.005, 500.5, 1, 1000].map((x) => expect.closeTo(x, 10)));
    expect(percentiles(Float64Array.from([3, 1, 2]), [25])).toEqual([1.5]);
  });

  it('MR/PET: 0.5-99.5 percentile clipping of the positive voxels, zeros stay 0', () => {
    const values = new Float32Array(1200);
    for (let i = 0; i < 1000; i++) values[200 + i] = i + 1; // 200 zeros, then 1..1000
    const r = percentileToUint8(values);
    expect(r.low).toBeCloseTo(5.995, 10);
    expect(r.high).toBeCloseTo(995.005, 10);
    // reference numbers from numpy (the MedSAM preprocessing formula)
    expect(Array.from(r.data.subarray(0, 3))).toEqual([0, 0, 0]);
    expect(Array.from(r.data.subarray(200, 205))).toEqual([0, 0, 0, 0, 0]);
    expect(r.data[200 + 499]).toBe(127); // value 500
    expect(Array.from(r.data.subarray(1197))).toEqual([255, 255, 255]);
    expect(() => percentileToUint8(new Float32Array(5), 0.5, 99.5, 'empty.nii')).toThrow(/empty\.nii: no positive voxels/);
  });
});

describe('npx medtune prepare', () => {
  const shape = [4, 6, 5]; // (D, H, W)
  const n = 4 * 6 * 5;

  it('CT: window, geometry kept, labels preserved, nnU-Net names paired', async () => {
    const d = dirs('ct');
    // stored int16 with scl_slope 1, scl_inter -1024 (stored 1024 = 0 HU)
    const stored = new Int16Array(n).map((_, i) => 1024 + ((i * 37) % 800) - 400);
    writeVolume(join(d.images, 'case_a_0000.nii.gz'), stored, shape, { slope: 1, inter: -1024 });
    const label = new Uint8Array(n).map((_, i) => (i % 7 === 0 ? 1 : i % 11 === 0 ? 3 : 0));
    writeVolume(join(d.labels, 'case_a.nii.gz'), label, shape);
    const written = await prepareDirectories({ images: d.images, labels: d.labels, out: d.out, modality: 'CT', window: parseWindow('40,400') });
    expect(written).toEqual([join(d.out, 'case_a.npz')]);
    const npz = readNpz(written[0]);
    expect(npz.imgs.shape).toEqual(shape);
    expect(npz.imgs.dtype).toBe('u1');
    expect(npz.gts.shape).toEqual(shape);
    expect(npz.gts.dtype).toBe('u1');
    expect(Array.from(npz.gts.data as Uint8Array)).toEqual(Array.from(label));
    const hu = Array.from(stored, (s) => s - 1024);
    const expected = hu.map((x) => Math.trunc(((Math.min(240, Math.max(-160, x)) + 160) / 400) * 255));
    expect(Array.from(npz.imgs.data as Uint8Array)).toEqual(expected);
    // geometry: spacing (x, y, z), direction and origin as SimpleITK gives them
    expect(npz.spacing.dtype).toBe('f8');
    Array.from(npz.spacing.data as Float64Array).forEach((s, i) => expect(s).toBeCloseTo(geometry.spacing[i], 6));
    Array.from(npz.origin.data as Float64Array).forEach((s, i) => expect(s).toBeCloseTo(geometry.origin[i], 4));
    expect(Array.from(npz.direction.data as Float64Array)).toEqual(geometry.direction);
  });

  it('MR and PET: percentile clipping; --crop-to-labels moves the origin', async () => {
    for (const modality of ['MR', 'PET'] as const) {
      const d = dirs(`mr-${modality}`);
      const img = new Float32Array(n).map((_, i) => (i < 20 ? 0 : i * 3.5));
      writeVolume(join(d.images, 'vol.nii'), img, shape);
      const label = new Uint8Array(n);
      label[2 * 30 + 7] = 2; // slice 2 only
      writeVolume(join(d.labels, 'vol.nii'), label, shape);
      const [file] = await prepareDirectories({ images: d.images, labels: d.labels, out: d.out, modality });
      const npz = readNpz(file);
      expect(Array.from(npz.imgs.data as Uint8Array)).toEqual(Array.from(percentileToUint8(img).data));
      expect((npz.imgs.data as Uint8Array)[0]).toBe(0);
      expect((npz.imgs.data as Uint8Array)[n - 1]).toBe(255);

      const [cropped] = await prepareDirectories({
        images: d.images,
        labels: d.labels,
        out: join(d.out, 'crop'),
        modality,
        cropToLabels: true,
        margin: 1,
      });
      const c = readNpz(cropped);
      expect(c.imgs.shape).toEqual([3, 6, 5]); // slices 1..3
      expect(Array.from(c.imgs.data as Uint8Array)).toEqual(Array.from((npz.imgs.data as Uint8Array).subarray(30, 120)));
      expect((c.gts.data as Uint8Array)[30 + 7]).toBe(2);
      // z direction (0, 0, 1) in LPS, spacing 2.5: one slice up
      const o = Array.from(c.origin.data as Float64Array);
      expect(o[0]).toBeCloseTo(geometry.origin[0], 4);
      expect(o[1]).toBeCloseTo(geometry.origin[1], 4);
      expect(o[2]).toBeCloseTo(geometry.origin[2] + 2.5, 4);
    }
  });

  it('bad input: mismatched shapes, unpaired label, --window with MR, non-integer labels', async () => {
    const d = dirs('bad');
    writeVolume(join(d.images, 'x.nii.gz'), new Int16Array(n), shape);
    writeVolume(join(d.labels, 'x.nii.gz'), new Uint8Array(4 * 6 * 4), [4, 6, 4]);
    await expect(prepareDirectories({ images: d.images, labels: d.labels, out: d.out, modality: 'CT' })).rejects.toThrow(
      /labels\/x\.nii\.gz: label shape \(4, 6, 4\) differs from image .*images\/x\.nii\.gz \(4, 6, 5\)/,
    );
    writeVolume(join(d.labels, 'x.nii.gz'), new Float32Array(n).fill(1.5), shape);
    await expect(prepareDirectories({ images: d.images, labels: d.labels, out: d.out, modality: 'CT' })).rejects.toThrow(
      /x\.nii\.gz: label value 1\.5 at voxel 0 is not an integer/,
    );
    writeVolume(join(d.labels, 'x.nii.gz'), new Uint8Array(n), shape);
    await expect(
      prepareDirectories({ images: d.images, labels: d.labels, out: d.out, modality: 'MR', window: parseWindow('lung') }),
    ).rejects.toThrow(/--window applies to CT only/);
    writeVolume(join(d.labels, 'y.nii.gz'), new Uint8Array(n), shape);
    await expect(prepareDirectories({ images: d.images, labels: d.labels, out: d.out, modality: 'CT' })).rejects.toThrow(
      /y\.nii\.gz: no image for this label map/,
    );
    await expect(prepareDirectories({ images: join(d.images, 'nope'), labels: d.labels, out: d.out, modality: 'CT' })).rejects.toThrow(
      /images directory not found/,
    );
    writeFileSync(join(d.images, 'z.nii.gz'), 'not a nifti');
    writeVolume(join(d.labels, 'y.nii.gz'), new Uint8Array(n), shape);
    rmSync(join(d.labels, 'y.nii.gz'));
    writeVolume(join(d.labels, 'z.nii.gz'), new Uint8Array(n), shape);
    await expect(prepareDirectories({ images: d.images, labels: d.labels, out: d.out, modality: 'CT' })).rejects.toThrow(
      /images\/z\.nii\.gz: not a NIfTI file/,
    );
  });

  it('a Decathlon folder: label names written, missing cases skipped and counted, geometry and label values checked, nothing overwritten, shards', async () => {
    const dec = join(root, 'decathlon');
    mkdirSync(join(dec, 'imagesTr'), { recursive: true });
    mkdirSync(join(dec, 'labelsTr'), { recursive: true });
    const training = ['p1', 'p2', 'p3', 'gone'].map((id) => ({ image: `./imagesTr/${id}.nii.gz`, label: `./labelsTr/${id}.nii.gz` }));
    writeFileSync(join(dec, 'dataset.json'), JSON.stringify({ modality: { '0': 'MRI' }, labels: { '0': 'background', '1': 'Anterior', '2': 'Posterior' }, training }));
    const img = Int16Array.from({ length: n }, (_, i) => (i * 37) % 500);
    const lab = Uint8Array.from({ length: n }, (_, i) => (i % 11 === 0 ? 1 : i % 13 === 0 ? 2 : 0));
    for (const id of ['p1', 'p2', 'p3']) writeVolume(join(dec, 'imagesTr', `${id}.nii.gz`), img, shape);
    writeVolume(join(dec, 'labelsTr', 'p1.nii.gz'), lab, shape);
    // p2: the label's spacing differs from its image's; p3: a label value dataset.json does not name
    writeVolume(join(dec, 'labelsTr', 'p2.nii.gz'), lab, shape, { geo: { ...geometry, spacing: [0.75, 0.8, 3] } });
    writeVolume(join(dec, 'labelsTr', 'p3.nii.gz'), lab.map((v) => (v === 2 ? 7 : v)), shape);
    const out = join(root, 'decathlon-out');
    const log: string[] = [];
    const failure = await prepareDirectories({ root: dec, out, modality: 'MR', log: (l) => log.push(l) }).catch((e: Error) => e.message);
    expect(failure).toMatch(/2 of 3 case\(s\) failed \(1 written\)/);
    expect(failure).toMatch(/labelsTr\/p2\.nii\.gz: label spacing \(0\.75, 0\.8, 3\) differs from image .*imagesTr\/p2\.nii\.gz \(0\.75, 0\.8, 2\.5\)/);
    expect(failure).toMatch(/labelsTr\/p3\.nii\.gz: label value\(s\) 7 not in dataset\.json \(labels 1, 2\)/);
    expect(log).toContain('skipped 1 case(s) listed in ' + join(dec, 'dataset.json') + ' whose files are missing');
    expect(log.some((l) => /p1\.npz: .*labels 1 Anterior, 2 Posterior/.test(l))).toBe(true);
    expect(JSON.parse(readFileSync(join(out, 'labels.json'), 'utf8'))).toEqual({ '1': 'Anterior', '2': 'Posterior' });
    expect(Array.from(readNpz(join(out, 'p1.npz')).gts.data as Uint8Array)).toEqual(Array.from(lab));
    // a second run refuses to overwrite p1.npz; shard 1/3 of (p1, p2, p3) is p2 alone
    await expect(prepareDirectories({ root: dec, out, modality: 'MR' })).rejects.toThrow(/1 output file\(s\) exist already .*p1\.npz.*--overwrite/);
    await expect(prepareDirectories({ root: dec, out, modality: 'MR', shard: { index: 1, count: 3, source: 't' } })).rejects.toThrow(/1 of 1 case\(s\) failed.*\n.*p2\.nii\.gz/);
    expect(await prepareDirectories({ root: dec, out, modality: 'MR', shard: { index: 0, count: 3, source: 't' }, overwrite: true })).toEqual([join(out, 'p1.npz')]);
  });

  it('pairs files by name and reports images without labels', () => {
    const r = pairFiles(['a_0000.nii.gz', 'b.nii', 'c.nii.gz', 'notes.txt'], ['a.nii.gz', 'b.nii.gz']);
    expect(r.pairs).toEqual([
      { name: 'a', image: 'a_0000.nii.gz', label: 'a.nii.gz' },
      { name: 'b', image: 'b.nii', label: 'b.nii.gz' },
    ]);
    expect(r.unpairedImages).toEqual(['c.nii.gz']);
    expect(pairFiles(['a_0000.nii.gz'], undefined).pairs).toEqual([{ name: 'a', image: 'a_0000.nii.gz' }]);
  });
});
