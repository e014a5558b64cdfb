/**
 * The golden fixture checked through an ONNX export of its weights (for
 * `scripts/golden-check.ts <fixture-dir> --onnx` and the tests): the official forward outputs
 * (expected.npz) through the exported image encoder and mask decoder, and 3D propagation
 * (propagation.npz) through the exported memory graphs, with the fixture README's tolerances.
 * Runs on onnxruntime-node only.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readNpz, type NpyArray } from '../io/npz.js';
import { readSafetensors } from '../io/safetensors.js';
import { resolveModelConfig } from '../model/config.js';
import { checkGoldenPropagation, FORWARD_TOL, maxRelError, PROPAGATION_AGREEMENT, PROPAGATION_TOL } from '../model/reference-compare.js';
import { exportGraphs } from './export.js';
import { OnnxModel, OrtFrameGraphs, runSession } from './runtime.js';

export interface GoldenLine {
  name: string;
  value: number;
  tolerance: number;
  ok: boolean;
  what: string;
}


function f32(a: NpyArray): Float32Array {
  return a.data as Float32Array;
}

/**
 * Export the fixture's weights (into `exportDir`, or a temporary folder) and compare. `log`
 * receives one line per check.
 */
export async function onnxGoldenCheck(
  fixtureDir: string,
  opts: { exportDir?: string; threads?: number; log?: (line: string) => void } = {},
): Promise<{ lines: GoldenLine[]; failed: number }> {
  const meta = JSON.parse(readFileSync(join(fixtureDir, 'meta.json'), 'utf8'));
  const config = resolveModelConfig(meta.model_config);
  const tmp = opts.exportDir ? undefined : mkdtempSync(join(tmpdir(), 'medtune-golden-onnx-'));
  const dir = opts.exportDir ?? tmp!;
  const lines: GoldenLine[] = [];
  const record = (name: string, value: number, tolerance: number, what: string, okWhen: 'below' | 'above' = 'below') => {
    const ok = okWhen === 'below' ? value <= tolerance : value >= tolerance;
    lines.push({ name, value, tolerance, ok, what });
    opts.log?.(`${ok ? 'ok  ' : 'FAIL'} onnx ${name}: ${what} ${value.toExponential(3)} (${okWhen === 'below' ? '<=' : '>='} ${tolerance})`);
  };
  try {
    exportGraphs(config, readSafetensors(join(fixtureDir, 'weights.safetensors')), dir);
    const model = OnnxModel.open(dir, { threads: opts.threads });
    const inputs = readNpz(join(fixtureDir, 'inputs.npz'));
    const expected = readNpz(join(fixtureDir, 'expected.npz'));
    const { h } = model.geometry;
    const enc = await runSession(await model.session('imageEncoder'), { image: { data: f32(inputs.image), shape: inputs.image.shape } });
    for (const [ours, ref] of [['image_embed', 'image_embed'], ['high_res_0', 'high_res.0'], ['high_res_1', 'high_res.1']]) {
      record(`image_encoder/${ours}`, maxRelError(enc[ours].data, f32(expected[ref])), FORWARD_TOL, 'rel max err');
    }
    const dec = await runSession(await model.session('maskDecoder'), {
      image_embed: enc.image_embed,
      high_res_0: enc.high_res_0,
      high_res_1: enc.high_res_1,
      point_coords: { data: f32(inputs.box), shape: [1, 2, 2] },
      point_labels: { data: Float32Array.from([2, 3]), shape: [1, 2] },
      mask_input: { data: new Float32Array(16 * h * h), shape: [1, 1, 4 * h, 4 * h] },
      has_mask_input: { data: new Float32Array(1), shape: [1] },
    });
    const pairs: Array<[string, string]> = [
      ['low_res_masks', 'single.masks'],
      ['iou_predictions', 'single.iou'],
      ['sam_tokens', 'single.tokens'],
      ['object_score_logits', 'single.obj'],
      ['low_res_masks_multi', 'multi.masks'],
      ['iou_predictions_multi', 'multi.iou'],
      ['sam_tokens_multi', 'multi.tokens'],
    ];
    for (const [ours, ref] of pairs) record(`mask_decoder/${ours}`, maxRelError(dec[ours].data, f32(expected[ref])), FORWARD_TOL, 'rel max err');

    const propFile = join(fixtureDir, 'propagation.npz');
    if (existsSync(propFile)) {
      for (const line of await checkGoldenPropagation(new OrtFrameGraphs(model), readNpz(propFile))) {
        record(`propagation/${line.name}`, line.error, PROPAGATION_TOL, 'rel max err');
        record(`propagation/${line.name}`, line.agreement, PROPAGATION_AGREEMENT, 'mask agreement', 'above');
      }
    }
    await model.release();
  } finally {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
  return { lines, failed: lines.filter((l) => !l.ok).length };
}
