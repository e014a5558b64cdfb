/**
 * medtune's WebAssembly kernels are committed assembled (src/backends/*-binary.ts, written by
 * scripts/build-wasm.ts): each must be its .wat text assembled now, so the two cannot drift.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assembleKernel, binaryModule } from '../scripts/wat.js';

describe('committed WebAssembly binaries', () => {
  it('src/backends/wasm-simd-binary.ts is wasm-simd.wat assembled, for a shared and an unshared memory', async () => {
    const binaries = await assembleKernel('wasm-simd');
    expect(binaries.shared).not.toEqual(binaries.unshared);
    const committed = readFileSync(join(import.meta.dirname, '..', 'src', 'backends', 'wasm-simd-binary.ts'), 'utf8');
    expect(committed).toBe(binaryModule('wasm-simd', binaries));
  });
});
