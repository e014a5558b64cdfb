import { describe, expect, it } from 'vitest';
import { resolveShard, shardCases } from '../src/shard.js';

describe('resolveShard', () => {
  it('takes --shard over the environment', () => {
    expect(resolveShard('1/4', { SLURM_ARRAY_TASK_ID: '3', SLURM_ARRAY_TASK_COUNT: '8' })).toEqual({ index: 1, count: 4, source: '--shard 1/4' });
  });
  it('reads a SLURM array, also one that starts at 1', () => {
    expect(resolveShard(undefined, { SLURM_ARRAY_TASK_ID: '2', SLURM_ARRAY_TASK_COUNT: '5' })).toMatchObject({ index: 2, count: 5 });
    expect(resolveShard(undefined, { SLURM_ARRAY_TASK_ID: '5', SLURM_ARRAY_TASK_COUNT: '5', SLURM_ARRAY_TASK_MIN: '1' })).toMatchObject({ index: 4, count: 5 });
  });
  it('reads a Kubernetes Indexed Job with its count', () => {
    expect(resolveShard(undefined, { JOB_COMPLETION_INDEX: '0', MEDTUNE_SHARD_COUNT: '3' })).toMatchObject({ index: 0, count: 3 });
    expect(() => resolveShard(undefined, { JOB_COMPLETION_INDEX: '0' })).toThrow(/MEDTUNE_SHARD_COUNT/);
  });
  it('is undefined without flag or scheduler', () => {
    expect(resolveShard(undefined, {})).toBeUndefined();
  });
  it('rejects malformed or out-of-range shards, naming them', () => {
    expect(() => resolveShard('4/4', {})).toThrow(/--shard 4\/4: shard index 4 is not below the count 4/);
    expect(() => resolveShard('1of4', {})).toThrow(/expected INDEX\/COUNT/);
    expect(() => resolveShard('0/0', {})).toThrow(/at least 1/);
    expect(() => resolveShard(undefined, { SLURM_ARRAY_TASK_ID: 'x', SLURM_ARRAY_TASK_COUNT: '2' })).toThrow(/SLURM_ARRAY_TASK_ID must be/);
  });
});

describe('shardCases', () => {
  const cases = ['e', 'a', 'd', 'b', 'c', 'f', 'g'];
  it('splits a list into disjoint shards whose union is the whole, whatever the input order', () => {
    const shards = [0, 1, 2].map((index) => shardCases(cases, { index, count: 3, source: 't' }, (c) => c));
    expect(shards).toEqual([['a', 'd', 'g'], ['b', 'e'], ['c', 'f']]);
    expect(shards.flat().sort()).toEqual(cases.slice().sort());
    expect(shardCases(cases.slice().reverse(), { index: 1, count: 3, source: 't' }, (c) => c)).toEqual(['b', 'e']);
  });
});
