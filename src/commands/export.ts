/**
 * `medtune export --checkpoint <run checkpoint dir | .safetensors | .pt> [--model <preset | config>]
 *  --out <dir> [--image-size N]`: write the ONNX graphs (src/onnx/graphs.ts), then prove them:
 * every graph runs in onnxruntime-node on fixed inputs and is compared with the TypeScript model
 * on the same weights; errors are printed and written to `<out>/parity.json`, and the command
 * fails when one exceeds the tolerance (1e-4 of the tensor's scale). An adapter run's checkpoint
 * exports with LoRA merged into the base weights (the plain graphs) or bottleneck adapters as
 * nodes, and is compared with the TypeScript model running its adapters unmerged.
 */
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { CommandModule } from 'yargs';
import type { BackendName } from '../backend.js';
import { adapterParamSpecs, mergeLora, type AdapterTable } from '../model/adapters.js';
import { MODEL_PRESETS, resolveModelChoice, type ModelChoice, type Sam2Config } from '../model/config.js';

interface ExportArgs {
  checkpoint: string;
  model?: string;
  out: string;
  'image-size'?: number;
  parity: boolean;
  tolerance: number;
  backend: string;
  threads?: number;
}

/**
 * The model config for an export: `--model` (a preset or a config file) when given; else the
 * config a run checkpoint directory was trained with (its config.yaml, or the run's); else the
 * default preset. `--image-size` then overrides the resolution as training does.
 */
export async function resolveExportConfig(checkpoint: string, model: string | undefined, imageSize: number | undefined): Promise<{ config: Sam2Config; source: string }> {
  let runModel: ModelChoice;
  let source: string;
  if (model !== undefined) {
    if (Object.hasOwn(MODEL_PRESETS, model)) {
      runModel = { preset: model };
    } else if (existsSync(model) && /\.(json|ya?ml)$/i.test(model)) {
      runModel = { preset: 'sam2.1-tiny', config: model };
    } else {
      throw new Error(`--model '${model}': not a preset (${Object.keys(MODEL_PRESETS).join(', ')}) nor a model config file (.json/.yaml)`);
    }
    source = `--model ${model}`;
  } else {
    const dir = existsSync(checkpoint) && statSync(checkpoint).isDirectory() ? checkpoint : undefined;
    const candidates = dir ? [join(dir, 'config.yaml'), join(dirname(dirname(dir)), 'config.yaml')] : [];
    const found = candidates.find((p) => existsSync(p));
    if (found) {
      const { readResolvedConfig } = await import('../train/config.js');
      runModel = { ...readResolvedConfig(found).model };
      source = found;
    } else {
      runModel = { preset: 'sam2.1-tiny' };
      source = 'the default preset sam2.1-tiny (pass --model for another)';
    }
  }
  if (imageSize !== undefined) {
    if (!(Number.isInteger(imageSize) && imageSize > 0 && imageSize % 32 === 0)) throw new Error(`--image-size ${imageSize}: must be a positive multiple of 32`);
    runModel = { ...runModel, image_size: imageSize };
  }
  return { config: resolveModelChoice(runModel), source };
}

export async function runExport(args: ExportArgs): Promise<void> {
  const log = (line: string) => process.stdout.write(`${line}\n`);
  const { isAdapterCheckpoint } = await import('../train/adapters.js');
  const adapted = existsSync(args.checkpoint) && statSync(args.checkpoint).isDirectory() && isAdapterCheckpoint(args.checkpoint);
  const { config, source } = await resolveExportConfig(args.checkpoint, args.model, args['image-size']);
  const { readStateDict } = await import('../io/checkpoint-file.js');
  const { SAM2Base } = await import('../model/sam2.js');
  const { loadStateDict } = await import('../model/weights.js');
  const specs = new SAM2Base(config).paramSpecs();
  let params;
  let adapters: AdapterTable | undefined;
  try {
    if (adapted) {
      const { readAdaptedStateDict } = await import('../train/adapters.js');
      const read = readAdaptedStateDict(args.checkpoint);
      adapters = { settings: read.meta.adapters, layers: read.meta.layers };
      params = loadStateDict([...specs, ...adapterParamSpecs(adapters, specs)], read.params, { source: args.checkpoint }).params;
    } else {
      params = loadStateDict(specs, readStateDict(args.checkpoint), { source: args.checkpoint }).params;
    }
  } catch (err) {
    throw new Error(`${(err as Error).message}\n  the model config came from ${source}; pass --model with the config this checkpoint was trained with`);
  }
  // LoRA merges into the weights (the graphs are the plain model's); bottleneck adapters export as nodes
  const merged = adapters?.settings.kind === 'lora' ? mergeLora(params, adapters.settings) : params;
  const graphAdapters = adapters?.settings.kind === 'lora' ? undefined : adapters;
  if (adapters) log(`adapters: ${adapters.settings.kind} rank ${adapters.settings.rank} on ${adapters.layers.length} layers${graphAdapters ? ', exported as nodes' : ', merged into the weights'}`);
  log(`model: ${source}, image size ${config.image_size}`);
  log(`exporting to ${args.out}`);
  const { exportGraphs } = await import('../onnx/export.js');
  exportGraphs(config, merged, args.out, { log, adapters: graphAdapters });
  if (!args.parity) return;

  const { selectBackend } = await import('../backend.js');
  await selectBackend(args.backend as BackendName, { quiet: true });
  const { runParity, formatParity } = await import('../onnx/parity.js');
  log(`parity (onnxruntime-node vs the TypeScript model${adapters ? ' with its adapters unmerged' : ''}, tolerance ${args.tolerance} of each tensor's scale):`);
  const report = await runParity(config, params, args.out, { tolerance: args.tolerance, threads: args.threads, log, adapters });
  log(formatParity(report.entries));
  const file = join(args.out, 'parity.json');
  writeFileSync(file, `${JSON.stringify(report, null, 1)}\n`);
  const worst = report.entries.reduce((a, b) => (b.relError > a.relError ? b : a));
  log(`worst: ${worst.graph}/${worst.output} rel ${worst.relError.toExponential(2)}; written ${file}`);
  if (!report.ok) {
    const bad = report.entries.filter((e) => !e.ok).map((e) => `${e.graph}/${e.output} (${e.relError.toExponential(2)})`);
    throw new Error(`parity failed: ${bad.join(', ')} exceed ${args.tolerance}`);
  }
}

export const exportCommand: CommandModule<object, ExportArgs> = {
  command: 'export',
  describe: 'Export a checkpoint to ONNX (image encoder, mask decoder, memory path) and check it against the TypeScript model',
  builder: (y) =>
    y
      .option('checkpoint', { type: 'string', demandOption: true, describe: 'run checkpoint directory, .safetensors or .pt (official / MedSAM2)' })
      .option('model', { type: 'string', describe: 'model preset or config file (default: the run\'s config, else sam2.1-tiny)' })
      .option('out', { type: 'string', demandOption: true, describe: 'output directory' })
      .option('image-size', { type: 'number', describe: 'input resolution of the exported graphs (default: the model config\'s)' })
      .option('parity', { type: 'boolean', default: true, describe: 'check every graph against the TypeScript model (--no-parity to skip)' })
      .option('tolerance', { type: 'number', default: 1e-4, describe: 'parity tolerance, relative to each tensor\'s max |value|' })
      .option('backend', { type: 'string', default: 'auto', describe: 'TensorFlow.js backend for the parity reference' })
      .option('threads', { type: 'number', describe: 'onnxruntime intra-op threads for the parity run' }),
  handler: async (args) => {
    await runExport(args);
  },
};
