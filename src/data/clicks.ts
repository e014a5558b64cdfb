/**
 * Simulated correction clicks, as SAM2's trainer samples them (`get_next_point(method="center")`,
 * the RITM clicker): one click at the point deepest inside the larger error region — a positive
 * click in a false-negative region, a negative one in a false-positive region.
 *
 * The depth is the exact Euclidean distance to the nearest pixel outside the region, with the
 * image border counted as outside (the official code pads by one pixel before cv2's
 * `distanceTransform(DIST_L2, DIST_MASK_PRECISE)`): Felzenszwalb & Huttenlocher's linear-time
 * transform, on squared integer distances so that ties resolve exactly as the reference's argmax.
 */

/** A point prompt in pixel coordinates; label 1 positive (foreground), 0 negative (background). */
export interface Click {
  x: number;
  y: number;
  label: 0 | 1;
}

/** 1-D squared distance transform of `f` (0 or Infinity) along `n` samples, into `d`. */
function transform1d(f: Float64Array, n: number, d: Float64Array, v: Int32Array, z: Float64Array): void {
  let k = -1;
  for (let q = 0; q < n; q++) {
    if (f[q] === Infinity) continue;
    // lower envelope of parabolas rooted at the finite samples
    while (k >= 0) {
      const s = (f[q] + q * q - (f[v[k]] + v[k] * v[k])) / (2 * q - 2 * v[k]);
      if (s > z[k]) {
        k++;
        v[k] = q;
        z[k] = s;
        z[k + 1] = Infinity;
        break;
      }
      k--;
    }
    if (k < 0) {
      k = 0;
      v[0] = q;
      z[0] = -Infinity;
      z[1] = Infinity;
    }
  }
  if (k < 0) {
    d.fill(Infinity, 0, n);
    return;
  }
  let j = 0;
  for (let q = 0; q < n; q++) {
    while (z[j + 1] < q) j++;
    d[q] = (q - v[j]) ** 2 + f[v[j]];
  }
}

/**
 * Squared Euclidean distance from each pixel of `region` (row-major h x w, nonzero = inside) to
 * the nearest pixel outside it, the border counting as outside; 0 outside the region.
 */
export function squaredDepth(region: ArrayLike<number>, h: number, w: number): Float64Array {
  if (region.length !== h * w) throw new Error(`squaredDepth: ${region.length} values for a ${h}x${w} region`);
  const ph = h + 2;
  const pw = w + 2;
  const grid = new Float64Array(ph * pw); // padded with outside pixels (0)
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (region[y * w + x]) grid[(y + 1) * pw + x + 1] = Infinity;
  const n = Math.max(ph, pw);
  const f = new Float64Array(n);
  const d = new Float64Array(n);
  const v = new Int32Array(n);
  const z = new Float64Array(n + 1);
  for (let x = 0; x < pw; x++) {
    for (let y = 0; y < ph; y++) f[y] = grid[y * pw + x];
    transform1d(f, ph, d, v, z);
    for (let y = 0; y < ph; y++) grid[y * pw + x] = d[y];
  }
  for (let y = 0; y < ph; y++) {
    f.set(grid.subarray(y * pw, (y + 1) * pw));
    transform1d(f, pw, d, v, z);
    grid.set(d.subarray(0, pw), y * pw);
  }
  const out = new Float64Array(h * w);
  for (let y = 0; y < h; y++) out.set(grid.subarray((y + 1) * pw + 1, (y + 1) * pw + 1 + w), y * w);
  return out;
}

/** Index and value of the first maximum. */
function argmax(a: Float64Array): [number, number] {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return [best, a[best]];
}

/**
 * The next correction click for a prediction `pred` of `gt` (both h x w, nonzero = foreground).
 * Where the prediction has no error the reference returns a negative click at (0, 0); so does this.
 */
export function nextCorrectionClick(gt: ArrayLike<number>, pred: ArrayLike<number>, h: number, w: number): Click {
  if (gt.length !== h * w || pred.length !== h * w) throw new Error(`nextCorrectionClick: masks must hold ${h}x${w} values`);
  const falseNeg = new Uint8Array(h * w);
  const falsePos = new Uint8Array(h * w);
  for (let i = 0; i < h * w; i++) {
    const g = gt[i] !== 0;
    const p = pred[i] !== 0;
    falseNeg[i] = g && !p ? 1 : 0;
    falsePos[i] = p && !g ? 1 : 0;
  }
  const [fnIdx, fnDepth] = argmax(squaredDepth(falseNeg, h, w));
  const [fpIdx, fpDepth] = argmax(squaredDepth(falsePos, h, w));
  const positive = fnDepth > fpDepth;
  const idx = positive ? fnIdx : fpIdx;
  return { x: idx % w, y: Math.floor(idx / w), label: positive ? 1 : 0 };
}
