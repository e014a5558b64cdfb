/**
 * Training run configuration: a YAML file validated against a strict schema (an unknown key or a
 * wrong type stops the run before it starts, naming the key path), `--set a.b=c` overrides, and
 * relative paths resolved against the config file's directory.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';
import { BACKEND_NAMES } from '../backend.js';
import { ADAPTABLE_MODULES, linearLayers, matchTargets } from '../model/adapters.js';
import { resolveModelChoice } from '../model/config.js';
import { SAM2Base } from '../model/sam2.js';

const positiveInt = z.number().int().positive();
const nonNegative = z.number().nonnegative();
const pathList = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

const ModelSchema = z.strictObject({
  /** a built-in model config, e.g. 'sam2.1-tiny' */
  preset: z.enum(['sam2.1-tiny', 'sam2-tiny']).default('sam2.1-tiny'),
  /** overrides of the preset: an official model-config object (like an official YAML's `model:`) or a path to one (.yaml/.json) */
  config: z.union([z.string().min(1), z.record(z.string(), z.unknown())]).nullish(),
  /** input resolution; overrides the preset's (and rescales the RoPE feature sizes) */
  image_size: positiveInt.multipleOf(16).optional(),
  /** an official SAM2/SAM2.1/MedSAM2 checkpoint (.pt or .safetensors) to start from; none: a seeded random init */
  checkpoint: z.string().min(1).nullable().default(null),
  /** state-dict prefixes that train; everything else is frozen (with adapters: default none) */
  trainable: z.array(z.string().min(1)).default(['image_encoder', 'sam_mask_decoder']),
});

const AugmentSchema = z.strictObject({
  flip_h: z.boolean().default(false),
  flip_v: z.boolean().default(false),
  /** degrees, rotations drawn uniformly in ±max_rotation */
  max_rotation: nonNegative.default(0),
});

/** Synthetic CT-like volumes (src/data/synthetic.ts), generated into data.train / data.val when they hold none. */
const SyntheticSchema = z.strictObject({
  train_volumes: positiveInt.default(12),
  val_volumes: positiveInt.default(3),
  /** in-plane size */
  size: positiveInt.default(128),
  /** slices per volume */
  depth: positiveInt.default(12),
  /** organs (labels) per volume, at most 5 */
  organs: positiveInt.max(5).default(3),
  /** noise standard deviation in gray levels */
  noise: nonNegative.default(10),
});

const DataSchema = z.strictObject({
  /** a directory of npz files (or an npy folder), a file, or a list of them */
  train: pathList,
  /** held-out data for validation; none: no validation */
  val: pathList.nullable().default(null),
  /** instead of data.val: hold out this fraction of data.train's volumes (patients), split seeded and kept in <run-dir>/split.json */
  val_fraction: z.number().min(0).lt(1).default(0),
  /** seed of that split (default: the run's seed) */
  split_seed: z.number().int().nullable().default(null),
  /** generate synthetic CT-like data into the data.train and data.val directories if they hold no npz (the demo) */
  generate: SyntheticSchema.nullable().default(null),
  /** maximum outward box shift in pixels at 256 scale (MedSAM convention), scaled to the resolution */
  bbox_shift: nonNegative.default(5),
  augment: AugmentSchema.prefault({}),
  /** batches prepared ahead of the training step */
  prefetch: z.number().int().nonnegative().default(2),
  /** worker threads preparing batches; 0: on the main thread between steps */
  workers: z.number().int().nonnegative().default(0),
  /** at most this many validation samples (a fixed, evenly spread subset); 0: all */
  val_samples: z.number().int().nonnegative().default(0),
  /** score validation at each label's native resolution (logits upsampled to the slice) instead of the 1/4 low-res mask */
  val_native_resolution: z.boolean().default(false),
  /** each epoch draws the labels equally often (rare labels repeat) instead of every sample once */
  balance_labels: z.boolean().default(false),
});

/**
 * Image-encoder outputs kept on disk (`<run-dir>/embedding-cache/`) and reused every epoch, so that
 * with a frozen encoder and no pixel augmentation a step runs only the prompt encoder and mask decoder.
 */
const EmbeddingCacheSchema = z.strictObject({
  /** auto: on whenever the image encoder is frozen and no augmentation changes pixels; true: required (an error says why it cannot be) */
  enabled: z.union([z.literal('auto'), z.boolean()]).default('auto'),
  /** size cap in GB (1e9 bytes); the oldest entries are evicted beyond it */
  max_gb: z.number().positive().default(10),
});

