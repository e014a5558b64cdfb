/**
 * Run in a fresh process (test/kernel-registration.test.ts): which kernels are medtune's after
 * importing the model and after choosing each backend. Prints one JSON line.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { isFastKernel } from '../../src/backends/fast-kernels.js';
import { xnnBatchMatMulRegistered } from '../../src/backends/wasm-batch-matmul.js';

const kernels = () => ({
  cpuSoftmax: isFastKernel(tf.Softmax, 'cpu'),
  wasmIdentity: isFastKernel(tf.Identity, 'wasm'),
  wasmBatchMatMul: xnnBatchMatMulRegistered(),
});
await import('../../src/model/sam2.js');
await import('../../src/model/tf-ops.js');
const afterModelImport = kernels();
const { selectBackend } = await import('../../src/backend.js');
await selectBackend('cpu', { quiet: true });
const afterCpu = kernels();
await selectBackend('wasm', { quiet: true });
const afterWasm = kernels();
process.stdout.write(`${JSON.stringify({ afterModelImport, afterCpu, afterWasm })}\n`);
