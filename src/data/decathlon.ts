/**
 * Medical Segmentation Decathlon / nnU-Net folders: `imagesTr/`, `labelsTr/` and `dataset.json`.
 * Two `dataset.json` dialects exist: the Decathlon's (`modality: {"0": "MRI"}`,
 * `labels: {"1": "Anterior"}`, `training: [{image, label}]`) and nnU-Net v2's
 * (`channel_names: {"0": "T2"}`, `labels: {"Anterior": 1}`, no file list; images `case_0000`).
 * Both are read into one description: the modality in its own words and as medtune's family,
 * label names by value, and the cases whose files exist (the missing ones named, not fatal).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { z } from 'zod';

export type ModalityFamily = 'CT' | 'MR' | 'PET';

/** Words data sets use for their modality, by family (compared case-insensitively). */
const MODALITY_WORDS: Record<ModalityFamily, string[]> = {
  CT: ['ct', 'cect', 'ncct', 'cta', 'cbct'],
  MR: ['mr', 'mri', 't1', 't1w', 't1c', 't1gd', 't1ce', 't2', 't2w', 'flair', 'adc', 'dwi', 'pd', 'pdw', 'swi', 'cine', 'bold', 'lge'],
  PET: ['pet', 'fdg', 'psma', 'suv'],
};

/** medtune's modality family for a data set's own word ("MRI", "T1", "CT", "FDG-PET", ...). */
export function modalityFamily(word: string): ModalityFamily {
  const tokens = word.toLowerCase().split(/[^a-z0-9]+/).filter(Boolean);
  for (const family of ['PET', 'CT', 'MR'] as const) {
    if (tokens.some((t) => MODALITY_WORDS[family].includes(t))) return family;
  }
  throw new Error(
    `modality '${word}' is not one medtune knows: say which family it belongs to with --modality CT, MR or PET ` +
      `(known words: ${Object.values(MODALITY_WORDS).flat().join(', ')})`,
  );
}

const FileEntry = z.object({ image: z.string(), label: z.string().optional() });
const DatasetJson = z.looseObject({
  name: z.string().optional(),
  modality: z.record(z.string(), z.string()).optional(),
  channel_names: z.record(z.string(), z.string()).optional(),
  labels: z.record(z.string(), z.union([z.string(), z.number(), z.array(z.number())])),
  training: z.array(FileEntry).optional(),
  file_ending: z.string().optional(),
});

export interface DecathlonCase {
  /** patient / case id (file base name without the channel suffix) */
  id: string;
  image: string;
  label: string;
}

export interface DecathlonDataset {
  root: string;
  name: string;
  /** the data set's own word for its (first) channel */
  modalityWord: string;
  /** label value -> name, background excluded */
  labelNames: Map<number, string>;
  cases: DecathlonCase[];
  /** cases listed (or images found) whose image or label file is missing, with the path that is */
  missing: Array<{ id: string; path: string }>;
}

const NIFTI_RE = /\.nii(\.gz)?$/i;

function labelMap(labels: Record<string, string | number | number[]>, source: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const [k, v] of Object.entries(labels)) {
    // Decathlon: "1": "Anterior"; nnU-Net v2: "Anterior": 1 (regions: a list of values, not supported)
    const [value, name] = typeof v === 'string' ? [Number(k), v] : [v, k];
    if (Array.isArray(value)) throw new Error(`${source}: label '${name}' is a region (a list of values); medtune needs one value per label`);
    if (!Number.isInteger(value) || value < 0 || value > 255) throw new Error(`${source}: label '${name}' has value ${String(value)}, not an integer in 0..255`);
    if (value !== 0) out.set(value, name);
  }
  return out;
}

/** Reads the folder's `dataset.json` and lists its training cases. */
export function readDecathlon(rootDir: string): DecathlonDataset {
  const root = resolve(rootDir);
  const jsonPath = join(root, 'dataset.json');
  if (!existsSync(jsonPath)) throw new Error(`${root}: no dataset.json (a Decathlon / nnU-Net folder has dataset.json, imagesTr/ and labelsTr/)`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(jsonPath, 'utf8'));
  } catch (err) {
    throw new Error(`${jsonPath}: not valid JSON (${(err as Error).message})`);
  }
  const parsed = DatasetJson.safeParse(raw);
  if (!parsed.success) {
    throw new Error(`${jsonPath}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(top level)'}: ${i.message}`).join('; ')}`);
  }
  const ds = parsed.data;
  const channels = ds.modality ?? ds.channel_names ?? {};
  const modalityWord = channels['0'] ?? Object.values(channels)[0];
  if (!modalityWord) throw new Error(`${jsonPath}: names no modality ('modality' or 'channel_names')`);
  const labelNames = labelMap(ds.labels, jsonPath);
  const imagesDir = join(root, 'imagesTr');
  const labelsDir = join(root, 'labelsTr');
  for (const dir of [imagesDir, labelsDir]) if (!existsSync(dir)) throw new Error(`${root}: no ${basename(dir)}/ folder`);

  const cases: DecathlonCase[] = [];
  const missing: DecathlonDataset['missing'] = [];
  const add = (id: string, image: string, label: string) => {
    const absent = [image, label].find((p) => !existsSync(p));
    if (absent) missing.push({ id, path: absent });
    else cases.push({ id, image, label });
  };
  if (ds.training) {
    for (const entry of ds.training) {
      if (!entry.label) throw new Error(`${jsonPath}: training entry ${entry.image} names no label`);
      const image = join(root, entry.image);
      // the Decathlon lists 4-D multi-channel images without their `_0000` channel files
      const channel0 = image.replace(NIFTI_RE, (ext) => `_0000${ext}`);
      add(basename(entry.label).replace(NIFTI_RE, ''), existsSync(image) ? image : existsSync(channel0) ? channel0 : image, join(root, entry.label));
    }
  } else {
    for (const f of readdirSync(imagesDir).filter((n) => NIFTI_RE.test(n) && !n.startsWith('.')).sort()) {
      const base = f.replace(NIFTI_RE, '');
      if (/_\d{4}$/.test(base) && !base.endsWith('_0000')) continue; // other channels of a multi-channel case
      const id = base.replace(/_0000$/, '');
      const ext = NIFTI_RE.exec(f)![0];
      add(id, join(imagesDir, f), join(labelsDir, `${id}${ext}`));
    }
  }
  if (cases.length === 0) throw new Error(`${root}: no training case with both an image and a label (${missing.length} missing)`);
  return { root, name: ds.name ?? basename(root), modalityWord, labelNames, cases, missing };
}
