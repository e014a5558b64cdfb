/**
 * `medtune train --dry-run`: real steps measured in a child process (tiny model, cpu), a failing
 * run's error passed on, and the verdict on hand-made measurements (fits, tight, over memory,
 * aborted) naming the switches not in use yet.
 */
import { describe, expect, it } from 'vitest';
import { dryRun, verdict, WASM_HEAP_LIMIT_BYTES, type StepMeasurement } from '../src/train/dry-run.js';
import { tinyConfig, tinyData } from './helpers/train-fixture.js';

const GiB = 2 ** 30;
const data = tinyData();

function measurement(over: Partial<StepMeasurement>): StepMeasurement {
  return {
    backend: 'wasm',
    device: 'test',
    imageSize: 64,
    batchSize: 2,
    checkpointActivations: false,
    secondsPerStep: 1.5,
    cpuSecondsPerStep: 1.4,
    microBatches: 1,
    tfjsPeakBytes: 1 * GiB,
    wasmHeapBytes: 1 * GiB,
    peakRssBytes: 1.5 * GiB,
    ...over,
  };
}

describe('train --dry-run', () => {
  it('measures two real steps in a child process (tiny model, cpu), 2 of 3 micro-batches each', () => {
    const result = dryRun(tinyConfig(data, { grad_accum: 3 }));
    const m = result.measurement!;
    console.log(result.lines.join('\n'));
    expect(result.fits).toBe(true);
    expect(m.backend).toBe('cpu');
    expect(m.imageSize).toBe(64);
    expect(m.batchSize).toBe(2);
    expect(m.microBatches).toBe(2);
    expect(result.lines[1]).toContain('(timed over 2 of its 3 micro-batches)');
    expect(m.secondsPerStep).toBeGreaterThan(0);
    expect(m.cpuSecondsPerStep).toBeGreaterThan(0);
    // parameters, AdamW's moments and the step's activations: more than the parameters' 4 bytes each
    expect(m.tfjsPeakBytes).toBeGreaterThan(1e6);
    expect(m.wasmHeapBytes).toBeNull();
    expect(m.peakRssBytes).toBeGreaterThan(m.tfjsPeakBytes / 4);
    expect(result.lines.at(-1)).toBe('fits');
  });

  it("passes on a run's error that is not about memory", () => {
    const config = tinyConfig({ train: `${data.train}-missing`, val: data.val });
    expect(() => dryRun(config)).toThrow(/the dry run's step failed \(exit code 1\): .*missing/);
  });

  it('says fits, fits tightly, or does not fit, with the switches not in use', () => {
    const config = tinyConfig(data, { batch_size: 4 });
    const fine = verdict(config, measurement({}), undefined, 8 * GiB);
    expect(fine.fits).toBe(true);
    expect(fine.lines.at(-1)).toBe('fits');

    const tight = verdict(config, measurement({ wasmHeapBytes: 0.95 * WASM_HEAP_LIMIT_BYTES }), undefined, 8 * GiB);
    expect(tight.fits).toBe(true);
    expect(tight.lines).toContain('fits, with under a tenth to spare');

    const overRam = verdict(config, measurement({ backend: 'tensorflow', wasmHeapBytes: null, peakRssBytes: 9 * GiB }), undefined, 8 * GiB);
    expect(overRam.fits).toBe(false);
    expect(overRam.lines).toContain("does not fit: the step's peak RSS is above the memory available");
    const switches = overRam.lines.filter((l) => l.startsWith('  to use less memory: '));
    expect(switches.map((l) => l.split(': ')[1])).toEqual(['train.checkpoint_activations', 'adapters', 'model.trainable', 'train.batch_size', 'backend']);
    expect(overRam.lines.join('\n')).toContain('train.batch_size: 2 with train.grad_accum: 2');

    const odd = verdict(tinyConfig(data, { batch_size: 3, grad_accum: 2 }), measurement({ peakRssBytes: 9 * GiB }), undefined, 8 * GiB);
    expect(odd.lines.join('\n')).toContain('train.batch_size: 1 with train.grad_accum: 6 (the same effective batch)');

    const aborted = verdict(
      tinyConfig(data, { batch_size: 1, checkpoint_activations: true }),
      undefined,
      'exit code 7: Aborted()',
      8 * GiB,
    );
    expect(aborted.fits).toBe(false);
    expect(aborted.lines[1]).toBe('does not fit: the step failed (exit code 7: Aborted()); the wasm heap is capped at 4 GiB');
    // checkpointing is on and the batch is 1 already: neither is offered
    expect(aborted.lines.filter((l) => l.startsWith('  to use less memory: ')).map((l) => l.split(': ')[1])).toEqual(['adapters', 'model.trainable', 'backend']);
  });
});