/**
 * The prompts of training samples, as SAM2's trainer draws them (src/data/prompts.ts): a box with
 * probability `box`, positive clicks from the object with probability `points` (always without a
 * box), then `correction_rounds` rounds that each add one click from the prediction's error and
 * feed the previous low-res logits back as the mask prompt; the loss sums over all rounds.
 * The default is the seed recipe's box alone.
 */
const PromptsSchema = z
  .strictObject({
    box: z.number().min(0).max(1).default(1),
    points: z.number().min(0).max(1).default(0),
    /** clicks per sample, drawn uniformly in [min, max] */
    num_points: z.tuple([positiveInt, positiveInt]).default([1, 1]),
    /** SAM2's num_correction_pt_per_frame: simulated correction clicks after the first prediction */
    correction_rounds: z.number().int().nonnegative().default(0),
    /** the fraction of micro-batches that get the correction rounds (seeded by step), as SAM2 corrects only some frames */
    correction_prob: z.number().min(0).max(1).default(1),
  })
  .refine((p) => p.num_points[0] <= p.num_points[1], { message: 'num_points: [min, max] with min <= max', path: ['num_points'] });

const TrainSchema = z.strictObject({
  /** optimizer steps */
  max_steps: positiveInt,
  /** samples per micro-batch */
  batch_size: positiveInt.default(16),
  /** micro-batches per optimizer step (effective batch = batch_size * grad_accum) */
  grad_accum: positiveInt.default(1),
  lr: z.number().positive(),
  /** lr of the image encoder; default: lr */
  image_encoder_lr: z.number().positive().nullable().default(null),
  weight_decay: nonNegative.default(0.01),
  /** no weight decay on biases and normalization weights */
  no_decay_bias_norm: z.boolean().default(false),
  /** layer-wise lr decay over the Hiera blocks; 1: off */
  layer_decay: z.number().positive().max(1).default(1),
  betas: z.tuple([z.number().min(0).lt(1), z.number().min(0).lt(1)]).default([0.9, 0.999]),
  eps: z.number().positive().default(1e-8),
  warmup_steps: z.number().int().nonnegative().default(0),
  /** lr at the end of the cosine; equal to lr for a constant schedule */
  min_lr: nonNegative.default(0),
  /** recompute each Hiera block and two-way transformer layer in the backward pass instead of keeping its activations: less memory, about one more forward per step */
  checkpoint_activations: z.boolean().default(false),
  /** clip gradients to this global L2 norm; null: no clipping */
  grad_clip: z.number().positive().nullable().default(null),
  /** dice_bce: the seed recipe (Dice + BCE, weighted below); sam2: SAM2's own loss (focal 20, Dice, IoU, object score) */
  loss: z.enum(['dice_bce', 'sam2']).default('dice_bce'),
  dice_weight: nonNegative.default(1),
  bce_weight: nonNegative.default(1),
  /** validate every N steps (and at the end); 0: only at the end */
  val_every: z.number().int().nonnegative().default(100),
  /** also validate before the first step (step 0) of a fresh run: where the model starts */
  val_at_start: z.boolean().default(true),
  /** keep a `step-NNNNNN` checkpoint every N steps (latest is refreshed too); 0: only at the end */
  save_every: z.number().int().nonnegative().default(500),
  /** how many `step-NNNNNN` checkpoints to keep */
  keep_last: z.number().int().nonnegative().default(3),
  /** log training scalars every N steps */
  log_every: positiveInt.default(1),
  embedding_cache: EmbeddingCacheSchema.prefault({}),
  /**
   * slices per sample. 1: 2D training on single slices. N > 1: clips of N consecutive slices of one
   * label (src/data/clips.ts), the first prompted with its box, the rest segmented from memory
   * (src/train/clip-step.ts), so memory encoder and memory attention train; needs `loss: sam2`,
   * whose object-score term teaches where the object ends.
   */
  clip_length: positiveInt.default(1),
}).superRefine((t, ctx) => {
  if (t.clip_length > 1 && t.loss !== 'sam2') {
    ctx.addIssue({
      code: 'custom',
      path: ['clip_length'],
      message: `clips (clip_length ${t.clip_length}) need loss: sam2: its object-score term trains the head that stops propagation where the object ends, which ${t.loss} leaves untrained`,
    });
  }
});

