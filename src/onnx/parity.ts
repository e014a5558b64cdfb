/**
 * Comparing exported graphs with the TypeScript model: error measures, the report format, and
 * the export-time parity run. This module uses TensorFlow.js; the inference path (runtime.ts,
 * the predict command) does not import it.
 */
import * as tf from '@tensorflow/tfjs-core';
import { join } from 'node:path';
import type * as ort from 'onnxruntime-node';
import { env as ortEnv } from 'onnxruntime-node';
import seedrandom from 'seedrandom';
import type { StateDict } from '../io/safetensors.js';
import type { Sam2Config } from '../model/config.js';
import { Adapters, type AdapterTable } from '../model/adapters.js';
import { SAM2Base } from '../model/sam2.js';
import { TfOps } from '../model/tf-ops.js';
import { allGraphs, geometry, GRAPH_FILES, type GraphKey } from './graphs.js';
import type { GraphDef } from './onnx-ops.js';
import { createSession, runSession, type HostArray } from './runtime.js';

export interface ParityEntry {
  graph: string;
  output: string;
  shape: number[];
  maxAbsError: number;
  /** the tensor's scale: max |reference| (at least 1e-6) */
  scale: number;
  /** maxAbsError / scale */
  relError: number;
  ok: boolean;
}

/** Default parity bar: 1e-4 of the tensor's scale. */
export const PARITY_TOLERANCE = 1e-4;

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** max |ours - ref| relative to max |ref| (floored at 1e-6 so an all-zero tensor compares absolutely). */
export function relativeError(ours: ArrayLike<number>, ref: ArrayLike<number>): { maxAbsError: number; scale: number; relError: number } {
  if (ours.length !== ref.length) throw new Error(`size mismatch: ${ours.length} vs ${ref.length}`);
  let maxAbsError = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(ours[i] - ref[i]);
    if (!(d <= maxAbsError)) maxAbsError = Number.isNaN(d) ? Infinity : d;
  }
  const scale = Math.max(maxAbs(ref), 1e-6);
  return { maxAbsError, scale, relError: maxAbsError / scale };
}

export function compareTensors(
  graph: string,
  output: string,
  ours: { data: ArrayLike<number>; shape: number[] },
  ref: { data: ArrayLike<number>; shape: number[] },
  tolerance = PARITY_TOLERANCE,
): ParityEntry {
  if (ours.shape.join(',') !== ref.shape.join(',')) {
    throw new Error(`${graph}/${output}: ONNX output shape [${ours.shape}] differs from the TypeScript model's [${ref.shape}]`);
  }
  const e = relativeError(ours.data, ref.data);
  return { graph, output, shape: ref.shape, ...e, ok: e.relError <= tolerance };
}

export function formatParity(entries: ParityEntry[]): string {
  const w = Math.max(...entries.map((e) => `${e.graph}/${e.output}`.length), 10);
  return entries
    .map(
      (e) =>
        `${`${e.graph}/${e.output}`.padEnd(w)}  [${e.shape.join(',')}]`.padEnd(w + 24) +
        `  max|err| ${e.maxAbsError.toExponential(2)}  scale ${e.scale.toExponential(2)}  rel ${e.relError.toExponential(2)}  ${e.ok ? 'ok' : 'FAIL'}`,
    )
    .join('\n');
}

// ───────────────────────── the export-time parity run (TensorFlow.js reference) ─────────────────────────

export interface ParityReport {
  tolerance: number;
  ok: boolean;
  /** the reference: the TypeScript model on TfOps, on this tfjs backend */
  backend: string;
  onnxruntime: string;
  entries: ParityEntry[];
}

interface Feeds {
  [name: string]: HostArray;
}

function seeded(seed: string): () => number {
  return seedrandom(seed);
}

function randomArray(shape: number[], rng: () => number, kind: 'normal' | 'uniform' = 'normal'): HostArray {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) {
    data[i] = kind === 'uniform' ? rng() : Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
  }
  return { data, shape };
}

function repeatBatch(a: HostArray, n: number): HostArray {
  const data = new Float32Array(a.data.length * n);
  for (let i = 0; i < n; i++) data.set(a.data, i * a.data.length);
  return { data, shape: [a.shape[0] * n, ...a.shape.slice(1)] };
}

