// Entry of the `medtune serve` inference worker thread (src/serve/inference.ts): like
// bin/medtune.js and the training loader's workers, it runs the TypeScript module through tsx.
import { register } from 'tsx/esm/api';

register();
await import('./inference-worker.ts');
