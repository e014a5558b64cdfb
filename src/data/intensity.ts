/**
 * Intensity normalization to uint8, as the medical segmentation challenges (MedSAM / MedSAM2
 * preprocessing) prepare their npz files:
 * - CT: clip to a window [C - W/2, C + W/2] (DICOM Window Center C, Window Width W) and map it
 *   linearly onto 0..255.
 * - MR, PET: clip to the 0.5th and 99.5th percentiles of the positive voxels, map the clipped range
 *   onto 0..255, and keep voxels that were exactly 0 at 0 (background stays black).
 * Values are truncated to integers like numpy's `np.uint8(x)` on the scaled floats.
 *
 * One difference from the MedSAM scripts, on purpose: CT is mapped with the window bounds
 * themselves, where the scripts use the min and max of the clipped volume. The two agree whenever
 * the volume reaches both ends of the window (every CT with air and bone in it); the window form
 * keeps one HU value on one gray level across volumes.
 */

/** An intensity window in DICOM's terms: Window Center (level) and Window Width. */
export interface IntensityWindow {
  center: number;
  width: number;
}

export const WINDOW_PRESETS: Record<string, IntensityWindow> = {
  'soft-tissue': { center: 40, width: 400 },
  lung: { center: -600, width: 1500 },
  bone: { center: 400, width: 1800 },
  brain: { center: 40, width: 80 },
};

const PRESET_ALIASES: Record<string, string> = {
  soft: 'soft-tissue',
  softtissue: 'soft-tissue',
  soft_tissue: 'soft-tissue',
  abdomen: 'soft-tissue',
};

/** The one description of `--window` every command's help uses. */
export const WINDOW_HELP =
  'intensity window CENTER,WIDTH (DICOM Window Center, Window Width; e.g. 40,400), center=C,width=W, ' +
  'or a preset: soft-tissue (40,400), lung (-600,1500), bone (400,1800), brain (40,80)';

const NUMBER = String.raw`[+-]?(?:\d+(?:\.\d*)?|\.\d+)`;

/**
 * `--window`, the same on every command: a preset name, `center=C,width=W` (either order), or
 * `C,W` — center first, as DICOM lists Window Center before Window Width.
 *
 * `prepare` once read `a,b` as WIDTH,LEVEL, and a pair of numbers cannot say which order it was
 * written in. Every clinical window is at least as wide as its center is far from 0 (soft tissue
 * 40,400; lung -600,1500; bone 400,1800; brain 40,80), while the same windows in the old order are
 * not (400,40 would be center 400, width 40). So an unlabelled pair must have width >= |center|;
 * any other pair — every preset written the old way among them — is refused with both readings
 * spelled out, and the labelled form takes any window.
 */
export function parseWindow(spec: string, option = '--window'): IntensityWindow {
  const s = spec.trim();
  const name = PRESET_ALIASES[s.toLowerCase()] ?? s.toLowerCase();
  if (WINDOW_PRESETS[name]) return { ...WINDOW_PRESETS[name] };
  const labelled = new RegExp(`^(center|c|width|w)\\s*=\\s*(${NUMBER})\\s*,\\s*(center|c|width|w)\\s*=\\s*(${NUMBER})$`, 'i').exec(s);
  const bare = new RegExp(`^(${NUMBER})\\s*,\\s*(${NUMBER})$`).exec(s);
  let win: IntensityWindow;
  if (labelled) {
    const [k1, v1, k2, v2] = labelled.slice(1).map((x) => x.toLowerCase());
    if (k1[0] === k2[0]) throw new Error(`${option} "${spec}": give center= and width= once each`);
    win = k1[0] === 'c' ? { center: Number(v1), width: Number(v2) } : { center: Number(v2), width: Number(v1) };
  } else if (bare) {
    win = { center: Number(bare[1]), width: Number(bare[2]) };
    if (!(win.width >= Math.abs(win.center))) {
      const [a, b] = [win.center, win.width];
      const asLabelled = b > 0 ? `; for center ${a}, width ${b} write center=${a},width=${b}` : '';
      throw new Error(
        `${option} "${spec}": the order is CENTER,WIDTH (DICOM Window Center, Window Width), and a window narrower than ` +
          `its center's distance from 0 is how prepare's old WIDTH,LEVEL order looks. For width ${a}, level ${b} write ${b},${a}${asLabelled}.`,
      );
    }
  } else {
    throw new Error(`${option} "${spec}": expected ${WINDOW_HELP}`);
  }
  if (!(win.width > 0)) throw new Error(`${option} "${spec}": the width must be positive, got ${win.width}`);
  return win;
}

/** [center - width/2, center + width/2] */
export function windowBounds(win: IntensityWindow): [number, number] {
  return [win.center - win.width / 2, win.center + win.width / 2];
}

/**
 * The one clip-and-map of intensities: [lo, hi] linearly onto 0..`top`, clipped, into `out` — a
 * Uint8Array with top 255 truncates like numpy's `np.uint8(x)`, a Float32Array with top 1 gives
 * [0, 1]. NaN maps to 0; an empty range (hi <= lo) maps x to x - lo, clipped.
 */
export function mapIntensities<A extends Uint8Array | Float32Array>(values: ArrayLike<number>, [lo, hi]: [number, number], out: A, top: number): A {
  const range = hi > lo ? hi - lo : 1;
  for (let i = 0; i < values.length; i++) {
    const v = (values[i] - lo) / range;
    out[i] = (v > 0 ? (v < 1 ? v : 1) : 0) * top; // NaN fails v > 0
  }
  return out;
}

/** CT to uint8 as the challenges store it: the window onto 0..255 (truncated). */
export function windowToUint8(values: ArrayLike<number>, win: IntensityWindow): Uint8Array {
  return mapIntensities(values, windowBounds(win), new Uint8Array(values.length), 255);
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
