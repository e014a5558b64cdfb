/**
 * Learning-rate schedule: linear warmup to the base lr, then a half cosine down to `minLr`.
 * Returned as a multiplier of the base lr, so every parameter group (each with its own base lr)
 * follows the same curve; `minLr` is given in units of the base `lr`'s group and scales with it.
 */
export interface ScheduleOptions {
  lr: number;
  minLr: number;
  warmupSteps: number;
  maxSteps: number;
}

/** The lr multiplier for the update that makes optimizer step `step` (0-based). */
export function lrScale(step: number, { lr, minLr, warmupSteps, maxSteps }: ScheduleOptions): number {
  if (warmupSteps > 0 && step < warmupSteps) return (step + 1) / warmupSteps;
  const decaySteps = Math.max(1, maxSteps - warmupSteps);
  const progress = Math.min(1, (step - warmupSteps) / decaySteps);
  const floor = lr > 0 ? minLr / lr : 0;
  return floor + (1 - floor) * 0.5 * (1 + Math.cos(Math.PI * progress));
}
