/**
 * Training pointed straight at a Decathlon / nnU-Net folder: its cases are prepared once into the
 * run directory with dataset.json's modality and label names, split by patient, and trained on; a
 * resumed run reuses what was prepared.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeNifti } from '../src/data/nifti.js';
import { readNpz } from '../src/io/npz.js';
import { train } from '../src/train/train.js';
import { tinyConfig, tmpRunDir } from './helpers/train-fixture.js';

/** Four MR "patients" (D, H, W) = (3, 32, 32): two labels side by side on every slice. */
function decathlonFolder(dir: string): void {
  mkdirSync(join(dir, 'imagesTr'), { recursive: true });
  mkdirSync(join(dir, 'labelsTr'), { recursive: true });
  const ids = ['pat_1', 'pat_2', 'pat_3', 'pat_4'];
  const training = ids.map((id) => ({ image: `./imagesTr/${id}.nii.gz`, label: `./labelsTr/${id}.nii.gz` }));
  writeFileSync(join(dir, 'dataset.json'), JSON.stringify({ modality: { '0': 'MRI' }, labels: { '0': 'background', '1': 'Anterior', '2': 'Posterior' }, training }));
  const [D, H, W] = [3, 32, 32];
  ids.forEach((id, p) => {
    const image = new Int16Array(D * H * W);
    const label = new Uint8Array(D * H * W);
    for (let i = 0; i < image.length; i++) {
      const [y, x] = [Math.floor(i / W) % H, i % W];
      const inY = y >= 8 + p && y < 22 + p;
      label[i] = inY && x >= 4 && x < 14 ? 1 : inY && x >= 16 && x < 28 ? 2 : 0;
      image[i] = 100 + 300 * label[i] + ((i * 37) % 50);
    }
    writeFileSync(join(dir, 'imagesTr', `${id}.nii.gz`), encodeNifti(image, [D, H, W]));
    writeFileSync(join(dir, 'labelsTr', `${id}.nii.gz`), encodeNifti(label, [D, H, W]));
  });
}

describe('training on a Decathlon folder', () => {
  it('prepares it once into the run directory, keeps its label names, splits by patient and trains', async () => {
    const runDir = tmpRunDir('decathlon');
    const dec = join(runDir, '..', `${runDir.split('/').pop()}-dataset`);
    decathlonFolder(dec);
    const config = tinyConfig({ train: dec, val: dec }, { max_steps: 1, val_every: 1, save_every: 0 });
    config.data.val = null;
    config.data.val_fraction = 0.25;
    config.data.augment = { flip_h: false, flip_v: false, max_rotation: 0 };
    const log: string[] = [];
    const spy = (await import('vitest')).vi.spyOn(console, 'log').mockImplementation((m: string) => void log.push(String(m)));
    try {
      const first = await train({ config, runDir, handleSignals: false, progress: false });
      expect(first.step).toBe(1);
      const prepared = join(runDir, 'prepared-train');
      expect(readdirSync(prepared).filter((f) => f.endsWith('.npz')).sort()).toEqual(['pat_1.npz', 'pat_2.npz', 'pat_3.npz', 'pat_4.npz']);
      expect(JSON.parse(readFileSync(join(prepared, 'labels.json'), 'utf8'))).toEqual({ '1': 'Anterior', '2': 'Posterior' });
      // MR recipe: clipped to percentiles of the positive voxels and rescaled to 0..255
      const npz = readNpz(join(prepared, 'pat_1.npz'));
      expect(Math.max(...(npz.imgs.data as Uint8Array))).toBe(255);
      expect(log.some((l) => /data\.train is a Decathlon folder: preparing its 4 case\(s\) \(MRI -> MR\)/.test(l))).toBe(true);
      expect(log.some((l) => /patients: 3 train, 1 validation/.test(l))).toBe(true);
      // validation per label, by the names of dataset.json
      expect(Object.keys(first.valDice.at(-1)!.perLabel ?? {}).sort()).toEqual(['Anterior', 'Posterior']);
      expect(existsSync(`${prepared}.partial`)).toBe(false);

      // a resumed run reads what was prepared instead of preparing again
      log.length = 0;
      const resumed = await train({ config: { ...config, train: { ...config.train, max_steps: 2 } }, runDir, resume: 'auto', handleSignals: false, progress: false });
      expect(resumed.step).toBe(2);
      expect(log.some((l) => /preparing/.test(l))).toBe(false);
    } finally {
      spy.mockRestore();
    }
  }, 120_000);
});
