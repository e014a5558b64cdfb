/** `medtune prepare`: a Decathlon / nnU-Net folder, or NIfTI images and label maps, as npz volumes (src/data/prepare.ts). */
import type { Argv, CommandModule } from 'yargs';
import { parseWindow, WINDOW_HELP } from '../data/intensity.js';
import { prepareDirectories } from '../data/prepare.js';

interface PrepareArgs {
  root?: string;
  images?: string;
  labels?: string;
  modality?: string;
  window?: string;
  out: string;
  'crop-to-labels': boolean;
  margin: number;
  overwrite: boolean;
  shard?: string;
}

export const prepareCommand: CommandModule<object, PrepareArgs> = {
  command: 'prepare [root]',
  describe: 'Convert a Decathlon / nnU-Net folder, or NIfTI images and label maps, into challenge-format npz files (imgs/gts uint8, spacing)',
  builder: (y: Argv<object>) =>
    y
      .positional('root', { type: 'string', describe: 'a Decathlon / nnU-Net folder: dataset.json, imagesTr/, labelsTr/' })
      .option('images', { type: 'string', describe: 'directory of .nii / .nii.gz images (instead of a Decathlon folder)' })
      .option('labels', {
        type: 'string',
        describe: 'directory of label maps, paired by name (case.nii.gz with case.nii.gz or case_0000.nii.gz); without it, images only',
      })
      .option('modality', {
        type: 'string',
        describe: 'CT (window), MR or PET (0.5-99.5 percentile clipping of the positive voxels), in the data set\'s own words too (MRI, T1, FLAIR, ...); default: dataset.json\'s',
      })
      .option('window', {
        type: 'string',
        describe: `CT only, default soft-tissue: ${WINDOW_HELP}`,
      })
      .option('out', { type: 'string', demandOption: true, describe: 'output directory for the npz files (and labels.json)' })
      .option('crop-to-labels', {
        type: 'boolean',
        default: false,
        describe: 'keep only the slices from the first to the last labeled one (as the challenge data are cropped)',
      })
      .option('margin', { type: 'number', default: 0, describe: 'with --crop-to-labels: extra slices kept on each side' })
      .option('overwrite', { type: 'boolean', default: false, describe: 'replace npz files already in --out' })
      .option('shard', { type: 'string', describe: 'INDEX/COUNT: convert only this share of the cases (default: from SLURM / Kubernetes)' }) as unknown as Argv<PrepareArgs>,
  handler: async (argv) => {
    const { modalityFamily, readDecathlon } = await import('../data/decathlon.js');
    const { resolveShard } = await import('../shard.js');
    if (argv.root && (argv.images || argv.labels)) throw new Error('name either a Decathlon folder or --images/--labels, not both');
    if (!argv.root && !argv.images) throw new Error('name a Decathlon folder (with dataset.json) or --images');
    const word = argv.modality ?? (argv.root ? readDecathlon(argv.root).modalityWord : undefined);
    if (!word) throw new Error('--modality is needed without a dataset.json: CT, MR or PET');
    const modality = modalityFamily(word);
    if (argv.window !== undefined && modality !== 'CT') throw new Error(`--window applies to CT only, not ${modality}`);
    const window = argv.window !== undefined ? parseWindow(String(argv.window)) : undefined;
    if (!Number.isInteger(argv.margin) || argv.margin < 0) throw new Error(`--margin must be a non-negative integer, got ${argv.margin}`);
    process.stderr.write(`modality ${word} -> ${modality}${modality === 'CT' ? '' : ': clipped to the 0.5-99.5 percentiles of the positive voxels'}\n`);
    const written = await prepareDirectories({
      root: argv.root,
      images: argv.images,
      labels: argv.labels,
      out: argv.out,
      modality,
      window,
      cropToLabels: argv['crop-to-labels'],
      margin: argv.margin,
      overwrite: argv.overwrite,
      shard: resolveShard(argv.shard),
      log: (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(`wrote ${written.length} npz file(s) to ${argv.out}\n`);
  },
};