/** Parameter-efficient fine-tuning (src/model/adapters.ts): the base weights freeze, the adapters train. */
const AdaptersSchema = z.strictObject({
  /** lora: low-rank updates of the target layers; bottleneck: SAM-Med2D's adapter after each target layer */
  kind: z.enum(['lora', 'bottleneck']),
  /** LoRA rank, or the bottleneck's hidden width */
  rank: positiveInt.default(8),
  /** LoRA scale numerator (the update is scaled by alpha / rank); default: rank */
  alpha: z.number().positive().nullable().default(null),
  /** dropout on the LoRA branch's input while training */
  dropout: z.number().min(0).lt(1).default(0),
  /** linear layers by state-dict prefix; '*' stands for any run of characters, e.g. '*.attn.qkv' */
  targets: z.array(z.string().min(1)).min(1),
});

export const TrainConfigSchema = z.strictObject({
  /** a name for the run (the default run directory is checkpoints/<name>) */
  name: z.string().min(1).default('run'),
  seed: z.number().int().default(2024),
  /** TensorFlow.js backend (see src/backend.ts) */
  backend: z.enum(BACKEND_NAMES).default('cpu'),
  /** threads of the backend's pools (TensorFlow's intra- and inter-op, wasm's XNNPACK: at most 8); null: all cores */
  backend_threads: positiveInt.nullable().default(null),
  model: ModelSchema.prefault({}),
  /** adapters instead of full fine-tuning; model.trainable then names what trains beside them (default nothing) */
  adapters: AdaptersSchema.nullable().default(null),
  data: DataSchema,
  prompts: PromptsSchema.prefault({}),
  train: TrainSchema,
});

export type TrainConfig = z.infer<typeof TrainConfigSchema>;

/** Keys whose values are paths, resolved against the config file's directory. */
const PATH_KEYS = ['model.config', 'model.checkpoint', 'data.train', 'data.val'];

export class ConfigError extends Error {}

function formatPath(path: PropertyKey[]): string {
  return path.length === 0 ? '(top level)' : path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p))).join('.').replace(/\.\[/g, '[');
}

/** zod issues as "config error: a.b: message" lines. */
function formatIssues(error: z.ZodError, source: string): string {
  const lines = error.issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((k) => `  ${formatPath([...issue.path, k])}: unknown key`).join('\n');
    }
    return `  ${formatPath(issue.path)}: ${issue.message}`;
  });
  return `${source}: invalid config\n${lines.join('\n')}`;
}

