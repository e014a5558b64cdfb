/**
 * `medtune inspect --model <preset | model-config.json | checkpoint> [--json]`: the parameter
 * count, the count per top-level module and every state-dict key with its shape, for a model
 * preset or config (the keys our SAM2Base builds) or for a checkpoint (the file's own tensors).
 */
import { existsSync } from 'node:fs';
import type { CommandModule } from 'yargs';
import { MODEL_PRESETS, readModelConfigFile, type Sam2Config } from '../model/config.js';
import { countByModule, paramCount } from '../model/weights.js';

export interface InspectResult {
  param_count: number;
  by_module: Record<string, number>;
  keys: Record<string, number[]>;
}

function fromShapes(entries: Iterable<[string, number[]]>): InspectResult {
  const list = [...entries].map(([name, shape]) => ({ name, shape }));
  return {
    param_count: paramCount(list),
    by_module: countByModule(list),
    keys: Object.fromEntries(list.map((e) => [e.name, e.shape])),
  };
}

/** Inspect a preset name, a model config file, or a checkpoint (file or run directory). */
export async function inspectModel(model: string): Promise<InspectResult> {
  let config: Sam2Config | undefined;
  if (Object.hasOwn(MODEL_PRESETS, model)) config = MODEL_PRESETS[model];
  else if (!existsSync(model)) {
    throw new Error(`unknown model '${model}': not a preset (${Object.keys(MODEL_PRESETS).join(', ')}) and no such file or directory`);
  } else if (/\.(json|ya?ml)$/i.test(model)) config = readModelConfigFile(model);
  if (config) {
    const { SAM2Base } = await import('../model/sam2.js');
    return fromShapes(new SAM2Base(config).paramSpecs().map((s) => [s.name, s.shape]));
  }
  const { readStateDictShapes } = await import('../io/checkpoint-file.js');
  return fromShapes([...readStateDictShapes(model)].map(([name, t]) => [name, t.shape]));
}

const fmt = (n: number) => n.toLocaleString('en-US');

/** The human-readable report. */
export function formatInspect(model: string, r: InspectResult): string {
  const lines = [`model: ${model}`, `parameters: ${fmt(r.param_count)}`, 'by module:'];
  const modWidth = Math.max(...Object.keys(r.by_module).map((m) => m.length));
  for (const [m, n] of Object.entries(r.by_module)) lines.push(`  ${m.padEnd(modWidth)}  ${fmt(n).padStart(12)}`);
  const names = Object.keys(r.keys);
  lines.push(`keys (${names.length}):`);
  const keyWidth = Math.max(...names.map((k) => k.length));
  for (const [k, shape] of Object.entries(r.keys)) lines.push(`  ${k.padEnd(keyWidth)}  [${shape.join(', ')}]`);
  return lines.join('\n');
}

interface InspectArgs {
  model: string;
  json: boolean;
}

export const inspectCommand: CommandModule<object, InspectArgs> = {
  command: 'inspect',
  describe: 'List a model preset, model config or checkpoint: parameter count, per-module counts, keys and shapes',
  builder: (y) =>
    y
      .option('model', {
        type: 'string',
        demandOption: true,
        describe: `a preset (${Object.keys(MODEL_PRESETS).join(', ')}), a model config (.json/.yaml), or a checkpoint (.pt, .safetensors, run directory)`,
      })
      .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' }),
  handler: async (args) => {
    const result = await inspectModel(args.model);
    process.stdout.write(`${args.json ? JSON.stringify(result) : formatInspect(args.model, result)}\n`);
  },
};
