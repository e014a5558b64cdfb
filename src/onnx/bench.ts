/**
 * onnxruntime-node latency of exported graphs of a randomly initialised model (the weights do
 * not change the cost): the image encoder at given resolutions, the mask decoder, and the
 * per-slice graphs of 3D propagation. For `npm run bench` (scripts/bench.ts) and the export tests.
 */
import type { Sam2Config } from '../model/config.js';
import { MODEL_PRESETS, resolveModelConfig, type Sam2ConfigInput } from '../model/config.js';
import { SAM2Base } from '../model/sam2.js';
import { initParams } from '../model/weights.js';
import { buildGraph } from './export.js';
import { geometry, type GraphKey } from './graphs.js';
import { createSession, runSession, type HostArray } from './runtime.js';

export interface LatencyResult {
  graph: string;
  imageSize: number;
  threads: number;
  /** median over the timed runs, ms */
  medianMs: number;
  minMs: number;
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
  const base = MODEL_PRESETS[preset];
  if (!base) throw new Error(`unknown preset '${preset}'`);
  if (imageSize === base.image_size) return base;
  const feat = imageSize / 16;
  return resolveModelConfig(
    {
      image_size: imageSize,
      memory_attention: { layer: { self_attention: { feat_sizes: [feat, feat] }, cross_attention: { feat_sizes: [feat, feat] } } },
    } as Sam2ConfigInput,
    base,
  );
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
  const session = await createSession(bytes, { threads: opts.threads });
  try {
    for (let i = 0; i < opts.warmup; i++) await runSession(session, feeds);
    const times: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const t0 = performance.now();
      await runSession(session, feeds);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    return {
      graph: label,
      imageSize: config.image_size,
      threads: opts.threads,
      medianMs: times[Math.floor(times.length / 2)],
      minMs: times[0],
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
        `(${r.nodes} nodes, ${r.megabytes.toFixed(1)} MB)`,
    );
  };
  for (const size of sizes) {
    const config = presetAt(preset, size);
    const params = initParams(new SAM2Base(config).paramSpecs(), 0);
    const { S, h, C, Cm } = geometry(config);
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
    if (which.includes('propagation')) {
      // one tracked slice: memory attention over a full bank, SAM heads, memory encoder
      const F = config.num_maskmem;
      const P = Math.min(config.max_obj_ptrs_in_encoder, 16);
      const onehot = filled([F, config.num_maskmem], (i) => (i % (config.num_maskmem + 1) === 0 ? 1 : 0));
      const attn = {
        vision_feats: noise([1, C, h, h]),
        memory: noise([F, h, h, Cm]),
        memory_pos_enc: noise([F, h, h, Cm]),
        memory_tpos: onehot,
        ...(config.use_obj_ptrs_in_encoder ? { obj_ptrs: noise([P, C]), obj_ptr_tpos: filled([P, 1], (i) => i / P) } : {}),
      };
      report(await timeGraph(config, params, 'memoryAttention', attn, `memory_attention(${F}+${P})`, t));
      const heads = { pix_feat: noise([1, C, h, h]), ...highRes, point_coords: filled([1, 1, 2], () => 0), point_labels: filled([1, 1], () => -1) };
      report(await timeGraph(config, params, 'samHeads', heads, 'sam_heads', t));
      const mem = { vision_feats: noise([1, C, h, h]), pred_masks: noise([1, 1, 4 * h, 4 * h]), object_score_logits: filled([1, 1], () => 1) };
      report(await timeGraph(config, params, 'memoryEncoder', mem, 'memory_encoder', t));
    }
  }
  return results;
}
