/** Label names for eval tables: `labels.json` (written by `medtune prepare`) or a Decathlon `dataset.json` beside the ground truth. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** label value -> name; empty when the folder names none. */
export function readLabelNames(dir: string): Map<number, string> {
  for (const [file, key] of [['labels.json', undefined], ['dataset.json', 'labels']] as const) {
    const path = join(dir, file);
    if (!existsSync(path)) continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(path, 'utf8'));
    } catch (err) {
      throw new Error(`${path}: not valid JSON (${(err as Error).message})`);
    }
    const table = key ? (parsed as Record<string, unknown>)?.[key] : parsed;
    if (typeof table !== 'object' || table === null || Array.isArray(table)) throw new Error(`${path}: expected ${key ? `"${key}": ` : ''}{"1": "name", ...}`);
    const names = new Map<number, string>();
    for (const [k, v] of Object.entries(table)) {
      const label = Number(k);
      if (!Number.isInteger(label) || typeof v !== 'string') throw new Error(`${path}: label ${JSON.stringify(k)} -> ${JSON.stringify(v)} is not an integer and a name`);
      if (label !== 0) names.set(label, v);
    }
    return names;
  }
  return new Map();
}

/** A label's name, or its number when it has none. */
export function labelName(names: ReadonlyMap<number, string>, label: number): string {
  return names.get(label) ?? String(label);
}
