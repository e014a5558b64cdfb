/**
 * `medtune setup tensorflow [--gpu] [--tf-version X] [--force]`: builds the native TensorFlow
 * backend (@tensorflow/tfjs-node, or -node-gpu with --gpu) against a TensorFlow wheel from pip,
 * into this project's node_modules (see src/backends/tensorflow-setup.ts).
 */
import type { CommandModule } from 'yargs';

interface SetupArgs {
  what: string;
  gpu?: boolean;
  'tf-version'?: string;
  force?: boolean;
}

export const setupCommand: CommandModule<object, SetupArgs> = {
  command: 'setup <what>',
  describe: 'Install an optional backend: `setup tensorflow` builds native TensorFlow (tfjs-node) from a pip wheel',
  builder: (y) =>
    y
      .positional('what', { type: 'string', choices: ['tensorflow'], demandOption: true, describe: 'what to set up' })
      .option('gpu', { type: 'boolean', default: false, describe: 'tfjs-node-gpu with the CUDA 12 build of TensorFlow and its nvidia-*-cu12 libraries' })
      .option('tf-version', { type: 'string', describe: 'TensorFlow version of the wheel (default: the newest pip offers)' })
      .option('force', { type: 'boolean', default: false, describe: 'rebuild even when a working build is installed' })
      .example('$0 setup tensorflow', 'native TensorFlow on the CPU (downloads ~270 MB once, needs ~1.5 GB while building)')
      .example('$0 setup tensorflow --gpu', 'native TensorFlow on an NVIDIA GPU (CUDA 12; several GB of wheels)'),
  handler: async (args) => {
    const { setupTensorflow, SetupError } = await import('../backends/tensorflow-setup.js');
    try {
      await setupTensorflow({ gpu: args.gpu, tfVersion: args['tf-version'], force: args.force, log: (line) => console.log(line) });
    } catch (err) {
      if (err instanceof SetupError) throw new Error(`setup tensorflow: ${err.message}`);
      throw err;
    }
  },
};
