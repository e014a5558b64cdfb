/**
 * `medtune train --config <yaml> [--out <run-dir>] [--set key=value ...] [--resume auto|<checkpoint>] [--dry-run]`:
 * fine-tune SAM2 from a YAML run config (see configs/ and src/train/config.ts), or with --dry-run
 * measure a step's time and memory and say whether it fits (src/train/dry-run.ts).
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { CommandModule } from 'yargs';

interface TrainArgs {
  config?: string;
  out?: string;
  set?: string[];
  resume?: string;
  progress?: boolean;
  'dry-run'?: boolean;
}

/** Where the run lives: --out, else the resumed checkpoint's run, else checkpoints/<name> (run outputs live under the git-ignored checkpoints/). */
function runDirFor(args: TrainArgs, name: string): string {
  if (args.out) return resolve(args.out);
  if (args.resume && args.resume !== 'auto') {
    const ckpt = resolve(args.resume);
    if (dirname(ckpt).endsWith('checkpoints')) return dirname(dirname(ckpt));
  }
  return resolve('checkpoints', name);
}

export const trainCommand: CommandModule<object, TrainArgs> = {
  command: 'train',
  describe: 'Fine-tune SAM2 on 2D slices with box prompts, from a YAML run config',
  builder: (y) =>
    y
      .option('config', { type: 'string', describe: 'run config (YAML); optional when resuming (the run keeps its own)' })
      .option('out', { type: 'string', describe: 'run directory (default: checkpoints/<name>)' })
      .option('set', {
        type: 'string',
        array: true,
        describe: 'override a config key, e.g. --set train.max_steps=20 (repeatable)',
      })
      .option('resume', {
        type: 'string',
        describe: "'auto' to continue from <run-dir>/checkpoints/latest, or a checkpoint directory",
      })
      .option('progress', { type: 'boolean', describe: 'progress bar (default: when the output is a terminal)' })
      .option('dry-run', {
        type: 'boolean',
        describe: 'run two steps in a child process, print s/step and peak memory (tfjs, wasm heap, RSS) and whether it fits; train nothing',
      })
      .example('$0 train --config configs/demo.yaml', 'the demo: minutes on CPU')
      .example('$0 train --config configs/sam2.1-tiny-512.yaml --set train.max_steps=20 --out checkpoints/try', 'a short run')
      .example('$0 train --config configs/demo.yaml --resume auto', 'continue an interrupted run')
      .example('$0 train --config configs/sam2.1-tiny-512.yaml --dry-run', 'will it fit? (exit code 1 when not)'),
  handler: async (args) => {
    const { loadConfig, readResolvedConfig, ConfigError } = await import('../train/config.js');
    let config;
    if (args.config) {
      config = loadConfig(args.config, { overrides: args.set });
    } else {
      if (!args.resume) throw new Error('name a run config with --config (or --resume a run to continue it)');
      const from = args.resume === 'auto' ? (args.out ? join(resolve(args.out), 'config.yaml') : undefined) : join(resolve(args.resume), 'config.yaml');
      if (!from || !existsSync(from)) {
        throw new Error(args.resume === 'auto' ? '--resume auto without --config needs --out <run-dir>' : `${args.resume}: not a checkpoint directory (no config.yaml)`);
      }
      config = readResolvedConfig(from);
      if (args.set?.length) throw new ConfigError('--set needs --config (the overrides apply to a config file)');
    }
    if (args['dry-run']) {
      const { dryRun } = await import('../train/dry-run.js');
      const result = dryRun(config);
      for (const line of result.lines) console.log(line);
      if (!result.fits) process.exitCode = 1;
      return;
    }
    const runDir = runDirFor(args, config.name);
    const { findCheckpoint } = await import('../train/checkpoint.js');
    if (!args.resume && findCheckpoint(runDir)) {
      throw new Error(`${runDir} already holds checkpoints: add --resume auto to continue that run, or --out <dir> for a new one`);
    }
    const { train } = await import('../train/train.js');
    console.log(`run directory: ${runDir}`);
    const result = await train({ config, runDir, resume: args.resume, progress: args.progress });
    const last = result.losses.at(-1);
    const lastVal = result.valDice.at(-1);
    console.log(
      [
        `${result.interrupted ? 'stopped' : 'done'} at step ${result.step}/${config.train.max_steps}` +
          (last !== undefined ? `, last loss ${last.toFixed(4)}` : ''),
        lastVal
          ? `val Dice ${lastVal.dice.toFixed(4)} (best ${result.bestValDice?.toFixed(4)})` +
            (Object.keys(lastVal.perLabel).length > 1 ? `: ${Object.entries(lastVal.perLabel).map(([name, d]) => `${name} ${d.toFixed(4)}`).join(', ')}` : '')
          : '',
        `checkpoints: ${join(runDir, 'checkpoints')}/{latest,best,step-*}`,
        `metrics: ${join(runDir, 'metrics.jsonl')}, TensorBoard: tensorboard --logdir ${join(runDir, 'tensorboard')}`,
      ]
        .filter(Boolean)
        .join('\n'),
    );
  },
};
