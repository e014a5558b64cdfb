/**
 * `medtune inspect --model <preset | model-config.json | checkpoint> [--json]`: the parameter
 * count, the count per top-level module and every state-dict key with its shape, for a model
 * preset or config (the keys our SAM2Base builds) or for a checkpoint (the file's own tensors).
 */
import { existsSync, readFileSync } from 'node:fs';
import type { CommandModule } from 'yargs';
import { parse as parseYaml } from 'yaml';
import { MODEL_PRESETS, resolveModelConfig, type Sam2Config, type Sam2ConfigInput } from '../model/config.js';
import { countByModule, paramCount } from '../model/weights.js';

export interface InspectResult {
  param_count: number;
  by_module: Record<string, number>;
  keys: Record<string, number[]>;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A model config file: JSON or YAML, either the model block itself (official style, `_target_`
 * keys allowed), an official config file with a `model:` block, or a fixture `meta.json` with
 * `model_config`.
 */
export function readModelConfigFile(path: string): Sam2Config {
  let doc: unknown;
  const text = readFileSync(path, 'utf8');
  try {
    doc = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: cannot parse model config (${(err as Error).message})`);
  }
  if (!isObject(doc)) throw new Error(`${path}: a model config must be an object`);
  const block = isObject(doc.model_config) ? doc.model_config : isObject(doc.model) ? doc.model : doc;
  if (!isObject(block.image_encoder)) {
    throw new Error(`${path}: no model config found (expected image_encoder, memory_attention, ... at the top, under 'model', or under 'model_config')`);
  }
  return resolveModelConfig(block as Sam2ConfigInput);
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
