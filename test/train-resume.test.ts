/**
 * The training loop end to end on a tiny model (cpu backend): a run stopped at step k and resumed
 * with --resume auto ends with the same losses and bitwise-identical weights as the same run
 * uninterrupted; the live tensor count stays flat; checkpoints and logs are where they belong;
 * a non-finite loss stops the run and leaves the last good checkpoint.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensorsHeader } from '../src/io/safetensors.js';
import { findCheckpoint, loadCheckpoint } from '../src/train/checkpoint.js';
import { NonFiniteLossError, train } from '../src/train/train.js';
import { tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

const data = tinyData();

describe('training loop', () => {
  it('resumes bit for bit: stopped at step 2 and resumed equals uninterrupted', async () => {
    const config = tinyConfig(data);
    const tensorCounts: number[] = [];
    const whole = await train({
      config,
      runDir: tmpRunDir('whole'),
      quiet: true,
      handleSignals: false,
      onStep: (s) => tensorCounts.push(s.numTensors),
    });
    expect(whole.step).toBe(4);
    expect(whole.losses).toHaveLength(4);
    // live tensors flat across steps (the optimizer's moments exist from step 1 on)
    expect(new Set(tensorCounts).size).toBe(1);

    const runDir = tmpRunDir('split');
    const first = await train({ config, runDir, quiet: true, handleSignals: false, stopAfterStep: 2 });
    expect(first.interrupted).toBe(true);
    expect(first.step).toBe(2);
    const second = await train({ config, runDir, resume: 'auto', quiet: true, handleSignals: false });
    expect(second.step).toBe(4);

    const losses = [...first.losses, ...second.losses];
    expect(losses).toEqual(whole.losses);
    console.log(`losses uninterrupted ${whole.losses.map((l) => l.toFixed(6)).join(', ')}; stopped at 2 and resumed: identical`);

    const a = readFileSync(join(whole.runDir, 'checkpoints', 'latest', 'model.safetensors'));
    const b = readFileSync(join(runDir, 'checkpoints', 'latest', 'model.safetensors'));
    expect(Buffer.compare(a, b)).toBe(0);
    const oa = readFileSync(join(whole.runDir, 'checkpoints', 'latest', 'optimizer.safetensors'));
    const ob = readFileSync(join(runDir, 'checkpoints', 'latest', 'optimizer.safetensors'));
    expect(Buffer.compare(oa, ob)).toBe(0);
    expect(second.valDice.map((v) => v.dice)).toEqual(whole.valDice.filter((v) => v.step > 2).map((v) => v.dice));

    // layout: latest, best, the newest step dir only (keep_last 1), full state dict with official keys
    const ckpts = readdirSync(join(runDir, 'checkpoints')).sort();
    expect(ckpts).toEqual(['best', 'latest', 'step-000004']);
    const keys = [...readSafetensorsHeader(join(runDir, 'checkpoints', 'latest', 'model.safetensors')).keys()];
    expect(keys).toContain('sam_prompt_encoder.point_embeddings.0.weight');
    expect(keys).toContain('image_encoder.trunk.pos_embed');
    const latest = loadCheckpoint(findCheckpoint(runDir)!);
    expect(latest.state.step).toBe(4);
    expect(latest.configYaml).toContain('max_steps: 4');

    // metrics.jsonl: one train line per step (the resumed run dropped nothing and repeated nothing), val lines
    const lines = readFileSync(join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.filter((l) => 'loss' in l).map((l) => l.step)).toEqual([1, 2, 3, 4]);
    expect(lines.filter((l) => 'val_dice' in l).map((l) => l.step)).toEqual([0, 2, 4]);
    expect(Object.keys(lines.find((l) => 'loss' in l)).sort()).toEqual(['bce', 'dice', 'loss', 'lr', 'step']);
    expect(readdirSync(join(runDir, 'tensorboard')).filter((f) => f.startsWith('events.out.tfevents.')).length).toBeGreaterThan(0);
    expect(existsSync(join(runDir, 'config.yaml'))).toBe(true);
  });

  it('stops on a non-finite loss without updating, keeping the last good checkpoint', async () => {
    const runDir = tmpRunDir('nan');
    const config = tinyConfig(data, { lr: 1e30, grad_clip: null, warmup_steps: 0, min_lr: 1e30, save_every: 1, val_every: 0, max_steps: 6 });
    await expect(train({ config, runDir, quiet: true, handleSignals: false })).rejects.toThrow(NonFiniteLossError);
    const latest = findCheckpoint(runDir);
    expect(latest).toBeDefined();
    const { state } = loadCheckpoint(latest!);
    expect(state.step).toBeGreaterThanOrEqual(1);
    expect(state.step).toBeLessThan(6);
  });
});