/** Run a graph definition on TfOps: inputs from `feeds` (checked against the declared dims). */
async function runDefTf(def: GraphDef, ops: TfOps, feeds: Feeds): Promise<Record<string, HostArray>> {
  const outputs: Record<string, tf.Tensor> = {};
  tf.tidy(() => {
    def.build(ops, {
      input(name, dims) {
        const f = feeds[name];
        if (!f) throw new Error(`parity: no input '${name}' for graph ${def.name}`);
        if (f.shape.length !== dims.length || dims.some((d, i) => typeof d === 'number' && d !== f.shape[i])) {
          throw new Error(`parity: input '${name}' of ${def.name} has shape [${f.shape}], graph wants [${dims}]`);
        }
        return tf.tensor(f.data, f.shape);
      },
      output(name, x) {
        outputs[name] = tf.keep(x);
      },
    });
  });
  const out: Record<string, HostArray> = {};
  for (const [name, x] of Object.entries(outputs)) {
    out[name] = { data: Float32Array.from(await x.data()), shape: [...x.shape] };
    x.dispose();
  }
  return out;
}

/**
 * Run every exported graph in onnxruntime-node on fixed inputs and compare with the TypeScript
 * model on TfOps with the same weights. Inputs are chained (the decoder gets the encoder's
 * output, the memory encoder the heads' masks, ...) so every graph sees realistic values; the
 * decoder runs at batch 2 (one sample with a mask prompt, one without), so the dynamic batch is
 * exercised too. Memory attention is compared with `SAM2Base.conditionOnMemory` itself, which
 * also checks the graph's tensor-level assembly of the memory bank.
 */
