// A pthread of the threaded WASM build in Node (src/backends/wasm-threads.ts). tfjs-backend-wasm
// ships the emscripten worker script only as a string, meant for a browser Blob URL; Node's
// worker_threads needs a file, so this file runs that string with the CommonJS `require` and
// `__filename` its Node branch expects.
const { wasmWorkerContents } = require('@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.worker.js');

// the string was written for a Blob: its "\n" escapes arrive as raw newlines, as tfjs's own loader notes
new Function('require', '__filename', wasmWorkerContents.replace(/\n/g, '\\n'))(require, __filename);
