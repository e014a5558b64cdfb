import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { readNpz, type NpyArray } from '../src/io/npz.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { resolveModelConfig, SAM2_1_TINY, type Sam2Config } from '../src/model/config.js';
import { roundToBfloat16, type Sam2FrameGraphs } from '../src/model/frame-graphs.js';
import { memorySettings, selectMemory } from '../src/model/memory-selection.js';
import { antialiasBilinearMatrix } from '../src/model/resize.js';
import { SAM2Base } from '../src/model/sam2.js';
import { MLP } from '../src/model/sam2-utils.js';
import { TfOps } from '../src/model/tf-ops.js';
import { relMaxError } from './helpers/golden.js';
import { checkGoldenPropagation, PROPAGATION_AGREEMENT, PROPAGATION_TOL } from '../src/model/reference-compare.js';
import { TfFrameGraphs } from '../src/model/tf-frame-graphs.js';
import { largestComponent, unionMasks, type SliceResult } from '../src/model/video-output.js';
import { VolumePropagator } from '../src/model/video-predictor.js';

const GOLDEN = join(import.meta.dirname, 'fixtures', 'golden-small256');

describe('memory selection (official _prepare_memory_conditioned_features, eval mode)', () => {
  const settings = memorySettings(SAM2_1_TINY);
  const run = (frameIdx: number, nonCond: number[], reverse: boolean, numFrames = 5) =>
    selectMemory({ frameIdx, condFrames: [2], hasNonCond: (t) => nonCond.includes(t), numFrames, reverse, settings });

  it('forward from slice 2 of 5', () => {
    expect(run(3, [], false)).toEqual({
      memories: [{ frameIdx: 2, tPos: 0, cond: true }],
      objPtrs: [{ frameIdx: 2, tDiff: 1, cond: true }],
      tDiffMax: 4,
    });
    expect(run(4, [3], false)).toEqual({
      memories: [
        { frameIdx: 2, tPos: 0, cond: true },
        { frameIdx: 3, tPos: 6, cond: false },
      ],
      objPtrs: [
        { frameIdx: 2, tDiff: 2, cond: true },
        { frameIdx: 3, tDiff: 1, cond: false },
      ],
      tDiffMax: 4,
    });
  });

  it('reverse from slice 2: signed distances, past = later slices', () => {
    expect(run(0, [1], true)).toEqual({
      memories: [
        { frameIdx: 2, tPos: 0, cond: true },
        { frameIdx: 1, tPos: 6, cond: false },
      ],
      objPtrs: [
        { frameIdx: 2, tDiff: 2, cond: true },
        { frameIdx: 1, tDiff: 1, cond: false },
      ],
      tDiffMax: 4,
    });
  });

  it('long volumes: num_maskmem - 1 previous slices, max_obj_ptrs - 1 previous pointers, future cond pointers excluded', () => {
    const nonCond = Array.from({ length: 40 }, (_, i) => i).filter((t) => t !== 2);
    const sel = run(30, nonCond, false, 100);
    expect(sel.memories.map((m) => [m.frameIdx, m.tPos])).toEqual([
      [2, 0],
      [24, 1],
      [25, 2],
      [26, 3],
      [27, 4],
      [28, 5],
      [29, 6],
    ]);
    expect(sel.objPtrs.map((p) => p.frameIdx)).toEqual([2, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15]);
    expect(sel.tDiffMax).toBe(15);
    // a conditioning slice after the current one gives no pointer with only_obj_ptrs_in_the_past_for_eval
    const back = selectMemory({ frameIdx: 1, condFrames: [2], hasNonCond: () => false, numFrames: 5, reverse: false, settings });
    expect(back.objPtrs).toEqual([]);
  });

  it('memory_temporal_stride_for_eval > 1 takes every r-th slice plus the last one', () => {
    const s = { ...settings, memoryTemporalStrideForEval: 3 };
    const sel = selectMemory({ frameIdx: 20, condFrames: [0], hasNonCond: (t) => t > 0, numFrames: 50, reverse: false, settings: s });
    // t_rel 1 -> 19; t_rel >= 2 -> floor(18/3)*3 - (t_rel-2)*3 = 18, 15, 12, 9, 6
    expect(sel.memories.map((m) => [m.frameIdx, m.tPos])).toEqual([
      [0, 0],
      [6, 1],
      [9, 2],
      [12, 3],
      [15, 4],
      [18, 5],
      [19, 6],
    ]);
  });
});

