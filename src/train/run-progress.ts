/**
 * A run's progress between steps: the counters a checkpoint stores, which checkpoints a step
 * writes (best on a better validation Dice, step-N every save_every, latest with any of them and
 * at the end or a stop), and the SIGINT/SIGTERM request to stop after the current step.
 */
import type { TrainLoader } from '../data/loader.js';
import { fromTfParams } from '../model/weights.js';
import { saveCheckpoint, stepName, type TrainState } from './checkpoint.js';
import type { TrainConfig } from './config.js';
import type { ModelSetup } from './setup.js';

/** What a checkpoint reads of the slice or clip loader. */
type LoaderCursor = Pick<TrainLoader, 'state' | 'skipped'>;

export interface RunProgress {
  step: number;
  bestValDice: number | null;
  samplesSeen: number;
}

/** The run's progress as a checkpoint's state.json holds it. */
function trainState(p: RunProgress, loader: LoaderCursor): TrainState {
  const cursor = loader.state();
  return {
    step: p.step,
    epoch: Number((cursor as { epoch?: number }).epoch ?? 0),
    loader: cursor,
    bestValDice: p.bestValDice,
    skippedSamples: loader.skipped(),
    samplesSeen: p.samplesSeen,
  };
}

/** Checkpoints for the step just done: `better` (a new best validation Dice), `last` step or `stopping`. */
export async function saveStepCheckpoints(
  run: ModelSetup,
  loader: LoaderCursor,
  p: RunProgress,
  at: { better: boolean; last: boolean; stopping: boolean },
  t: TrainConfig['train'],
  runDir: string,
  configYaml: string,
): Promise<boolean> {
  const names: string[] = [];
  if (at.better) names.push('best');
  if (t.save_every > 0 && p.step % t.save_every === 0) names.push(stepName(p.step));
  if (names.length === 0 && !at.last && !at.stopping) return false;
  names.push('latest');
  const optimizer = await run.optimizer.exportState();
  // an adapter run keeps only what trains; its base weights are referenced, not copied
  const model = await fromTfParams(run.adapter ? run.trainable : run.params);
  saveCheckpoint(runDir, { model, adapter: run.adapter?.meta, optimizer, state: trainState(p, loader), configYaml }, names, t.keep_last);
  return true;
}

/** SIGINT/SIGTERM ask to stop after the current step (`requested`); a second one quits at once. */
export function watchStopSignals(enabled: boolean, onFirst: (sig: NodeJS.Signals) => void): { requested: () => boolean; dispose: () => void } {
  let requested = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (requested) process.exit(130);
    requested = true;
    onFirst(sig);
  };
  if (enabled) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }
  return {
    requested: () => requested,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
