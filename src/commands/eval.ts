/** `medtune eval`: DSC and NSD of predicted label maps against ground truth (challenge npz convention). */
import type { Argv, CommandModule } from 'yargs';

interface EvalArgs {
  pred?: string;
  gt?: string;
  shard?: string;
  'shard-out'?: string;
  merge?: string[];
  onnx?: string;
  threads?: number;
  'tolerance-mm': number;
  json: boolean;
  csv?: string;
  'spacing-order': 'xyz' | 'zyx';
  'nsd-2d': 'slab' | 'contour';
  labels: 'gt' | 'union';
  'per-slice': boolean;
  'box-shift': number;
  seed: string;
  clicks: number;
  stability: boolean;
}

export const evalCommand: CommandModule<object, EvalArgs> = {
  command: 'eval',
  describe: 'Score predictions against ground truth: DSC and NSD per case and label, and their means',
  builder: (y: Argv<object>) =>
    y
      .option('pred', {
        type: 'string',
        describe: 'directory of prediction npz files holding `segs` (with --onnx: where the predictions are written)',
      })
      .option('onnx', {
        type: 'string',
        describe: 'predict first with this `medtune export` folder: every --gt volume segmented from the boxes of its labels',
      })
      .option('threads', { type: 'number', describe: 'with --onnx: onnxruntime intra-op threads' })
      .option('gt', {
        type: 'string',
        describe: 'directory of ground-truth npz files of the same names holding `gts` and `spacing`',
      })
      .option('tolerance-mm', { type: 'number', default: 2, describe: 'NSD tolerance in mm' })
      .option('json', {
        type: 'boolean',
        default: false,
        describe: 'print {"cases":[{"case","label","dsc","nsd"}],"mean":{"dsc","nsd"}} instead of a table',
      })
      .option('csv', { type: 'string', describe: 'also write the rows (and a mean row) to this CSV file' })
      .option('spacing-order', {
        choices: ['xyz', 'zyx'] as const,
        default: 'xyz' as const,
        describe:
          'order of the stored `spacing`: xyz = SimpleITK (x,y,z) for (z,y,x) arrays, as the challenge data and `medtune prepare` store it; ' +
          'zyx = already in array-axis order (use it to reproduce the challenge scripts, which apply the stored values unreversed)',
      })
      .option('nsd-2d', {
        choices: ['slab', 'contour'] as const,
        default: 'slab' as const,
        describe: '2D cases: slab = as the challenge scripts, an (H,W,1) volume with 1 mm spacing; contour = 2D contour NSD',
      })
      .option('shard', { type: 'string', describe: 'INDEX/COUNT: score only this share of the --gt files (default: from SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX)' })
      .option('shard-out', { type: 'string', describe: 'with a shard: where its result file goes (default: <pred>/eval-shards)' })
      .option('merge', {
        type: 'string',
        array: true,
        describe: 'combine the results of a sharded eval (the --shard-out folders) into the whole table',
      })
      .option('per-slice', {
        type: 'boolean',
        default: false,
        describe: 'with --onnx: prompt-level eval, each (slice, label) with foreground segmented from a shifted box (and clicks), beside an ellipse in the same box',
      })
      .option('box-shift', { type: 'number', default: 0, describe: 'with --per-slice: push each box side outwards by a seeded uniform 0..N px (the volume\'s own pixels)' })
      .option('seed', { type: 'string', default: '0', describe: 'with --per-slice: seed of the box shifts' })
      .option('clicks', { type: 'number', default: 0, describe: 'with --per-slice: correction clicks per sample (Dice after each, NoC@85/90; 20 for the usual NoC)' })
      .option('stability', {
        type: 'boolean',
        default: true,
        describe: 'with --per-slice: the official single-mask choice (stability fallback to the best multimask output); --no-stability keeps the single-mask token\'s mask (models trained on it alone)',
      })
      .option('labels', {
        choices: ['gt', 'union'] as const,
        default: 'gt' as const,
        describe: 'labels scored: those in the ground truth (challenge), or also those only in the prediction (scored 0)',
      }) as unknown as Argv<EvalArgs>,
  handler: async (argv) => {
    const { evaluateDirs, evaluateWithPredictor, mergeShardReports, reportCsv, reportJson, reportTable, shardReport, shardReportName } = await import('../eval/evaluate.js');
    const { resolveShard } = await import('../shard.js');
    const { mkdirSync, writeFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const print = (report: ReturnType<typeof mergeShardReports>) => {
      for (const w of report.warnings) process.stderr.write(`warning: ${w}\n`);
      if (argv.csv) writeFileSync(argv.csv, reportCsv(report));
      process.stdout.write(`${argv.json ? reportJson(report) : reportTable(report)}\n`);
    };
    if (argv.merge) {
      if (argv.pred || argv.gt || argv.onnx) throw new Error('--merge combines finished shards: give it no --pred, --gt or --onnx');
      const { existsSync, readdirSync } = await import('node:fs');
      const promptShards = argv.merge.some((d) => existsSync(d) && readdirSync(d).some((f) => f.startsWith('prompt-eval-shard-')));
      if (promptShards) {
        const { mergePromptShards, promptReportJson, promptReportTable } = await import('../onnx/prompt-eval.js');
        const report = mergePromptShards(argv.merge);
        for (const w of report.warnings) process.stderr.write(`warning: ${w}\n`);
        process.stdout.write(`${argv.json ? promptReportJson(report) : promptReportTable(report)}\n`);
      } else {
        print(mergeShardReports(argv.merge));
      }
      return;
    }
    if (argv['per-slice']) {
      await perSlice(argv);
      return;
    }
    if (!argv.pred || !argv.gt) throw new Error('eval needs --pred and --gt (or --merge with shard folders)');
    const predDir = argv.pred;
    const gtDir = argv.gt;
    const shard = resolveShard(argv.shard);
    if (shard) process.stderr.write(`shard ${shard.index}/${shard.count} (${shard.source})\n`);
    const options = {
      toleranceMm: argv['tolerance-mm'],
      spacingOrder: argv['spacing-order'],
      nsd2d: argv['nsd-2d'],
      labels: argv.labels,
      shard,
    };
    const onCase = argv.json
      ? undefined
      : (name: string, rows: Array<{ dsc: number; nsd: number }>) => {
          const mean = (k: 'dsc' | 'nsd') => rows.reduce((a, r) => a + r[k], 0) / rows.length;
          process.stderr.write(`${name}: ${rows.length} label(s), DSC ${mean('dsc').toFixed(4)}, NSD ${mean('nsd').toFixed(4)}\n`);
        };
    let report;
    if (argv.onnx) {
      const { basename } = await import('node:path');
      const { OnnxModel } = await import('../onnx/runtime.js');
      const { predictCase } = await import('../onnx/predict.js');
      const { encodeNpz } = await import('../io/npz.js');
      const model = OnnxModel.open(argv.onnx, { threads: argv.threads });
      mkdirSync(predDir, { recursive: true });
      report = await evaluateWithPredictor(
        gtDir,
        async (gtFile, arrays) => {
          const seg = await predictCase(model, arrays, gtFile);
          writeFileSync(join(predDir, basename(gtFile)), encodeNpz({ segs: seg }));
          return seg;
        },
        options,
        onCase,
      );
      await model.release();
    } else {
      report = evaluateDirs(predDir, gtDir, options, onCase);
    }
    if (shard) {
      const dir = argv['shard-out'] ?? join(predDir, 'eval-shards');
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, shardReportName(shard)), JSON.stringify(shardReport(report, shard)));
      process.stderr.write(`shard result: ${join(dir, shardReportName(shard))} (combine with medtune eval --merge ${dir})\n`);
    }
    print(report);
  },
};