describe('VolumePropagator control flow (recording graphs)', () => {
  /** A fake Sam2FrameGraphs whose handles are strings; it records calls and checks releases. */
  function recordingGraphs(config: Sam2Config) {
    let next = 0;
    const live = new Set<string>();
    const calls: string[] = [];
    const make = (what: string) => {
      const h = `${what}#${next++}`;
      live.add(h);
      return h;
    };
    const check = (...hs: string[]) => {
      for (const h of hs) if (!live.has(h)) throw new Error(`handle ${h} used after release`);
    };
    const S = config.image_size;
    const graphs: Sam2FrameGraphs<string> = {
      config,
      async encodeImage(image) {
        calls.push(`encode(${image[0]})`);
        return { visionFeats: make('feat'), visionPos: make('pos'), highRes: [make('hr0'), make('hr1')] };
      },
      async conditionOnMemory(frame, memory) {
        check(frame.visionFeats);
        if (memory) check(...memory.memories.flatMap((m) => [m.features, m.posEnc]), ...memory.objPtrs.map((p) => p.ptr));
        calls.push(memory ? `condition(mem=${memory.memories.map((m) => m.tPos)} ptr=${memory.objPtrs.map((p) => p.tDiff)})` : 'condition(none)');
        return make('pix');
      },
      async samHeads(pix, frame, prompt, multimask) {
        check(pix, frame.highRes[0]);
        const pts = prompt.points ? `${Array.from(prompt.points.coords)}|${Array.from(prompt.points.labels)}` : '-';
        calls.push(`heads(${pts}, multimask=${multimask})`);
        return { lowResMasks: make('low'), objPtr: make('ptr'), objectScoreLogits: make('obj') };
      },
      async maskAsOutput(frame, mask) {
        check(frame.visionFeats);
        calls.push(`maskAsOutput(${mask.length === S * S})`);
        return { lowResMasks: make('low'), objPtr: make('ptr'), objectScoreLogits: make('obj') };
      },
      async encodeMemory(frame, low, obj, fromPts) {
        check(frame.visionFeats, low, obj);
        calls.push(`memory(binarize=${fromPts})`);
        return { features: make('mem'), posEnc: make('mpos') };
      },
      async readMasks(low, size) {
        check(low);
        return new Float32Array(size[0] * size[1]);
      },
      release(handles) {
        for (const h of handles) {
          if (!live.delete(h)) throw new Error(`handle ${h} released twice or unknown`);
        }
      },
    };
    return { graphs, calls, live };
  }

  const volume = (d: number, h: number, w: number) => ({ numFrames: d, height: h, width: w, image: (i: number) => new Float32Array([i]) });

  it('box prompt: scaled to model pixels, single mask, binarized memory; every handle released once', async () => {
    const { graphs, calls, live } = recordingGraphs(SAM2_1_TINY);
    const out = await new VolumePropagator(graphs).propagate(volume(4, 512, 256), { frameIdx: 1, box: [10, 20, 100, 200] });
    expect(out.map((r) => `${r.direction}.${r.frameIdx}`)).toEqual(['forward.1', 'forward.2', 'forward.3', 'reverse.1', 'reverse.0']);
    expect(calls).toEqual([
      'encode(1)',
      'condition(none)',
      // x / 256 * 1024, y / 512 * 1024
      'heads(40,40,400,400|2,3, multimask=false)',
      'memory(binarize=true)',
      'encode(2)',
      'condition(mem=0 ptr=1)',
      'heads(-, multimask=true)',
      'memory(binarize=false)',
      'encode(3)',
      'condition(mem=0,6 ptr=2,1)',
      'heads(-, multimask=true)',
      'memory(binarize=false)',
      'encode(0)',
      'condition(mem=0 ptr=1)',
      'heads(-, multimask=true)',
      'memory(binarize=false)',
    ]);
    expect([...live]).toEqual([]);
  });

  it('mask prompt is used as the output; long volumes drop memories no slice can select', async () => {
    const { graphs, calls, live } = recordingGraphs(SAM2_1_TINY);
    let maxLive = 0;
    const out = await new VolumePropagator(graphs).propagate(volume(60, 8, 8), { frameIdx: 0, mask: new Uint8Array(64).fill(1) }, {
      onSlice: () => {
        maxLive = Math.max(maxLive, live.size);
      },
    });
    expect(calls.slice(0, 3)).toEqual(['encode(0)', 'maskAsOutput(true)', 'memory(binarize=true)']);
    expect(out.length).toBe(60); // forward only: the official reverse pass from slice 0 yields nothing
    expect(calls.at(-3)).toBe('condition(mem=0,1,2,3,4,5,6 ptr=59,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15)');
    expect(maxLive).toBeLessThan(3 * 20);
    expect([...live]).toEqual([]);
  });
});

