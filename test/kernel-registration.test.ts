/** Backend kernels are registered when their backend is chosen, never by importing the model. */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

describe('kernel registration', () => {
  it('importing the model registers nothing; choosing cpu or wasm registers that backend’s kernels', () => {
    const probe = join(import.meta.dirname, 'helpers', 'registration-probe.ts');
    const out = execFileSync(process.execPath, ['--import', 'tsx', probe], { encoding: 'utf8' });
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({
      afterModelImport: { cpuSoftmax: false, wasmIdentity: false, wasmBatchMatMul: false },
      afterCpu: { cpuSoftmax: true, wasmIdentity: false, wasmBatchMatMul: false },
      afterWasm: { cpuSoftmax: true, wasmIdentity: true, wasmBatchMatMul: true },
    });
  });
});
