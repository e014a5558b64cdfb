// Decathlon / nnU-Net folders (both dataset.json dialects), modality words, and the patient split.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { modalityFamily, readDecathlon } from '../src/data/decathlon.js';
import { splitByPatient } from '../src/data/split.js';

function folder(json: object, images: string[], labels: string[]): string {
  const root = mkdtempSync(join(tmpdir(), 'medtune-decathlon-'));
  mkdirSync(join(root, 'imagesTr'));
  mkdirSync(join(root, 'labelsTr'));
  writeFileSync(join(root, 'dataset.json'), JSON.stringify(json));
  for (const f of images) writeFileSync(join(root, 'imagesTr', f), 'x');
  for (const f of labels) writeFileSync(join(root, 'labelsTr', f), 'x');
  return root;
}

describe('modalityFamily', () => {
  it('maps the words data sets use', () => {
    expect(['MRI', 'T1', 'T2w', 'FLAIR', 'mr', 'ADC'].map(modalityFamily)).toEqual(Array(6).fill('MR'));
    expect(['CT', 'ncct'].map(modalityFamily)).toEqual(['CT', 'CT']);
    expect(['PET', 'FDG-PET'].map(modalityFamily)).toEqual(['PET', 'PET']);
  });
  it('names an unknown word and says what to do', () => {
    expect(() => modalityFamily('ultrasound')).toThrow(/'ultrasound'.*--modality CT, MR or PET/);
  });
});

describe('readDecathlon', () => {
  it('reads the Decathlon dialect: modality, label names, the training list, missing files named', () => {
    const root = folder(
      {
        name: 'Hippocampus',
        modality: { '0': 'MRI' },
        labels: { '0': 'background', '1': 'Anterior', '2': 'Posterior' },
        training: [
          { image: './imagesTr/hippocampus_001.nii.gz', label: './labelsTr/hippocampus_001.nii.gz' },
          { image: './imagesTr/hippocampus_003.nii.gz', label: './labelsTr/hippocampus_003.nii.gz' },
        ],
      },
      ['hippocampus_001.nii.gz', 'hippocampus_003.nii.gz'],
      ['hippocampus_001.nii.gz'],
    );
    const ds = readDecathlon(root);
    expect(ds.name).toBe('Hippocampus');
    expect(ds.modalityWord).toBe('MRI');
    expect([...ds.labelNames]).toEqual([[1, 'Anterior'], [2, 'Posterior']]);
    expect(ds.cases.map((c) => c.id)).toEqual(['hippocampus_001']);
    expect(ds.missing).toEqual([{ id: 'hippocampus_003', path: join(root, 'labelsTr', 'hippocampus_003.nii.gz') }]);
  });

  it('reads the nnU-Net v2 dialect: channel names, labels by name, cases paired by the _0000 suffix', () => {
    const root = folder(
      { channel_names: { '0': 'T2' }, labels: { background: 0, prostate: 1 }, file_ending: '.nii.gz' },
      ['p1_0000.nii.gz', 'p1_0001.nii.gz', 'p2_0000.nii.gz'],
      ['p1.nii.gz', 'p2.nii.gz'],
    );
    const ds = readDecathlon(root);
    expect(ds.modalityWord).toBe('T2');
    expect([...ds.labelNames]).toEqual([[1, 'prostate']]);
    expect(ds.cases.map((c) => [c.id, c.image.endsWith('p1_0000.nii.gz') || c.image.endsWith('p2_0000.nii.gz')])).toEqual([
      ['p1', true],
      ['p2', true],
    ]);
  });

  it('names what is wrong with a folder', () => {
    const root = mkdtempSync(join(tmpdir(), 'medtune-decathlon-'));
    expect(() => readDecathlon(root)).toThrow(/no dataset.json/);
    writeFileSync(join(root, 'dataset.json'), '{ not json');
    expect(() => readDecathlon(root)).toThrow(/dataset.json: not valid JSON/);
    writeFileSync(join(root, 'dataset.json'), JSON.stringify({ modality: { '0': 'CT' } }));
    expect(() => readDecathlon(root)).toThrow(/dataset.json: labels/);
    writeFileSync(join(root, 'dataset.json'), JSON.stringify({ modality: { '0': 'CT' }, labels: { '0': 'background' } }));
    expect(() => readDecathlon(root)).toThrow(/no imagesTr\/ folder/);
    const regions = folder({ channel_names: { '0': 'CT' }, labels: { background: 0, whole: [1, 2] } }, [], []);
    expect(() => readDecathlon(regions)).toThrow(/label 'whole' is a region/);
  });
});

describe('splitByPatient', () => {
  const ids = Array.from({ length: 50 }, (_, i) => `p${String(i).padStart(3, '0')}`);
  it('is seeded, disjoint, complete and independent of listing order', () => {
    const a = splitByPatient(ids, 0.1, 7);
    expect(a.val).toHaveLength(5);
    expect(a.train).toHaveLength(45);
    expect(new Set([...a.train, ...a.val]).size).toBe(50);
    expect(splitByPatient(ids.slice().reverse(), 0.1, 7)).toEqual(a);
    expect(splitByPatient(ids, 0.1, 8).val).not.toEqual(a.val);
  });
  it('keeps at least one validation patient and one training patient', () => {
    expect(splitByPatient(['a', 'b', 'c'], 0.01, 1).val).toHaveLength(1);
    expect(splitByPatient(['a', 'b'], 0, 1).val).toHaveLength(0);
    expect(() => splitByPatient(['a'], 0.5, 1)).toThrow(/no training patient/);
    expect(() => splitByPatient(['a', 'a'], 0.5, 1)).toThrow(/unique/);
  });
});
