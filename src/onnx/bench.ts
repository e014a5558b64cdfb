/**
 * onnxruntime-node latency of exported graphs of a randomly initialised model (the weights do
 * not change the cost): the image encoder at given resolutions, the mask decoder, and one slice
 * of 3D propagation end to end. For `npm run bench` (scripts/bench.ts).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MODEL_PRESETS, resolveModelChoice, type Sam2Config } from '../model/config.js';
import { SAM2Base } from '../model/sam2.js';
import { grayToModelInput, VolumePropagator } from '../model/video-predictor.js';
import { initParams } from '../model/weights.js';
import { buildGraph, exportGraphs } from './export.js';
import { geometry, type GraphKey } from './graphs.js';
import { createSession, OnnxModel, OrtFrameGraphs, runSession, type HostArray } from './runtime.js';

export interface LatencyResult {
  graph: string;
  imageSize: number;
  threads: number;
  /** median over the timed runs, ms */
  medianMs: number;
  minMs: number;
  /**
   * process CPU time per run, ms (worker threads do not spin in the bench): on a busy machine,
   * cpuMs / threads estimates the wall time an idle one would take
   */
  cpuMs: number;
  runs: number;
  nodes: number;
  megabytes: number;
}

export interface BenchOptions {
  preset?: string;
  imageSizes?: number[];
  threads?: number;
  runs?: number;
  warmup?: number;
  /** which graphs: default image encoder, mask decoder, and the propagation graphs */
  graphs?: Array<'imageEncoder' | 'maskDecoder' | 'propagation'>;
  log?: (line: string) => void;
}

/** A preset at another input size (the RoPE feature sizes follow, as in training). */
export function presetAt(preset: string, imageSize: number): Sam2Config {
  if (!Object.hasOwn(MODEL_PRESETS, preset)) throw new Error(`unknown preset '${preset}'`);
  return resolveModelChoice({ preset, image_size: imageSize });
}

function filled(shape: number[], f: (i: number) => number): HostArray {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = f(i);
  return { data, shape };
}

function noise(shape: number[]): HostArray {
  let s = 12345;
  return filled(shape, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  });
}

async function timeGraph(
  config: Sam2Config,
  params: ReturnType<typeof initParams>,
  key: GraphKey,
  feeds: Record<string, HostArray>,
  label: string,
  opts: Required<Pick<BenchOptions, 'threads' | 'runs' | 'warmup'>>,
): Promise<LatencyResult> {
  const { bytes, nodes } = buildGraph(config, params, key);
  const session = await createSession(bytes, { threads: opts.threads, spin: false });
  try {
    for (let i = 0; i < opts.warmup; i++) await runSession(session, feeds);
    const times: number[] = [];
    const cpu0 = process.cpuUsage();
    for (let i = 0; i < opts.runs; i++) {
      const t0 = performance.now();
      await runSession(session, feeds);
      times.push(performance.now() - t0);
    }
    const cpu = process.cpuUsage(cpu0);
    times.sort((a, b) => a - b);
    return {
      graph: label,
      imageSize: config.image_size,
      threads: opts.threads,
      medianMs: times[Math.floor(times.length / 2)],
      minMs: times[0],
      cpuMs: (cpu.user + cpu.system) / 1000 / opts.runs,
      runs: opts.runs,
      nodes,
      megabytes: bytes.byteLength / 1e6,
    };
  } finally {
    await session.release();
  }
}

