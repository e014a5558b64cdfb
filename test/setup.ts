// tfjs-core's CommonJS build registers no gradients; the union package registers them all.
import '@tensorflow/tfjs';
import { selectBackend } from '../src/backend.js';

// the cpu backend as the CLI chooses it: with its kernel replacements (src/backends/cpu.ts)
await selectBackend('cpu', { quiet: true });
