/**
 * data.val_fraction: a seeded patient split of data.train, written to the run directory, reused
 * on resume, refused when the settings change under an existing split.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ensureSyntheticVolumes } from '../src/data/synthetic.js';
import { splitByPatient } from '../src/data/split.js';
import { train } from '../src/train/train.js';
import { tinyConfig, tmpRunDir } from './helpers/train-fixture.js';

describe('data.val_fraction', () => {
  it('splits data.train by patient (seeded), keeps the split in split.json and reuses it on resume', async () => {
    const dir = tmpRunDir('patients');
    ensureSyntheticVolumes(dir, { count: 4, depth: 2, size: 64, seed: 'split/patients', organs: 2 });
    const ids = readdirSync(dir).filter((f) => f.endsWith('.npz')).map((f) => f.replace(/\.npz$/, ''));
    const config = tinyConfig({ train: dir, val: null as unknown as string }, { max_steps: 1, val_every: 0, save_every: 0 });
    config.data.val = null;
    config.data.val_fraction = 0.25;
    config.data.split_seed = 3;
    const runDir = tmpRunDir('split');
    const first = await train({ config, runDir, quiet: true, handleSignals: false });
    const split = JSON.parse(readFileSync(join(runDir, 'split.json'), 'utf8'));
    expect(split).toEqual(splitByPatient(ids, 0.25, 3));
    expect(split.val).toHaveLength(1);
    // a validation set exists though data.val is unset: before training and at the last step
    expect(first.valDice.map((v) => v.step)).toEqual([0, 1]);

    const longer = { ...config, train: { ...config.train, max_steps: 2 } };
    const resumed = await train({ config: longer, runDir, resume: 'auto', quiet: true, handleSignals: false });
    expect(resumed.step).toBe(2);
    expect(JSON.parse(readFileSync(join(runDir, 'split.json'), 'utf8'))).toEqual(split);

    const reseeded = { ...config, data: { ...config.data, split_seed: 4 } };
    await expect(train({ config: reseeded, runDir, resume: 'auto', quiet: true, handleSignals: false })).rejects.toThrow(
      /split\.json was made with split seed 3 and val_fraction 0\.25, not 4 and 0\.25/,
    );
    const both = { ...config, data: { ...config.data, val: dir } };
    await expect(train({ config: both, runDir: tmpRunDir('both'), quiet: true, handleSignals: false })).rejects.toThrow(/leave data.val unset/);
  });
});