/** Measure; results in the order measured. */
export async function benchOnnx(opts: BenchOptions = {}): Promise<LatencyResult[]> {
  const preset = opts.preset ?? 'sam2.1-tiny';
  const sizes = opts.imageSizes ?? [512, 1024];
  const which = opts.graphs ?? ['imageEncoder', 'maskDecoder', 'propagation'];
  const t = { threads: opts.threads ?? 2, runs: opts.runs ?? 5, warmup: opts.warmup ?? 1 };
  const results: LatencyResult[] = [];
  const report = (r: LatencyResult) => {
    results.push(r);
    opts.log?.(
      `${r.graph.padEnd(20)} @${r.imageSize}  ${r.threads} threads  median ${r.medianMs.toFixed(1)} ms  min ${r.minMs.toFixed(1)} ms  ` +
        `cpu ${r.cpuMs.toFixed(0)} ms/run  ` +
        `(${r.nodes} nodes, ${r.megabytes.toFixed(1)} MB)`,
    );
  };
  for (const size of sizes) {
    const config = presetAt(preset, size);
    const params = initParams(new SAM2Base(config).paramSpecs(), 0);
    const { S, h, C } = geometry(config);
    if (which.includes('imageEncoder')) report(await timeGraph(config, params, 'imageEncoder', { image: noise([1, 3, S, S]) }, 'image_encoder', t));
    const highRes = { high_res_0: noise([1, C / 8, 4 * h, 4 * h]), high_res_1: noise([1, C / 4, 2 * h, 2 * h]) };
    if (which.includes('maskDecoder')) {
      const box = [0.2 * S, 0.3 * S, 0.6 * S, 0.7 * S];
      const feeds = {
        image_embed: noise([1, C, h, h]),
        ...highRes,
        point_coords: { data: Float32Array.from(box), shape: [1, 2, 2] },
        point_labels: { data: Float32Array.from([2, 3]), shape: [1, 2] },
        mask_input: filled([1, 1, 4 * h, 4 * h], () => 0),
        has_mask_input: { data: Float32Array.from([0]), shape: [1] },
      };
      report(await timeGraph(config, params, 'maskDecoder', feeds, 'mask_decoder', t));
    }
    if (which.includes('propagation')) report(await benchPropagation(config, params, t));
  }
  return results;
}

/**
 * Per-slice time of 3D propagation on the exported graphs, end to end (image encoder, memory
 * attention, SAM heads, memory encoder, mask resize): a synthetic volume of `slices` slices is
 * propagated from its middle slice in both directions; the median over the tracked slices.
 */
export async function benchPropagation(
  config: Sam2Config,
  params: ReturnType<typeof initParams>,
  opts: { threads: number; slices?: number },
): Promise<LatencyResult> {
  const dir = mkdtempSync(join(tmpdir(), 'medtune-bench-'));
  try {
    const graphs = exportGraphs(config, params, dir);
    const model = OnnxModel.open(dir, { threads: opts.threads, spin: false });
    const S = config.image_size;
    const d = opts.slices ?? 9;
    // a bright disk that drifts across the slices
    const image = (i: number) =>
      grayToModelInput(
        Float32Array.from({ length: S * S }, (_, p) => {
          const x = p % S;
          const y = Math.floor(p / S);
          return (x - S * (0.4 + 0.02 * i)) ** 2 + (y - S / 2) ** 2 < (S / 6) ** 2 ? 0.8 : 0.2;
        }),
      );
    const key = Math.floor(d / 2);
    const box: [number, number, number, number] = [S * 0.2, S * 0.3, S * 0.65, S * 0.7];
    const cpu0 = process.cpuUsage();
    const results = await new VolumePropagator(new OrtFrameGraphs(model)).propagate({ numFrames: d, height: S, width: S, image }, { frameIdx: key, box });
    const cpu = process.cpuUsage(cpu0);
    await model.release();
    const times = results.filter((r) => r.frameIdx !== key).map((r) => r.ms).sort((a, b) => a - b);
    return {
      graph: 'propagation/slice',
      imageSize: S,
      threads: opts.threads,
      medianMs: times[Math.floor(times.length / 2)],
      minMs: times[0],
      // the key slice and the host-side work included: an upper bound per slice
      cpuMs: (cpu.user + cpu.system) / 1000 / d,
      runs: times.length,
      nodes: graphs.reduce((n, g) => n + g.nodes, 0),
      megabytes: graphs.reduce((n, g) => n + g.bytes, 0) / 1e6,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
