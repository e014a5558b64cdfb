/**
 * Train / validation split by patient, seeded: every slice of one patient lands on the same side,
 * and the same ids, fraction and seed always give the same split (written to the run directory
 * and read back on resume and by eval).
 */
import seedrandom from 'seedrandom';

export interface PatientSplit {
  seed: string;
  valFraction: number;
  train: string[];
  val: string[];
}

export function splitByPatient(ids: readonly string[], valFraction: number, seed: string | number): PatientSplit {
  if (!(valFraction >= 0 && valFraction < 1)) throw new Error(`val_fraction must be in [0, 1), got ${valFraction}`);
  const unique = [...new Set(ids)].sort();
  if (unique.length !== ids.length) throw new Error('splitByPatient: patient ids must be unique');
  const rng = seedrandom(`split/${seed}`);
  // Fisher-Yates on the sorted ids: the split does not depend on the order files were listed in
  const order = unique.slice();
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const nVal = valFraction > 0 ? Math.max(1, Math.round(unique.length * valFraction)) : 0;
  if (nVal >= unique.length) throw new Error(`val_fraction ${valFraction} leaves no training patient out of ${unique.length}`);
  const val = new Set(order.slice(0, nVal));
  return { seed: String(seed), valFraction, train: unique.filter((id) => !val.has(id)), val: unique.filter((id) => val.has(id)) };
}
