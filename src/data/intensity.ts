/**
 * Intensity normalization to uint8, as the medical segmentation challenges (MedSAM / MedSAM2
 * preprocessing) prepare their npz files:
 * - CT: clip to a window [L - W/2, L + W/2] and map it linearly onto 0..255.
 * - MR, PET: clip to the 0.5th and 99.5th percentiles of the positive voxels, map the clipped range
 *   onto 0..255, and keep voxels that were exactly 0 at 0 (background stays black).
 * Values are truncated to integers like numpy's `np.uint8(x)` on the scaled floats.
 *
 * One difference from the MedSAM scripts, on purpose: CT is mapped with the window bounds
 * themselves, where the scripts use the min and max of the clipped volume. The two agree whenever
 * the volume reaches both ends of the window (every CT with air and bone in it); the window form
 * keeps one HU value on one gray level across volumes.
 */

export interface CtWindow {
  width: number;
  level: number;
}

export const CT_WINDOW_PRESETS: Record<string, CtWindow> = {
  'soft-tissue': { width: 400, level: 40 },
  lung: { width: 1500, level: -600 },
  bone: { width: 1800, level: 400 },
  brain: { width: 80, level: 40 },
};

const PRESET_ALIASES: Record<string, string> = {
  soft: 'soft-tissue',
  softtissue: 'soft-tissue',
  soft_tissue: 'soft-tissue',
  abdomen: 'soft-tissue',
};

/** "W,L" (e.g. "400,40", "1500,-600") or a preset name (soft-tissue, lung, bone, brain). */
export function parseWindow(spec: string): CtWindow {
  const s = spec.trim();
  const name = PRESET_ALIASES[s.toLowerCase()] ?? s.toLowerCase();
  if (CT_WINDOW_PRESETS[name]) return { ...CT_WINDOW_PRESETS[name] };
  const m = /^\s*([+-]?\d+(?:\.\d+)?)\s*,\s*([+-]?\d+(?:\.\d+)?)\s*$/.exec(s);
  if (!m) {
    throw new Error(`--window: expected "WIDTH,LEVEL" (e.g. 400,40) or one of ${Object.keys(CT_WINDOW_PRESETS).join(', ')}; got "${spec}"`);
  }
  const width = Number(m[1]);
  const level = Number(m[2]);
  if (!(width > 0)) throw new Error(`--window: the width must be positive, got ${width}`);
  return { width, level };
}

/** Clip to the window and map [L - W/2, L + W/2] onto 0..255 (truncated). */
export function windowToUint8(values: ArrayLike<number>, win: CtWindow): Uint8Array {
  const lo = win.level - win.width / 2;
  const hi = win.level + win.width / 2;
  const out = new Uint8Array(values.length);
  const range = hi - lo;
  for (let i = 0; i < values.length; i++) {
    let x = values[i];
    if (Number.isNaN(x)) x = lo;
    if (x < lo) x = lo;
    else if (x > hi) x = hi;
    out[i] = Math.trunc(((x - lo) / range) * 255);
  }
  return out;
}

/** k-th smallest (0-based) of `a`, reordering `a` in place (Hoare quickselect, median of three). */
function quickselect(a: Float64Array, k: number, left = 0, right = a.length - 1): number {
  let l = left;
  let r = right;
  while (r > l) {
    const mid = (l + r) >>> 1;
    // median of three as the pivot
    const x = a[l];
    const y = a[mid];
    const z = a[r];
    const pivot = x < y ? (y < z ? y : x < z ? z : x) : x < z ? x : y < z ? z : y;
    let i = l;
    let j = r;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) r = j;
    else if (k >= i) l = i;
    else return a[k];
  }
  return a[k];
}

/**
 * Percentiles with numpy's default ('linear') method: position q/100 * (n - 1) between the two
 * nearest order statistics. `values` is reordered.
 */
export function percentiles(values: Float64Array, qs: readonly number[]): number[] {
  const n = values.length;
  if (n === 0) throw new Error('percentile of an empty set');
  return qs.map((q) => {
    const pos = (q / 100) * (n - 1);
    const lo = Math.floor(pos);
    const t = pos - lo;
    const a = quickselect(values, lo);
    if (t === 0 || lo + 1 >= n) return a;
    // the next order statistic is the minimum of the part above lo
    let b = Infinity;
    for (let i = lo + 1; i < n; i++) if (values[i] < b) b = values[i];
    // numpy's lerp: a + (b - a) t, computed from the nearer end
    const d = b - a;
    return t >= 0.5 ? b - d * (1 - t) : a + d * t;
  });
}

export interface PercentileResult {
  data: Uint8Array;
  low: number;
  high: number;
}

/**
 * MR / PET: clip to the [lowPct, highPct] percentiles of the positive voxels, rescale the clipped
 * volume's range onto 0..255 (truncated), and keep voxels equal to 0 at 0.
 */
export function percentileToUint8(values: ArrayLike<number>, lowPct = 0.5, highPct = 99.5, source = 'volume'): PercentileResult {
  let count = 0;
  for (let i = 0; i < values.length; i++) if (values[i] > 0) count++;
  if (count === 0) throw new Error(`${source}: no positive voxels to take intensity percentiles from`);
  const positive = new Float64Array(count);
  let k = 0;
  for (let i = 0; i < values.length; i++) if (values[i] > 0) positive[k++] = values[i];
  const [low, high] = percentiles(positive, [lowPct, highPct]);
  // range of the clipped volume (like the MedSAM scripts: min/max after clipping)
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (Number.isNaN(v)) continue;
    const c = v < low ? low : v > high ? high : v;
    if (c < min) min = c;
    if (c > max) max = c;
  }
  const out = new Uint8Array(values.length);
  const range = max - min;
  if (range > 0) {
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === 0 || Number.isNaN(v)) continue;
      const c = v < low ? low : v > high ? high : v;
      out[i] = Math.trunc(((c - min) / range) * 255);
    }
  }
  return { data: out, low, high };
}
