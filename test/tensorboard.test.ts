import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { maskedCrc32c, TensorBoardWriter } from '../src/train/tensorboard.js';

const FIXTURE = join(import.meta.dirname, 'fixtures', 'tensorboard');

describe('TensorBoard event writer', () => {
  it('masks CRC32C like TFRecord (check value of "123456789")', () => {
    // CRC32C("123456789") = 0xE3069283; masked = rotr15 + 0xa282ead8
    const crc = 0xe3069283;
    const masked = ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
    expect(maskedCrc32c(new TextEncoder().encode('123456789'))).toBe(masked);
  });

  it("writes exactly the bytes of TensorBoard's own writer for the same events", () => {
    const dir = mkdtempSync(join(tmpdir(), 'tb-'));
    const w = new TensorBoardWriter(dir, 1700000000.0, 'medtune-golden');
    w.scalars(1, { 'train/loss': 0.75, 'train/lr': 6e-5 }, 1700000001.5);
    w.scalars(2, { 'val/dice': 0.8125 }, 1700000002.25);
    const png = new Uint8Array(readFileSync(join(FIXTURE, 'overlay.png')));
    w.image(2, 'val/overlay', { height: 8, width: 8, colorspace: 3, png }, 1700000003.0);
    w.close();
    expect(w.path.endsWith('events.out.tfevents.1700000000.medtune-golden')).toBe(true);
    const ours = readFileSync(w.path);
    const golden = readFileSync(join(FIXTURE, 'events.out.tfevents.1700000000.medtune-golden'));
    expect(ours.length).toBe(golden.length);
    expect(Buffer.compare(ours, golden)).toBe(0);
  });
});
