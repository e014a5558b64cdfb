/**
 * `medtune serve [--onnx EXPORT] [--data DIR] [--runs DIR] [--port P] [--host H]`: a local web
 * page to segment images and volumes with an exported model (box, clicks, propagation, labels,
 * undo, download) and to watch training runs. Binds to 127.0.0.1 unless --host says otherwise,
 * prints the URL and opens nothing.
 */
import { existsSync, statSync } from 'node:fs';
import type { CommandModule } from 'yargs';

interface ServeArgs {
  onnx?: string;
  data?: string;
  runs?: string;
  port: number;
  host: string;
  'max-upload-mb': number;
  threads?: number;
}

function folder(path: string | undefined, option: string): string | undefined {
  if (path === undefined) return undefined;
  if (!existsSync(path) || !statSync(path).isDirectory()) throw new Error(`--${option} ${path}: no such folder`);
  return path;
}

export async function runServe(args: ServeArgs, log: (line: string) => void = (l) => process.stdout.write(`${l}\n`)) {
  const { startServer } = await import('../serve/server.js');
  const data = folder(args.data, 'data');
  const runs = folder(args.runs, 'runs');
  let model;
  if (args.onnx) {
    const { OnnxModel } = await import('../onnx/runtime.js');
    model = OnnxModel.open(args.onnx, { threads: args.threads });
  }
  if (!(args['max-upload-mb'] > 0)) throw new Error(`--max-upload-mb ${args['max-upload-mb']}: must be positive`);
  const running = await startServer({ model, threads: args.threads, data, runs, host: args.host, port: args.port, maxUploadBytes: Math.floor(args['max-upload-mb'] * 2 ** 20) });
  log(`medtune serve: ${running.url}${model ? '' : ' (no --onnx: the segment page can view but not segment)'}`);
  return running;
}

export const serveCommand: CommandModule<object, ServeArgs> = {
  command: 'serve',
  describe: 'Local web page: segment, correct, propagate and save masks with an exported model; watch training runs',
  builder: (y) =>
    y
      .option('onnx', { type: 'string', alias: 'export', describe: 'folder written by `medtune export` (inference with onnxruntime-node)' })
      .option('data', { type: 'string', describe: 'folder of volumes/images the page may open (.nii, .nii.gz, .npz, .npy, .png, .jpg)' })
      .option('runs', { type: 'string', describe: 'folder of training runs (metrics.jsonl, config.yaml, tensorboard/)' })
      .option('port', { type: 'number', default: 8765, describe: 'port (0: any free port)' })
      .option('host', { type: 'string', default: '127.0.0.1', describe: 'address to bind; anything but loopback exposes the page to the network' })
      .option('max-upload-mb', { type: 'number', default: 1024, describe: 'largest upload accepted' })
      .option('threads', { type: 'number', describe: 'onnxruntime intra-op threads' }),
  handler: async (args) => {
    const running = await runServe(args);
    const stop = () => void running.close().then(() => process.exit(0));
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  },
};
