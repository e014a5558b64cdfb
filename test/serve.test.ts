/**
 * `medtune serve`: the HTTP safety rules (plain requests), then the segment and runs pages driven
 * in Debian's Chromium through playwright-core. The page's masks must equal `medtune predict` on
 * the same prompts voxel for voxel (the golden small256 weights, exported here). Screenshots of
 * each step go to test-output/serve/.
 */
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPredict } from '../src/commands/predict.js';
import { runServe } from '../src/commands/serve.js';
import { readNifti, writeNifti } from '../src/data/nifti.js';
import { readNpz } from '../src/io/npz.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { exportGraphs } from '../src/onnx/export.js';
import type { RunningServer } from '../src/serve/server.js';
import { TensorBoardWriter } from '../src/train/tensorboard.js';
import { GOLDEN_DIR, loadGolden } from './helpers/golden.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SHOTS = join(import.meta.dirname, '..', 'test-output', 'serve');
const quiet = () => {};

let dir: string;
let exportDir: string;
let dataDir: string;
let runsDir: string;
let server: RunningServer;

function writeRun(name: string, steps: number, from = 1): void {
  const run = join(runsDir, name);
  mkdirSync(run, { recursive: true });
  writeFileSync(join(run, 'config.yaml'), `name: ${name}\ntrain:\n  lr: 0.001\n`);
  for (let s = from; s < from + steps; s++) {
    appendFileSync(join(run, 'metrics.jsonl'), `${JSON.stringify({ step: s, loss: 1 / s, dice: 0.5 / s, bce: 0.5 / s, lr: 1e-3 })}\n`);
    if (s % 2 === 0) appendFileSync(join(run, 'metrics.jsonl'), `${JSON.stringify({ step: s, val_dice: 1 - 1 / s })}\n`);
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'medtune-serve-'));
  const golden = loadGolden();
  exportDir = join(dir, 'export');
  exportGraphs(golden.config, readSafetensors(join(GOLDEN_DIR, 'weights.safetensors')), exportDir);

  // a CT-like NIfTI volume (HU) from the propagation fixture's slices, with its own geometry
  dataDir = join(dir, 'data');
  mkdirSync(join(dataDir, 'sub'), { recursive: true });
  const prop = readNpz(join(GOLDEN_DIR, 'propagation.npz'));
  const hu = Int16Array.from(prop.slices.data as Float32Array, (v) => Math.round(v * 400 - 160));
  writeNifti(join(dataDir, 'volume.nii.gz'), hu, prop.slices.shape, {
    geometry: { spacing: [0.8, 0.7, 2.5], origin: [10, -20, 30], direction: [1, 0, 0, 0, -1, 0, 0, 0, 1] },
  });
  writeFileSync(join(dataDir, 'junk.nii.gz'), 'this is not a NIfTI file');
  writeFileSync(join(dir, 'secret.npy'), 'outside the data folder');
  symlinkSync(join(dir, 'secret.npy'), join(dataDir, 'sub', 'escape.npy'));

  runsDir = join(dir, 'runs');
  writeRun('run-a', 6);
  writeRun('run-b', 4);
  const tb = new TensorBoardWriter(join(runsDir, 'run-a', 'tensorboard'));
  tb.image(2, 'val/overlay', { height: 8, width: 8, colorspace: 3, png: new Uint8Array(readFileSync(join(import.meta.dirname, 'fixtures', 'tensorboard', 'overlay.png'))) });
  tb.close();

  server = await runServe({ onnx: exportDir, data: dataDir, runs: runsDir, port: 0, host: '127.0.0.1', 'max-upload-mb': 0.05, threads: 2 }, quiet);
  mkdirSync(SHOTS, { recursive: true });
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A raw request (the path is sent as written, no URL normalization). */
function raw(path: string, opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {}): Promise<{ status: number; body: string; bytes: Buffer }> {
  const { port } = new URL(server.url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: { 'x-medtune-token': server.token, ...opts.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const bytes = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, body: bytes.toString('utf8'), bytes });
      });
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

const open = (path: string) => raw('/api/open', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ path }) });

