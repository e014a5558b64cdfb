/**
 * Sharded jobs: one slice of a case list per task of a SLURM array or a Kubernetes Indexed Job.
 * `--shard i/n` (i counted from 0) wins; without it the scheduler's variables say which task this
 * is: SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT (and SLURM_ARRAY_TASK_MIN, when the array
 * does not start at 0), or Kubernetes' JOB_COMPLETION_INDEX with MEDTUNE_SHARD_COUNT (the Job's
 * `completions`, which Kubernetes does not pass to the pod).
 */
export interface Shard {
  index: number;
  count: number;
  /** where the shard came from, for the log line */
  source: string;
}

function integer(text: string, what: string): number {
  if (!/^\d+$/.test(text.trim())) throw new Error(`${what} must be a non-negative integer, got '${text}'`);
  return Number(text);
}

function checked(index: number, count: number, source: string): Shard {
  if (count < 1) throw new Error(`${source}: the shard count must be at least 1, got ${count}`);
  if (index >= count) throw new Error(`${source}: shard index ${index} is not below the count ${count} (indices start at 0)`);
  return { index, count, source };
}

/** The shard this process works on, or undefined to work on everything. */
export function resolveShard(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): Shard | undefined {
  if (flag !== undefined) {
    const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(flag);
    if (!m) throw new Error(`--shard ${flag}: expected INDEX/COUNT, e.g. 0/4 (indices start at 0)`);
    return checked(Number(m[1]), Number(m[2]), `--shard ${flag}`);
  }
  if (env.SLURM_ARRAY_TASK_ID !== undefined) {
    if (env.SLURM_ARRAY_TASK_COUNT === undefined) throw new Error('SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not');
    const min = env.SLURM_ARRAY_TASK_MIN === undefined ? 0 : integer(env.SLURM_ARRAY_TASK_MIN, 'SLURM_ARRAY_TASK_MIN');
    const id = integer(env.SLURM_ARRAY_TASK_ID, 'SLURM_ARRAY_TASK_ID');
    return checked(id - min, integer(env.SLURM_ARRAY_TASK_COUNT, 'SLURM_ARRAY_TASK_COUNT'), 'SLURM array');
  }
  if (env.JOB_COMPLETION_INDEX !== undefined) {
    if (env.MEDTUNE_SHARD_COUNT === undefined) {
      throw new Error('JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): set MEDTUNE_SHARD_COUNT to the Job\'s completions');
    }
    return checked(integer(env.JOB_COMPLETION_INDEX, 'JOB_COMPLETION_INDEX'), integer(env.MEDTUNE_SHARD_COUNT, 'MEDTUNE_SHARD_COUNT'), 'Kubernetes Indexed Job');
  }
  return undefined;
}

/**
 * This shard's cases: sorted by name, then every count-th one from the index (round robin keeps
 * the shards' sizes within one of each other and mixes large and small cases alike).
 */
export function shardCases<T>(cases: readonly T[], shard: Shard | undefined, name: (c: T) => string): T[] {
  const sorted = cases.slice().sort((a, b) => (name(a) < name(b) ? -1 : name(a) > name(b) ? 1 : 0));
  if (!shard) return sorted;
  return sorted.filter((_, i) => i % shard.count === shard.index);
}
