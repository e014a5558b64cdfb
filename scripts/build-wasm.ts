/**
 * `npx tsx scripts/build-wasm.ts`: assembles medtune's WebAssembly kernels (src/backends/*.wat)
 * into TypeScript modules holding the binaries (src/backends/*-binary.ts), so they load wherever
 * the sources do, bundled or not. test/wasm-binaries.test.ts checks the committed ones are current.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { assembleKernel, binaryModule } from './wat.js';

const WASM_KERNELS = ['wasm-simd'];

for (const name of WASM_KERNELS) {
  const out = join(import.meta.dirname, '..', 'src', 'backends', `${name}-binary.ts`);
  writeFileSync(out, binaryModule(name, await assembleKernel(name)));
  console.log(out);
}