describe('serve: only the named folders, only with the page token', () => {
  it('refuses paths that leave the data or runs folder: .., encoded .., absolute, symlinks out', async () => {
    for (const p of ['../secret.npy', 'sub/../../secret.npy', '/etc/passwd']) {
      const r = await open(p);
      expect(r.status, p).toBe(403);
      expect(JSON.parse(r.body).error).toMatch(/outside the served folder/);
    }
    const link = await open('sub/escape.npy');
    expect(link.status).toBe(403);
    expect(JSON.parse(link.body).error).toBe('sub/escape.npy: links outside the served folder');
    // the page sends JSON, so %2e%2e is a literal name under the folder, not a way out
    expect((await open('%2e%2e/secret.npy')).status).toBe(404);
    for (const name of ['..%2f..%2fetc', '%2e%2e%2f%2e%2e', '..']) {
      const r = await raw(`/api/run?name=${name}`);
      expect(r.status, name).toBe(403);
    }
    for (const path of ['/../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/assets/..%2f..%2fpackage.json']) {
      const r = await raw(path);
      expect(r.status, path).toBe(404);
      expect(r.body).not.toMatch(/root:|"name": "medtune"/);
    }
    expect(JSON.parse((await raw('/api/files')).body).files).toEqual(['junk.nii.gz', 'volume.nii.gz']);
  });

  it('needs the token, the own Host, the own Origin for changes, and keeps uploads under the limit', async () => {
    expect((await raw('/api/files', { headers: { 'x-medtune-token': 'wrong' } })).status).toBe(403);
    expect((await raw('/api/info', { headers: { host: 'attacker.example:80' } })).status).toBe(403);
    const cross = await raw('/api/open', { method: 'POST', headers: { origin: 'http://attacker.example' }, body: '{"path":"volume.nii.gz"}' });
    expect(cross.status).toBe(403);
    expect(JSON.parse(cross.body).error).toBe('cross-origin request from http://attacker.example refused');
    const big = await raw('/api/upload?name=big.npy', { method: 'POST', body: Buffer.alloc(100_000) });
    expect(big.status).toBe(413);
    expect(JSON.parse(big.body).error).toMatch(/over the limit of 52428 bytes/);
    const bad = await raw('/api/upload?name=notes.txt', { method: 'POST', body: 'hello' });
    expect(JSON.parse(bad.body).error).toMatch(/notes.txt: not a file type the page reads/);
    expect((await raw('/api/info')).status).toBe(200);
  });
});

describe('serve: views and formats', () => {
  it('slices a (D, H, W) volume along the three views as hand-computed', async () => {
    const { reslice, voxelIndex, viewDims } = await import('../src/serve/views.js');
    // value 100 z + 10 y + x in a 2 x 3 x 4 volume
    const data = Float32Array.from({ length: 24 }, (_, i) => 100 * Math.floor(i / 12) + 10 * (Math.floor(i / 4) % 3) + (i % 4));
    const vol = { data, depth: 2, height: 3, width: 4, channels: 1 as const };
    expect(viewDims('coronal', 2, 3, 4)).toEqual({ count: 3, rows: 2, cols: 4 });
    expect(viewDims('sagittal', 2, 3, 4)).toEqual({ count: 4, rows: 2, cols: 3 });
    // coronal slice y = 1: rows z, columns x
    expect(Array.from(reslice(vol, 'coronal').data.subarray(8, 16))).toEqual([10, 11, 12, 13, 110, 111, 112, 113]);
    // sagittal slice x = 2: rows z, columns y
    expect(Array.from(reslice(vol, 'sagittal').data.subarray(12, 18))).toEqual([2, 12, 22, 102, 112, 122]);
    expect(data[voxelIndex('sagittal', 2, 1, 2, 3, 4)]).toBe(122);
    expect(reslice(vol, 'axial')).toBe(vol);
  });

  it('opens an uploaded JPEG as an RGB image', async () => {
    const { encode } = await import('jpeg-js');
    const [w, h] = [40, 24];
    const rgba = new Uint8Array(w * h * 4).map((_, i) => (i % 4 === 3 ? 255 : i % 4 === 0 ? 200 : 60));
    const jpeg = Buffer.from(encode({ data: rgba, width: w, height: h }, 95).data);
    const r = await raw('/api/upload?name=photo.jpg', { method: 'POST', body: jpeg });
    expect(r.status).toBe(200);
    const vol = JSON.parse(r.body);
    expect([vol.shape, vol.channels]).toEqual([[1, h, w], 3]);
    const { bytes } = await raw(`/api/volumes/${vol.id}/slice?axis=axial&index=0`);
    const pixels = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    expect(pixels.length).toBe(w * h * 3);
    expect(Math.abs(pixels[0] - 200)).toBeLessThan(4); // red channel, 0..255, up to JPEG rounding
    expect(Math.abs(pixels[1] - 60)).toBeLessThan(4);
  });
});