describe('host helpers', () => {
  it('antialiased 4x downsampling weights are the widened triangle filter', () => {
    const m = antialiasBilinearMatrix(16, 4);
    const row1 = Array.from(m.subarray(16, 32));
    expect(row1.slice(2, 10).map((v) => v * 4)).toEqual([0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125]);
    const row0 = Array.from(m.subarray(0, 16)).reduce((a, b) => a + b, 0);
    expect(row0).toBeCloseTo(1, 6);
  });

  it('bfloat16 rounding is round-to-nearest-even', () => {
    const x = new Float32Array([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -7 + 2 ** -9, -2.5]);
    expect(Array.from(roundToBfloat16(x))).toEqual([1, 1, 1 + 2 ** -6, 1 + 2 ** -7, -2.5]);
  });

  it('largest 26-connected component, worked out by hand', () => {
    // 4x4x4: A = three voxels joined only through corners (one component under 26-connectivity,
    // three under 6); B = two face neighbours; C = one voxel. A wins, and nothing else survives.
    const at = (z: number, y: number, x: number) => (z * 4 + y) * 4 + x;
    const a = [at(0, 0, 0), at(1, 1, 1), at(2, 2, 2)];
    const b = [at(0, 3, 3), at(0, 3, 2)];
    const c = [at(3, 0, 3)];
    const seg = new Uint8Array(64);
    for (const i of [...a, ...b, ...c]) seg[i] = 1;
    const want = new Uint8Array(64);
    for (const i of a) want[i] = 1;
    expect(Array.from(largestComponent(seg, 4, 4, 4))).toEqual(Array.from(want));
    // with A cut into single voxels (its middle gone) B is the largest
    seg[at(1, 1, 1)] = 0;
    const wantB = new Uint8Array(64);
    for (const i of b) wantB[i] = 1;
    expect(Array.from(largestComponent(seg, 4, 4, 4))).toEqual(Array.from(wantB));
    // an empty volume stays empty
    expect(largestComponent(new Uint8Array(8), 2, 2, 2).every((v) => v === 0)).toBe(true);
  });
});