/** `eval --per-slice`: prompt-level evaluation from an export (eval/prompt-eval.ts). */
async function perSlice(argv: EvalArgs): Promise<void> {
  if (!argv.onnx || !argv.gt) throw new Error('eval --per-slice needs --onnx EXPORT and --gt DIR (npz cases with `imgs` and `gts`)');
  const { evaluatePromptsInDir, promptReportJson, promptReportTable, promptShardName, promptShardReport } = await import('../onnx/prompt-eval.js');
  const { resolveShard } = await import('../shard.js');
  const { OnnxModel } = await import('../onnx/runtime.js');
  const { predictorStability } = await import('../model/mask-decoder.js');
  const { sliceSegmenter } = await import('../onnx/predict.js');
  const { mkdirSync, writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const shard = resolveShard(argv.shard);
  if (shard) process.stderr.write(`shard ${shard.index}/${shard.count} (${shard.source})\n`);
  const shardDir = argv['shard-out'] ?? (argv.pred ? join(argv.pred, 'eval-shards') : undefined);
  if (shard && !shardDir) throw new Error('a sharded eval --per-slice needs --shard-out DIR (or --pred DIR) for its result file');
  const model = OnnxModel.open(argv.onnx, { threads: argv.threads, needed: ['imageEncoder', 'maskDecoder'] });
  // the fallback applies only where the export's model config keeps it (sam_mask_decoder_extra_args)
  const stability = argv.stability && predictorStability(model.config.sam_mask_decoder_extra_args) !== undefined;
  const started = performance.now();
  let samples = 0;
  let report;
  try {
    report = await evaluatePromptsInDir(
      argv.gt,
      (file, arrays) => sliceSegmenter(model, arrays, file, stability),
      { boxShift: argv['box-shift'], seed: argv.seed, clicks: argv.clicks, stability },
      {
        shard,
        onCase: (name, rows) => {
          samples += rows.length;
          const mean = rows.length ? rows.reduce((a, r) => a + r.dsc, 0) / rows.length : NaN;
          process.stderr.write(`${name}: ${rows.length} sample(s), DSC ${mean.toFixed(4)} (${(samples / ((performance.now() - started) / 1000)).toFixed(1)} samples/s)\n`);
        },
      },
    );
  } finally {
    await model.release();
  }
  for (const w of report.warnings) process.stderr.write(`warning: ${w}\n`);
  if (shard && shardDir) {
    mkdirSync(shardDir, { recursive: true });
    writeFileSync(join(shardDir, promptShardName(shard)), JSON.stringify(promptShardReport(report, shard)));
    process.stderr.write(`shard result: ${join(shardDir, promptShardName(shard))} (combine with medtune eval --merge ${shardDir})\n`);
  }
  if (argv.pred && !shard) {
    mkdirSync(argv.pred, { recursive: true });
    writeFileSync(join(argv.pred, 'prompt-eval.json'), `${promptReportJson(report)}\n`);
  }
  process.stdout.write(`${argv.json ? promptReportJson(report) : promptReportTable(report)}\n`);
}