describe('serve: propagation jobs', () => {
  it('reports progress and can be cancelled, leaving the label map as it was', async () => {
    // 60 slices: the fixture's 5, repeated
    const prop = readNpz(join(GOLDEN_DIR, 'propagation.npz'));
    const one = prop.slices.data as Float32Array;
    const hu = new Int16Array(60 * 65536);
    for (let z = 0; z < 60; z++) for (let i = 0; i < 65536; i++) hu[z * 65536 + i] = Math.round(one[(z % 5) * 65536 + i] * 400 - 160);
    writeNifti(join(dataDir, 'long.nii'), hu, [60, 256, 256]);
    const vol = JSON.parse((await open('long.nii')).body);
    expect(vol.shape).toEqual([60, 256, 256]);
    const post = (path: string, body: object) => raw(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const { job } = JSON.parse((await post(`/api/volumes/${vol.id}/propagate`, { axis: 'axial', index: 30, label: 1, box: [80, 100, 150, 160] })).body);
    let state: { state: string; done: number; total: number };
    do {
      await new Promise((r) => setTimeout(r, 50));
      state = JSON.parse((await raw(`/api/jobs/${job}`)).body);
    } while (state.state === 'running' && state.done < 3);
    expect(state).toMatchObject({ state: 'running', total: 61 });
    await post(`/api/jobs/${job}/cancel`, {});
    do {
      await new Promise((r) => setTimeout(r, 50));
      state = JSON.parse((await raw(`/api/jobs/${job}`)).body);
    } while (state.state === 'running');
    expect(state.state).toBe('cancelled');
    expect(state.done).toBeLessThan(61);
    const labels = (await raw(`/api/volumes/${vol.id}/labels?axis=axial&index=30`)).bytes;
    expect(labels.length).toBe(2 * 65536);
    expect(labels.every((b) => b === 0)).toBe(true);
  });
});

const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && !process.env.CI) console.warn(`serve browser test skipped: no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`);

