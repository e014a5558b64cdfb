/**
 * `npx tsx scripts/bench-serve.ts [--onnx EXPORT] [--image-size 1024] [--slice-size 1024] [--slices 100] [--threads N]`
 *
 * `medtune serve` latencies through its HTTP API, as the page sees them: box -> mask on one slice
 * the first time (image encoder + decoder) and repeated with clicks on the cached embedding
 * (decoder only), then propagation through a volume of --slices slices with its progress. Without
 * --onnx a randomly initialised sam2.1-tiny is exported at --image-size (weights do not change the cost).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { encodeNpz } from '../src/io/npz.js';
import { resolveModelChoice } from '../src/model/config.js';
import { SAM2Base } from '../src/model/sam2.js';
import { initParams } from '../src/model/weights.js';
import { exportGraphs } from '../src/onnx/export.js';
import { OnnxModel } from '../src/onnx/runtime.js';
import { startServer } from '../src/serve/server.js';

const args = await yargs(hideBin(process.argv))
  .option('onnx', { type: 'string', describe: 'an export folder (default: a random sam2.1-tiny at --image-size)' })
  .option('image-size', { type: 'number', default: 1024 })
  .option('slice-size', { type: 'number', default: 1024, describe: 'pixels per side of the test slices' })
  .option('slices', { type: 'number', default: 100, describe: 'slices of the propagation volume (0: skip)' })
  .option('repeats', { type: 'number', default: 5 })
  .option('threads', { type: 'number' })
  .strict()
  .parse();

const work = mkdtempSync(join(tmpdir(), 'medtune-bench-serve-'));
try {
  let exportDir = args.onnx;
  if (!exportDir) {
    exportDir = join(work, 'export');
    const config = resolveModelChoice({ preset: 'sam2.1-tiny', image_size: args['image-size'] });
    const t0 = performance.now();
    exportGraphs(config, initParams(new SAM2Base(config).paramSpecs(), 0), exportDir);
    console.log(`exported a random sam2.1-tiny at ${args['image-size']} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
  const model = OnnxModel.open(exportDir, { threads: args.threads });
  const data = join(work, 'data');
  const n = args['slice-size'];
  const D = Math.max(1, args.slices);
  // smooth blobs, so slices differ and every pixel is a plausible intensity
  const imgs = new Uint8Array(D * n * n);
  for (let z = 0; z < D; z++) for (let y = 0; y < n; y++) for (let x = 0; x < n; x++) imgs[(z * n + y) * n + x] = 128 + 100 * Math.sin((x + 3 * z) / 40) * Math.cos(y / 55);
  const { mkdirSync } = await import('node:fs');
  mkdirSync(data);
  writeFileSync(join(data, 'volume.npz'), encodeNpz({ imgs: { data: imgs, shape: [D, n, n] } }, false));

  const server = await startServer({ model, data, host: '127.0.0.1', port: 0, maxUploadBytes: 1 << 30 });
  const call = async (path: string, body?: object) => {
    const res = await fetch(new URL(path, server.url), {
      method: body ? 'POST' : 'GET',
      headers: { 'x-medtune-token': server.token, 'content-type': 'application/json' },
      body: body ? JSON.stringify(body) : undefined,
    });
    const json = await res.json();
    if (!res.ok) throw new Error(json.error);
    return json;
  };
  const vol = await call('/api/open', { path: 'volume.npz' });
  const k = Math.floor(D / 2);
  const box = [0.3 * n, 0.3 * n, 0.6 * n, 0.65 * n].map(Math.round);
  // process CPU time (all onnxruntime threads) beside the wall time: on a shared machine
  // cpu / threads estimates the wall time of an idle one
  const cpuMs = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const timed = async (body: object) => {
    const [t0, c0] = [performance.now(), cpuMs()];
    const r = await call(`/api/volumes/${vol.id}/segment`, body);
    return { total: performance.now() - t0, cpu: cpuMs() - c0, server: r.ms as number, cached: r.cached as boolean };
  };
  const first = await timed({ axis: 'axial', index: k, label: 1, box });
  console.log(`${n}x${n} slice, model ${model.geometry.S}: first box -> mask ${first.total.toFixed(0)} ms, CPU ${first.cpu.toFixed(0)} ms (server ${first.server.toFixed(0)} ms, embedding computed, sessions created)`);
  const second = await timed({ axis: 'axial', index: (k + 1) % D, label: 1, box });
  console.log(`  box on a new slice (sessions warm): ${second.total.toFixed(0)} ms, CPU ${second.cpu.toFixed(0)} ms (server ${second.server.toFixed(0)} ms, embedding ${second.cached ? 'cached' : 'computed'})`);
  const repeats: number[] = [];
  const repeatCpu: number[] = [];
  for (let i = 0; i < args.repeats; i++) {
    const r = await timed({ axis: 'axial', index: k, label: 1, box, points: [[Math.round(0.45 * n), Math.round(0.5 * n), 1], ...(i % 2 ? [[box[0] + 2, box[1] + 2, 0]] : [])] });
    repeats.push(r.total);
    repeatCpu.push(r.cpu);
  }
  repeats.sort((a, b) => a - b);
  repeatCpu.sort((a, b) => a - b);
  console.log(`  repeated box + clicks on the cached embedding: median ${repeats[repeats.length >> 1].toFixed(0)} ms, min ${repeats[0].toFixed(0)} ms, median CPU ${repeatCpu[repeatCpu.length >> 1].toFixed(0)} ms (${args.repeats} runs)`);

  if (args.slices > 0) {
    const [t0, c0] = [performance.now(), cpuMs()];
    const { job } = await call(`/api/volumes/${vol.id}/propagate`, { axis: 'axial', index: k, label: 1, box });
    let last = -1;
    for (;;) {
      const s = await call(`/api/jobs/${job}`);
      if (s.total > 0 && s.done !== last && (s.done % 10 === 0 || s.state !== 'running')) console.log(`  propagation ${s.done}/${s.total} at ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      last = s.done;
      if (s.state !== 'running') {
        if (s.state !== 'done') throw new Error(`propagation ${s.state}: ${s.message ?? ''}`);
        const cpu = cpuMs() - c0;
        console.log(`propagation through ${D} slices: ${(s.ms / 1000).toFixed(1)} s, ${(s.ms / s.total).toFixed(0)} ms per slice step, CPU ${(cpu / s.total).toFixed(0)} ms per step`);
        break;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  await server.close();
  await model.release();
} finally {
  rmSync(work, { recursive: true, force: true });
}