function getPath(obj: Record<string, unknown>, path: string): unknown {
  let cur: unknown = obj;
  for (const part of path.split('.')) {
    if (typeof cur !== 'object' || cur === null || Array.isArray(cur)) return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

function setPath(obj: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let cur = obj;
  for (const part of parts.slice(0, -1)) {
    const next = cur[part];
    if (next === undefined || next === null) cur[part] = {};
    else if (typeof next !== 'object' || Array.isArray(next)) {
      throw new ConfigError(`--set ${path}: '${part}' is not a section`);
    }
    cur = cur[part] as Record<string, unknown>;
  }
  cur[parts[parts.length - 1]] = value;
}

/** Parse one `key.path=value` override; the value is read as a YAML scalar (or flow list/map). */
export function parseOverride(arg: string): [string, unknown] {
  const eq = arg.indexOf('=');
  if (eq <= 0) throw new ConfigError(`--set ${arg}: expected key.path=value`);
  const key = arg.slice(0, eq).trim();
  if (!/^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$/.test(key)) throw new ConfigError(`--set ${arg}: '${key}' is not a key path`);
  const text = arg.slice(eq + 1);
  return [key, text === '' ? null : YAML.parse(text)];
}

export interface LoadOptions {
  /** `key.path=value` overrides */
  overrides?: string[];
  /** directory that relative paths in overrides are resolved against (default: cwd) */
  cwd?: string;
}

function resolvePaths(raw: Record<string, unknown>, baseDir: string, skip: Set<string>): void {
  const abs = (p: unknown) => (typeof p === 'string' && !isAbsolute(p) ? resolve(baseDir, p) : p);
  for (const key of PATH_KEYS) {
    if (skip.has(key)) continue;
    const v = getPath(raw, key);
    if (v === undefined || v === null) continue;
    if (key === 'model.config' && typeof v !== 'string') continue;
    setPath(raw, key, Array.isArray(v) ? v.map(abs) : abs(v));
  }
}

/** With adapters, model.trainable defaults to nothing: only the adapters train. */
function defaultTrainable(raw: unknown): unknown {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return raw;
  const r = raw as Record<string, unknown>;
  const model = r.model;
  if (!r.adapters || (model !== undefined && (typeof model !== 'object' || model === null || 'trainable' in model))) return raw;
  return { ...r, model: { ...(model as object | undefined), trainable: [] } };
}

/** Validate a plain object as a training config; `source` names it in errors. */
export function parseConfig(raw: unknown, source = 'config'): TrainConfig {
  const result = TrainConfigSchema.safeParse(defaultTrainable(raw));
  if (!result.success) throw new ConfigError(formatIssues(result.error, source));
  const config = result.data;
  if (config.model.trainable.length === 0 && !config.adapters) {
    throw new ConfigError(`${source}: invalid config\n  model.trainable: empty, so nothing would train (name prefixes or set adapters)`);
  }
  if (config.adapters) checkAdapterTargets(config, source);
  return config;
}

/** Every adapters.targets pattern must select a linear layer of the model on the training path. */
function checkAdapterTargets(config: TrainConfig, source: string): void {
  const a = config.adapters!;
  let layers: Map<string, [number, number]>;
  try {
    layers = linearLayers(new SAM2Base(resolveModelChoice(config.model)).paramSpecs());
  } catch {
    return; // a bad model config is reported where the model is built
  }
  const problems: string[] = [];
  const trained = [...layers.keys()].filter((l) => ADAPTABLE_MODULES.some((m) => l.startsWith(`${m}.`)));
  for (const [i, pattern] of a.targets.entries()) {
    const { layers: hit } = matchTargets(layers.keys(), [pattern]);
    if (hit.length === 0) {
      problems.push(`  adapters.targets[${i}]: '${pattern}' matches no linear layer (e.g. ${trained.slice(0, 3).join(', ')})`);
      continue;
    }
    const off = hit.filter((l) => !trained.includes(l));
    if (off.length > 0) problems.push(`  adapters.targets[${i}]: '${pattern}' matches ${off[0]}${off.length > 1 ? ` and ${off.length - 1} more` : ''}, outside the 2D training path (${ADAPTABLE_MODULES.join(', ')})`);
    if (a.kind === 'bottleneck') {
      const fused = hit.find((l) => l.endsWith('.attn.qkv'));
      if (fused) problems.push(`  adapters.targets[${i}]: '${pattern}' matches the fused projection ${fused}; a bottleneck adapter goes after a layer's whole output (e.g. '*.attn.proj')`);
    }
  }
  if (problems.length > 0) throw new ConfigError(`${source}: invalid config\n${problems.join('\n')}`);
}

/**
 * Read a YAML config, apply overrides, resolve relative paths (those in the file against its
 * directory, those from overrides against `cwd`) and validate.
 */
export function loadConfig(path: string, opts: LoadOptions = {}): TrainConfig {
  if (!existsSync(path)) throw new ConfigError(`${path}: config file not found`);
  let raw: unknown;
  try {
    raw = YAML.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`${path}: not valid YAML (${(err as Error).message})`);
  }
  if (raw === null || raw === undefined) raw = {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`${path}: the top level must be a mapping`);
  const obj = raw as Record<string, unknown>;
  const overridden = new Set<string>();
  resolvePaths(obj, dirname(resolve(path)), overridden);
  for (const arg of opts.overrides ?? []) {
    const [key, value] = parseOverride(arg);
    setPath(obj, key, value);
    overridden.add(key);
  }
  const fromOverrides = new Set(PATH_KEYS.filter((k) => !overridden.has(k)));
  resolvePaths(obj, resolve(opts.cwd ?? process.cwd()), fromOverrides);
  return parseConfig(obj, path);
}

/** The resolved config as YAML, as written to `<run-dir>/config.yaml`. */
export function configToYaml(config: TrainConfig): string {
  return YAML.stringify(config);
}

/** Read a resolved config back (from a run directory or checkpoint). */
export function readResolvedConfig(path: string): TrainConfig {
  return parseConfig(YAML.parse(readFileSync(path, 'utf8')), path);
}