describe.skipIf(!haveChromium && !process.env.CI)('serve in Chromium', () => {
  type Page = import('playwright-core').Page;
  let browser: import('playwright-core').Browser;
  let page: Page;
  let step = 0;
  const shot = (name: string) => page.screenshot({ path: join(SHOTS, `${String(++step).padStart(2, '0')}-${name}.png`) });
  const message = () => page.locator('#message');
  /** click on a slice pixel: the canvas is scaled to the page, the page rounds to whole pixels */
  async function at(x: number, y: number): Promise<[number, number]> {
    const box = (await page.locator('#view').boundingBox())!;
    const [cols, rows] = await page.locator('#view').evaluate((c: HTMLCanvasElement) => [c.width, c.height]);
    return [box.x + (x / cols) * box.width, box.y + (y / rows) * box.height];
  }

  beforeAll(async () => {
    if (!haveChromium) throw new Error(`CI is set but there is no Chromium at ${CHROMIUM}: apt-get install -y chromium`);
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await (await browser.newContext({ acceptDownloads: true, viewport: { width: 1200, height: 1000 } })).newPage();
  });

  afterAll(async () => {
    await browser?.close();
  });

  it('segments with a box and a click, propagates, and downloads what `medtune predict` writes', async () => {
    await page.goto(server.url);
    await page.waitForSelector('body[data-ready]');
    await page.selectOption('#file', 'volume.nii.gz');
    await page.click('#open');
    await page.waitForSelector('#view[data-shown="axial:2"]');
    await page.selectOption('#window', 'CT soft-tissue');
    await shot('opened');

    // box on slice 2
    const [ax, ay] = await at(80, 100);
    const [bx, by] = await at(150, 160);
    await page.mouse.move(ax, ay);
    await page.mouse.down();
    await page.mouse.move((ax + bx) / 2, (ay + by) / 2);
    await page.mouse.move(bx, by);
    await page.mouse.up();
    await expect.poll(() => message().textContent(), { timeout: 60_000 }).toMatch(/^mask: \d+ pixels.*embedding computed/);
    await shot('box');

    // a positive click: the decoder only, on the cached embedding
    await page.check('input[name="tool"][value="positive"]');
    await page.mouse.click(...(await at(110, 130)));
    await expect.poll(() => message().textContent(), { timeout: 60_000 }).toMatch(/^mask: \d+ pixels.*embedding cached/);
    console.log(`serve: ${await message().textContent()}`);
    await shot('click');

    // the 2D mask equals predict --slice 2 --box --points
    const twoD = page.waitForEvent('download');
    await page.click('#download-npz');
    const npz = join(dir, 'page-2d.npz');
    await (await twoD).saveAs(npz);
    const cli2d = join(dir, 'cli-2d.npy');
    await runPredict({ onnx: exportDir, input: join(dataDir, 'volume.nii.gz'), out: cli2d, slice: 2, box: ['80,100,150,160'], points: ['110,130,1'], label: 1 }, quiet);
    const pageSegs = readNpz(npz).segs;
    expect(pageSegs.shape).toEqual([5, 256, 256]);
    const slice2 = Array.from((pageSegs.data as Uint8Array).subarray(2 * 65536, 3 * 65536));
    const { parseNpy } = await import('../src/io/npz.js');
    const cliMask = Array.from(parseNpy(readFileSync(cli2d), cli2d).data as Uint8Array);
    expect(cliMask.some((v) => v === 1)).toBe(true);
    expect(slice2).toEqual(cliMask);

    // propagate from slice 2 with progress, then the NIfTI download equals predict's 3D output
    await page.click('#propagate');
    await expect.poll(() => message().textContent(), { timeout: 120_000 }).toMatch(/^propagated: \d+ voxels over 6 slice steps/);
    expect(await page.locator('#progress').evaluate((p: HTMLProgressElement) => [p.value, p.max])).toEqual([6, 6]);
    await shot('propagated');
    const threeD = page.waitForEvent('download');
    await page.click('#download-nifti');
    const download = await threeD;
    expect(download.suggestedFilename()).toBe('volume_mask.nii.gz');
    const pageNii = join(dir, 'page.nii.gz');
    await download.saveAs(pageNii);
    const cliNii = join(dir, 'cli.nii.gz');
    await runPredict({ onnx: exportDir, input: join(dataDir, 'volume.nii.gz'), out: cliNii, box: ['1:80,100,2,150,160,2'], points: ['1:110,130,1'], label: 1 }, quiet);
    const ours = readNifti(pageNii);
    const cli = readNifti(cliNii);
    expect(ours.shape).toEqual([5, 256, 256]);
    expect(ours.geometry).toEqual(cli.geometry);
    expect(ours.geometry.origin).toEqual([10, -20, 30]);
    expect(Array.from(ours.data)).toEqual(Array.from(cli.data));
    const perSlice = [0, 1, 2, 3, 4].map((z) => Array.from(ours.data.subarray(z * 65536, (z + 1) * 65536)).filter((v) => v === 1).length);
    console.log(`serve: propagated voxels per slice ${perSlice.join(', ')}`);
    expect(perSlice[2]).toBeGreaterThan(0);

    // undo puts the 2D mask back
    await page.click('#undo');
    await expect.poll(() => message().textContent()).toBe('undone');
  });

  it('several labels: a second label segments beside the first; coronal view', async () => {
    await page.click('#add-label');
    await page.fill('#label-name', 'second');
    await page.dispatchEvent('#label-name', 'change');
    await page.check('input[name="tool"][value="box"]');
    const [ax, ay] = await at(160, 40);
    const [bx, by] = await at(220, 90);
    await page.mouse.move(ax, ay);
    await page.mouse.down();
    await page.mouse.move(bx, by);
    await page.mouse.up();
    await expect.poll(() => message().textContent(), { timeout: 60_000 }).toMatch(/^mask: \d+ pixels/);
    expect(await page.locator('#label option').allTextContents()).toEqual(['1: object 1', '2: second']);
    await shot('second-label');
    await page.selectOption('#axis', 'coronal');
    await page.waitForSelector('#view[data-shown="coronal:128"]');
    await shot('coronal');
    await page.selectOption('#axis', 'axial');
  });

  it('a corrupt file gets a message in the page and the server lives on', async () => {
    await page.selectOption('#file', 'junk.nii.gz');
    await page.click('#open');
    await expect.poll(() => message().textContent()).toMatch(/^junk\.nii\.gz: not a NIfTI file/);
    expect(await message().getAttribute('class')).toBe('error');
    await page.setInputFiles('#upload', { name: 'broken.png', mimeType: 'image/png', buffer: Buffer.from('not a png at all') });
    await expect.poll(() => message().textContent()).toMatch(/^broken\.png: /);
    await shot('corrupt');
    await page.selectOption('#file', 'volume.nii.gz');
    await page.click('#open');
    await expect.poll(() => message().textContent()).toBe('opened volume.nii.gz');
  });

  it('runs page: curves from metrics.jsonl, updated live, two runs on one plot, overlays', async () => {
    await page.goto(new URL('runs', server.url).href);
    await page.waitForSelector('svg[data-metric="loss"] polyline');
    const points = (run: string, metric = 'loss') => page.locator(`svg[data-metric="${metric}"] polyline[data-run="${run}"]`).getAttribute('data-points');
    const first = (await page.locator('#focus-name').textContent())!;
    expect(['run-a', 'run-b']).toContain(first);
    const other = first === 'run-a' ? 'run-b' : 'run-a';
    const before = Number(await points(first));
    writeRun(first, 3, 100);
    await expect.poll(() => points(first), { timeout: 10_000 }).toBe(String(before + 3));
    await page.check(`#run-list input[value="${other}"]`);
    await expect.poll(() => points(other), { timeout: 10_000 }).not.toBeNull();
    expect(await page.locator('svg[data-metric="val_dice"] polyline').count()).toBe(2);
    await page.click(`#run-list a:has-text("run-a")`);
    await expect.poll(() => page.locator('#overlays img').count(), { timeout: 10_000 }).toBe(1);
    expect(await page.locator('#config').textContent()).toMatch(/name: run-a/);
    await shot('runs');
  });
});