export async function runParity(
  config: Sam2Config,
  params: StateDict,
  outDir: string,
  opts: { tolerance?: number; threads?: number; log?: (line: string) => void; adapters?: AdapterTable } = {},
): Promise<ParityReport> {
  const tolerance = opts.tolerance ?? PARITY_TOLERANCE;
  const model = new SAM2Base(config);
  const defs = allGraphs(model);
  const { S, h, C, Cm } = geometry(config);
  const tfParams = new Map([...params].map(([k, v]) => [k, tf.tensor(v.data, v.shape)]));
  const adapters = opts.adapters && new Adapters<tf.Tensor>(opts.adapters.settings, new Set(opts.adapters.layers));
  const ops = new TfOps(tfParams, { adapters });
  const entries: ParityEntry[] = [];
  const sessions = new Map<GraphKey, ort.InferenceSession>();
  const session = async (key: GraphKey) => {
    let s = sessions.get(key);
    if (!s) {
      s = await createSession(join(outDir, GRAPH_FILES[key]), { threads: opts.threads });
      sessions.set(key, s);
    }
    return s;
  };
  /** run one graph both ways, record the comparison, return the reference outputs */
  const check = async (key: GraphKey, feeds: Feeds, label = GRAPH_FILES[key].replace(/\.onnx$/, '')) => {
    const t0 = performance.now();
    const ref = await runDefTf(defs[key], ops, feeds);
    const t1 = performance.now();
    const ours = await runSession(await session(key), feeds);
    const t2 = performance.now();
    for (const [name, r] of Object.entries(ref)) {
      const e = compareTensors(label, name, ours[name], r, tolerance);
      entries.push(e);
    }
    opts.log?.(`  ${label}: TypeScript ${(t1 - t0).toFixed(0)} ms, onnxruntime ${(t2 - t1).toFixed(0)} ms`);
    return ref;
  };

  try {
    const rng = seeded('medtune-parity');
    const image = randomArray([1, 3, S, S], rng);
    const enc = await check('imageEncoder', { image });

    const box = [0.2 * S, 0.3 * S, 0.7 * S, 0.8 * S];
    await check('maskDecoder', {
      image_embed: repeatBatch(enc.image_embed, 2),
      high_res_0: repeatBatch(enc.high_res_0, 2),
      high_res_1: repeatBatch(enc.high_res_1, 2),
      point_coords: { data: Float32Array.from([...box, ...box.map((v) => v * 0.9)]), shape: [2, 2, 2] },
      point_labels: { data: Float32Array.from([2, 3, 2, 3]), shape: [2, 2] },
      mask_input: randomArray([2, 1, 4 * h, 4 * h], rng),
      has_mask_input: { data: Float32Array.from([1, 0]), shape: [2] },
    });

    const highRes = { high_res_0: enc.high_res_0, high_res_1: enc.high_res_1 };
    const heads = await check(
      'samHeads',
      {
        pix_feat: enc.image_embed,
        ...highRes,
        point_coords: { data: Float32Array.from(box), shape: [1, 2, 2] },
        point_labels: { data: Float32Array.from([2, 3]), shape: [1, 2] },
      },
      'sam_heads[box]',
    );
    const tracked = await check(
      'samHeads',
      {
        pix_feat: enc.vision_feats,
        ...highRes,
        point_coords: { data: new Float32Array(2), shape: [1, 1, 2] },
        point_labels: { data: Float32Array.from([-1]), shape: [1, 1] },
      },
      'sam_heads[no prompt]',
    );

    const disk = new Float32Array(S * S);
    for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) disk[y * S + x] = (x - 0.45 * S) ** 2 + (y - 0.55 * S) ** 2 < (0.2 * S) ** 2 ? 1 : 0;
    const asOutput = await check('maskAsOutput', { vision_feats: enc.vision_feats, ...highRes, mask: { data: disk, shape: [1, 1, S, S] } });

    const memFeeds = { vision_feats: enc.vision_feats, pred_masks: heads.pred_masks, object_score_logits: heads.object_score_logits };
    const mem = await check('memoryEncoderBinarized', memFeeds);
    const memSig = await check('memoryEncoder', { ...memFeeds, pred_masks: asOutput.pred_masks, object_score_logits: asOutput.object_score_logits });

    // memory attention: three memories (a conditioning one and two earlier slices), three pointers
    const memories = [
      { features: mem.maskmem_features, posEnc: mem.maskmem_pos_enc, tPos: 0 },
      { features: memSig.maskmem_features, posEnc: memSig.maskmem_pos_enc, tPos: config.num_maskmem - 1 },
      { features: randomArray([1, h, h, Cm], rng), posEnc: mem.maskmem_pos_enc, tPos: 1 },
    ];
    const ptrs = [heads.obj_ptr, tracked.obj_ptr_multi, asOutput.obj_ptr];
    const tDiffs = [3, 1, 2];
    const tDiffMax = Math.min(10, config.max_obj_ptrs_in_encoder) - 1;
    const cat = (arrs: HostArray[], shape: number[]): HostArray => {
      const data = new Float32Array(arrs.reduce((n, a) => n + a.data.length, 0));
      let o = 0;
      for (const a of arrs) {
        data.set(a.data, o);
        o += a.data.length;
      }
      return { data, shape };
    };
    const onehot = new Float32Array(memories.length * config.num_maskmem);
    memories.forEach((m, i) => (onehot[i * config.num_maskmem + config.num_maskmem - m.tPos - 1] = 1));
    const attnFeeds: Feeds = {
      vision_feats: enc.vision_feats,
      memory: cat(memories.map((m) => m.features), [memories.length, h, h, Cm]),
      memory_pos_enc: cat(memories.map((m) => m.posEnc), [memories.length, h, h, Cm]),
      memory_tpos: { data: onehot, shape: [memories.length, config.num_maskmem] },
    };
    if (config.use_obj_ptrs_in_encoder) {
      attnFeeds.obj_ptrs = cat(ptrs, [ptrs.length, C]);
      attnFeeds.obj_ptr_tpos = { data: Float32Array.from(tDiffs.map((t) => t / tDiffMax)), shape: [ptrs.length, 1] };
    }
    const t0 = performance.now();
    const referenceTensor = tf.tidy(() => {
      const t = (a: HostArray) => tf.tensor(a.data, a.shape);
      const frame = {
        visionFeats: tf.transpose(t(enc.vision_feats), [0, 2, 3, 1]),
        visionPos: model.imageEncoder.neck.positionEncoding.forward(ops, h, h),
        highRes: [t(enc.high_res_0), t(enc.high_res_1)] as [tf.Tensor, tf.Tensor],
      };
      const context = {
        memories: memories.map((m) => ({ features: t(m.features), posEnc: t(m.posEnc), tPos: m.tPos })),
        objPtrs: config.use_obj_ptrs_in_encoder ? ptrs.map((p, i) => ({ ptr: t(p), tDiff: tDiffs[i] })) : [],
        tDiffMax,
      };
      return tf.transpose(model.conditionOnMemory(ops, frame, context), [0, 3, 1, 2]);
    });
    const reference: HostArray = { data: Float32Array.from(await referenceTensor.data()), shape: [...referenceTensor.shape] };
    referenceTensor.dispose();
    const t1 = performance.now();
    const ours = await runSession(await session('memoryAttention'), attnFeeds);
    opts.log?.(`  memory_attention: TypeScript ${(t1 - t0).toFixed(0)} ms, onnxruntime ${(performance.now() - t1).toFixed(0)} ms`);
    entries.push(compareTensors('memory_attention', 'pix_feat', ours.pix_feat, reference, tolerance));
  } finally {
    for (const t of tfParams.values()) t.dispose();
    for (const s of sessions.values()) await s.release();
  }
  return { tolerance, ok: entries.every((e) => e.ok), backend: tf.getBackend(), onnxruntime: ortEnv.versions.common, entries };
}