describe('3D propagation reproduces the official SAM2VideoPredictor (golden-small256/propagation.npz)', () => {
  let config: Sam2Config;
  let params: Map<string, tf.Tensor>;
  let prop: Record<string, NpyArray>;

  beforeAll(async () => {
    await selectBackend('cpu', { quiet: true });
    const meta = JSON.parse(readFileSync(join(GOLDEN, 'meta.json'), 'utf8'));
    config = resolveModelConfig(meta.model_config);
    params = new Map();
    for (const [k, t] of readSafetensors(join(GOLDEN, 'weights.safetensors'))) params.set(k, tf.tensor(t.data, t.shape));
    prop = readNpz(join(GOLDEN, 'propagation.npz'));
  });

  it('a box-prompted conditioning slice gives the image path\'s masks (expected.npz single.* / multi.*)', () => {
    const model = new SAM2Base(config);
    const ops = new TfOps(params);
    const inputs = readNpz(join(GOLDEN, 'inputs.npz'));
    const expected = readNpz(join(GOLDEN, 'expected.npz'));
    const before = tf.memory().numTensors;
    const errs = tf.tidy(() => {
      const image = tf.transpose(tf.tensor(inputs.image.data as Float32Array, inputs.image.shape), [0, 2, 3, 1]);
      const frame = model.encodeFrame(ops, image);
      const points = { coords: tf.reshape(tf.tensor(inputs.box.data as Float32Array), [1, 2, 2]), labels: tf.tensor([[2, 3]]) };
      // an initial conditioning frame: no_mem_embed added, single mask for a box
      const pix = model.conditionOnMemory(ops, frame, null);
      const heads = model.forwardSamHeads(ops, { backboneFeatures: pix, highRes: frame.highRes, points, multimaskOutput: false });
      const single = { predMasks: heads.lowResMasks, objPtr: heads.objPtr };
      const memory = model.encodeNewMemory(ops, frame, heads.highResMasks, heads.objectScoreLogits, true);
      expect(memory.features.shape).toEqual([1, 16, 16, config.memory_encoder.out_dim]);
      const mlp = new MLP('obj_ptr_proj', 32, 32, 32, 3);
      const tok = (name: string, i: number) => tf.slice(tf.tensor(expected[name].data as Float32Array, expected[name].shape), [0, i, 0], [1, 1, -1]).reshape([1, -1]);
      const multi = model.forwardSamHeads(ops, { backboneFeatures: pix, highRes: frame.highRes, points, multimaskOutput: true });
      const iou = expected['multi.iou'].data as Float32Array;
      const best = iou.indexOf(Math.max(...iou));
      const multiRef = tf.slice(tf.tensor(expected['multi.masks'].data as Float32Array, expected['multi.masks'].shape), [0, best, 0, 0], [1, 1, -1, -1]);
      return [
        relMaxError(single.predMasks, expected['single.masks']),
        tf.max(tf.abs(tf.sub(single.objPtr, mlp.forward(ops, tok('single.tokens', 0))))).dataSync()[0],
        tf.max(tf.abs(tf.sub(multi.lowResMasks, multiRef))).dataSync()[0],
        tf.max(tf.abs(tf.sub(multi.objPtr, mlp.forward(ops, tok('multi.tokens', best))))).dataSync()[0],
      ];
    });
    expect(tf.memory().numTensors).toBe(before);
    console.log(`box-prompted key slice: single masks rel ${errs[0].toExponential(2)}, obj_ptr ${errs[1].toExponential(2)}; best-of-3 masks ${errs[2].toExponential(2)}, obj_ptr ${errs[3].toExponential(2)}`);
    for (const e of errs) expect(e).toBeLessThan(1e-4);
  });

  it('forward 2,3,4 and reverse 2,1,0 within tolerance, without leaking tensors', async () => {
    const graphs = new TfFrameGraphs(new SAM2Base(config), params);
    const [d, h, w] = prop.slices.shape;
    const before = tf.memory().numTensors;
    // CPU time per slice as well as wall time: the test machine may be shared
    const cpuMs = new Map<SliceResult, number>();
    let last = process.cpuUsage();
    const lines = await checkGoldenPropagation(graphs, prop, (r) => {
      const u = process.cpuUsage(last);
      cpuMs.set(r, (u.user + u.system) / 1000);
      last = process.cpuUsage();
    });
    expect(tf.memory().numTensors).toBe(before);

    expect(lines.map((l) => l.name)).toEqual(['fwd.2', 'fwd.3', 'fwd.4', 'rev.2', 'rev.1', 'rev.0']);
    const results = lines.map((l) => l.result);
    const rows = lines.map(
      (l) =>
        `${l.name}: rel max err ${l.error.toExponential(3)}, masks>0 agree ${(100 * l.agreement).toFixed(4)}%, ` +
        `${l.result.ms.toFixed(0)} ms wall, ${cpuMs.get(l.result)!.toFixed(0)} ms cpu`,
    );
    const tracked = results.filter((r) => r.frameIdx !== 2);
    const mean = (f: (r: SliceResult) => number) => (tracked.reduce((a, r) => a + f(r), 0) / tracked.length).toFixed(0);
    rows.push(`mean per propagated slice: ${mean((r) => r.ms)} ms wall, ${mean((r) => cpuMs.get(r)!)} ms cpu (backend ${tf.getBackend()})`);
    console.log(rows.join('\n'));
    for (const l of lines) {
      expect(l.error, l.name).toBeLessThanOrEqual(PROPAGATION_TOL);
      expect(l.agreement, l.name).toBeGreaterThanOrEqual(PROPAGATION_AGREEMENT);
    }

    const seg = largestComponent(unionMasks(results, d, h, w), d, h, w);
    expect(seg.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
  });
});
