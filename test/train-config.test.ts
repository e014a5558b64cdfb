import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { configToYaml, loadConfig, parseConfig, parseOverride } from '../src/train/config.js';

function writeYaml(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
  const path = join(dir, 'run.yaml');
  writeFileSync(path, text);
  return path;
}

const BASE = `
seed: 1
data:
  train: data/train
  val: [a.npz, /abs/b.npz]
train:
  max_steps: 100
  lr: 1.0e-4
`;

describe('training config', () => {
  it('fills defaults and resolves relative paths against the config file', () => {
    const path = writeYaml(BASE);
    const cfg = loadConfig(path);
    const dir = join(path, '..');
    expect(cfg.data.train).toBe(join(dir, 'data/train'));
    expect(cfg.data.val).toEqual([join(dir, 'a.npz'), '/abs/b.npz']);
    expect(cfg.model.trainable).toEqual(['image_encoder', 'sam_mask_decoder']);
    expect(cfg.model.preset).toBe('sam2.1-tiny');
    expect(cfg.train.batch_size).toBe(16);
    expect(cfg.data.augment).toEqual({ flip_h: false, flip_v: false, max_rotation: 0 });
    // the resolved YAML validates as it is
    expect(parseConfig(JSON.parse(JSON.stringify(cfg)))).toEqual(cfg);
    expect(configToYaml(cfg)).toContain('max_steps: 100');
  });

  it('names the key path of an unknown key or a wrong type', () => {
    expect(() => loadConfig(writeYaml(BASE + '  max_stepz: 3\n'))).toThrow(/train\.max_stepz: unknown key/);
    expect(() => loadConfig(writeYaml(BASE.replace('max_steps: 100', 'max_steps: many')))).toThrow(/train\.max_steps: /);
    expect(() => loadConfig(writeYaml(BASE + 'model:\n  trainable: [1]\n'))).toThrow(/model\.trainable\[0\]: /);
    expect(() => loadConfig(writeYaml(BASE + 'extra: 1\n'))).toThrow(/extra: unknown key/);
    expect(() => loadConfig('/no/such/file.yaml')).toThrow(/config file not found/);
  });

  it('applies --set overrides as YAML scalars, with paths relative to the working directory', () => {
    const cfg = loadConfig(writeYaml(BASE), {
      overrides: ['train.max_steps=20', 'train.grad_clip=0.1', 'model.checkpoint=ck.pt', 'data.augment.flip_h=true', 'backend=wasm'],
      cwd: '/work/x',
    });
    expect(cfg.train.max_steps).toBe(20);
    expect(cfg.train.grad_clip).toBe(0.1);
    expect(cfg.model.checkpoint).toBe('/work/x/ck.pt');
    expect(cfg.data.augment.flip_h).toBe(true);
    expect(cfg.backend).toBe('wasm');
    expect(() => loadConfig(writeYaml(BASE), { overrides: ['train.nope=1'] })).toThrow(/train\.nope: unknown key/);
    expect(() => loadConfig(writeYaml(BASE), { overrides: ['train.lr=abc'] })).toThrow(/train\.lr: /);
    expect(parseOverride('data.val=[a, b]')).toEqual(['data.val', ['a', 'b']]);
    expect(() => parseOverride('novalue')).toThrow(/key.path=value/);
  });
});
