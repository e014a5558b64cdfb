/**
 * `medtune train` as a user runs it: SIGINT during training finishes the step, saves `latest`
 * and exits 0; `--resume auto` then continues from that step. A config error stops before the run.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { findCheckpoint, loadCheckpoint } from '../src/train/checkpoint.js';
import { configToYaml } from '../src/train/config.js';
import { tinyConfig, tinyData, tmpRunDir } from './helpers/train-fixture.js';

const ROOT = join(import.meta.dirname, '..');
// bin/medtune.js (what `npx medtune` runs) loads tsx in-process; tsx's own CLI would relay the
// signal to a child and SIGKILL it when the child is busy in a step for more than 30 ms
const CLI = [join(ROOT, 'bin', 'medtune.js')];

describe('medtune train (process)', () => {
  it('on SIGINT finishes the step, saves latest and exits 0', async () => {
    const dir = tmpRunDir('signal');
    const configPath = join(dir, 'tiny.yaml');
    writeFileSync(configPath, configToYaml(tinyConfig(tinyData(), { max_steps: 40, val_every: 0, save_every: 0 })));
    const runDir = join(dir, 'run');
    const child = spawn(process.execPath, [...CLI, 'train', '--config', configPath, '--out', runDir], { cwd: ROOT });
    let output = '';
    const code = await new Promise<number | null>((resolve) => {
      let sent = false;
      const onData = (d: Buffer) => {
        output += d.toString();
        if (!sent && /step 2\/40/.test(output)) {
          sent = true;
          child.kill('SIGINT');
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.on('exit', (c) => resolve(c));
    });
    expect(code, output).toBe(0);
    expect(output).toMatch(/SIGINT: finishing step/);
    expect(output).toMatch(/stopped at step \d+/);
    const latest = findCheckpoint(runDir);
    expect(latest).toBeDefined();
    const { state } = loadCheckpoint(latest!);
    expect(state.step).toBeGreaterThanOrEqual(2);
    expect(state.step).toBeLessThan(40);
  });

  it('rejects an unknown config key before the run starts, naming it', () => {
    const dir = tmpRunDir('badcfg');
    const configPath = join(dir, 'bad.yaml');
    writeFileSync(configPath, 'data:\n  train: x\ntrain:\n  max_steps: 2\n  lr: 0.001\n  lr_decay: 3\n');
    const r = spawnSync(process.execPath, [...CLI, 'train', '--config', configPath, '--out', join(dir, 'run')], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/train\.lr_decay: unknown key/);
    expect(existsSync(join(dir, 'run'))).toBe(false);
  });
});
