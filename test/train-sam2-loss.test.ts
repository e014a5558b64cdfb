/**
 * `train.loss: sam2` end to end on the tiny model: the logged total is 20 focal + Dice + IoU +
 * object score, and the IoU and object-score heads train (the seed recipe's Dice + BCE never
 * reaches them: they keep their initial values).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.js';
import { resolveModelChoice } from '../src/model/config.js';
import { SAM2Base } from '../src/model/sam2.js';
import { initParams } from '../src/model/weights.js';
import { train } from '../src/train/train.js';
import { tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

const data = tinyData();
const HEADS = ['sam_mask_decoder.iou_prediction_head.layers.0.weight', 'sam_mask_decoder.pred_obj_score_head.layers.0.weight'];

async function run(loss: 'sam2' | 'dice_bce') {
  const config = tinyConfig(data, { loss, max_steps: 2, val_every: 0, save_every: 0 });
  const result = await train({ config, runDir: tmpRunDir(loss), quiet: true, handleSignals: false });
  const lines = readFileSync(join(result.runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const weights = readSafetensors(join(result.runDir, 'checkpoints', 'latest', 'model.safetensors'));
  return { lines: lines.filter((l) => 'loss' in l), weights };
}

describe('train.loss', () => {
  it('sam2: logs its four terms, sums them 20:1:1:1 and trains the IoU and object-score heads', async () => {
    const sam2 = await run('sam2');
    const seed = await run('dice_bce');
    expect(sam2.lines).toHaveLength(2);
    for (const l of sam2.lines) {
      expect(Object.keys(l)).toEqual(['step', 'loss', 'focal', 'dice', 'iou', 'object_score', 'lr']);
      expect(l.loss).toBeCloseTo(20 * l.focal + l.dice + l.iou + l.object_score, 4);
    }
    expect(Object.keys(seed.lines[0])).toEqual(['step', 'loss', 'dice', 'bce', 'lr']);
    // both runs start from the same seeded init: only the sam2 loss moves the heads
    const config = tinyConfig(data);
    const init = initParams(new SAM2Base(resolveModelChoice(config.model)).paramSpecs(), config.seed);
    for (const key of HEADS) {
      const changed = (w: typeof init) => w.get(key)!.data.some((v, i) => v !== init.get(key)!.data[i]);
      expect(changed(sam2.weights), key).toBe(true);
      expect(changed(seed.weights), key).toBe(false);
    }
  });
});
