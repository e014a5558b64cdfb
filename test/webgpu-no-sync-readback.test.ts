/**
 * No synchronous readback in src: tfjs-backend-webgpu implements dataSync/arraySync/bufferSync
 * through an OffscreenCanvas, which Node lacks, so one such call breaks training on WebGPU.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = join(import.meta.dirname, '..', 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

describe('src', () => {
  it('reads tensors back only asynchronously (no dataSync, arraySync, bufferSync)', () => {
    const found: string[] = [];
    for (const file of sourceFiles(SRC)) {
      readFileSync(file, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          if (/\b(dataSync|arraySync|bufferSync)\b/.test(line)) found.push(`${relative(SRC, file)}:${i + 1}: ${line.trim()}`);
        });
    }
    expect(found, `synchronous readback in src:\n${found.join('\n')}`).toEqual([]);
  });
});
