// Entry of a training-loader worker thread (src/data/loader.ts): like bin/medtune.js, it runs the
// TypeScript worker module through tsx.
import { register } from 'tsx/esm/api';

register();
await import('./loader-worker.ts');
