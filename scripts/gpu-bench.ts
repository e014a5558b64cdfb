/**
 * Entry of the GPU-machine bundle (scripts/gpu-run.sh): the webgpu bench section alone, without
 * the bench's native dependencies (onnxruntime). Arguments as `npm run bench -- --only webgpu`.
 */
import '@tensorflow/tfjs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { selectBackend } from '../src/backend.js';
import { benchWebgpu } from './bench-webgpu.js';

// no top-level await: this file is bundled to CommonJS
async function main(): Promise<void> {
const args = await yargs(hideBin(process.argv))
  .option('model', { type: 'string', default: 'sam2.1-tiny' })
  .option('size', { type: 'number', default: 1024 })
  .option('batch', { type: 'number', default: 16 })
  .option('iters', { type: 'number', default: 5 })
  .option('warmup', { type: 'number', default: 2 })
  .strict()
  .parse();
const { device } = await selectBackend('webgpu');
console.log(`webgpu on ${device}`);
await benchWebgpu({ ...args, log: (line) => console.log(line) });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
