/**
 * Slice → model input, in plain typed-array code: resize (image bilinear, mask nearest), flips and
 * small rotations (one inverse affine map per output grid, so image, mask and box always agree),
 * gray → 3 channels, ImageNet normalization, channels-last output; box prompt from the label's
 * bounding box with a random outward shift.
 *
 * Pixel convention: half-pixel centres (OpenCV INTER_LINEAR / torch align_corners=False); output
 * pixel x at resolution N samples source coordinate (x + 0.5) * W / N - 0.5. Bilinear clamps to the
 * edge inside the image; nearest takes floor(coord + 0.5) (torch 'nearest-exact'). Pixels that a
 * rotation brings in from outside the source are 0 (black) and background.
 */
import type { ImagePlane, LabelPlane, SliceData } from './sampling.js';

export { IMAGENET_MEAN, IMAGENET_STD } from '../model/config.js';
import { IMAGENET_MEAN, IMAGENET_STD } from '../model/config.js';

export interface AugmentOptions {
  /** random horizontal flips (probability 0.5) */
  flipH: boolean;
  /** random vertical flips (probability 0.5) */
  flipV: boolean;
  /** rotations drawn uniformly in ±maxRotation degrees; 0 for none */
  maxRotation: number;
}

export const DEFAULT_AUGMENT: AugmentOptions = { flipH: true, flipV: true, maxRotation: 10 };

/** The geometric augmentation of one sample. */
export interface Augment {
  flipH: boolean;
  flipV: boolean;
  /** radians; positive turns the image counter-clockwise as displayed (y down) */
  angle: number;
}

export const IDENTITY: Augment = { flipH: false, flipV: false, angle: 0 };

/** Everything random about one sample: geometry and the four box-shift draws (uniform in [0,1)). */
export interface SampleParams {
  aug: Augment;
  shift: [number, number, number, number];
}

export const UNPERTURBED: SampleParams = { aug: IDENTITY, shift: [0, 0, 0, 0] };

/** Draw a sample's parameters; a fixed number of draws per option set, in a fixed order. */
export function drawParams(rng: () => number, augment: AugmentOptions | null): SampleParams {
  const shift: [number, number, number, number] = [rng(), rng(), rng(), rng()];
  if (!augment) return { aug: IDENTITY, shift };
  const flipH = augment.flipH ? rng() < 0.5 : false;
  const flipV = augment.flipV ? rng() < 0.5 : false;
  const angle = augment.maxRotation > 0 ? ((rng() * 2 - 1) * augment.maxRotation * Math.PI) / 180 : 0;
  return { aug: { flipH, flipV, angle }, shift };
}

/** bbox_shift is given at 256 scale (MedSAM); the maximum shift in pixels at resolution `size`. */
export function scaledBoxShift(bboxShift: number, size: number): number {
  return Math.round((bboxShift * size) / 256);
}

/**
 * Affine map from output pixel (x, y) on an `out`×`out` grid to continuous source pixel coordinates
 * of a `srcW`×`srcH` image: sx = ax*x + bx*y + cx, sy = ay*x + by*y + cy.
 * The augmentation is the forward transform source → output (flips, then rotation about the centre);
 * this is its inverse.
 */
export interface PixelMap {
  ax: number;
  bx: number;
  cx: number;
  ay: number;
  by: number;
  cy: number;
}

export function pixelMap(srcW: number, srcH: number, out: number, aug: Augment): PixelMap {
  // In coordinates centred on the grids, ux = x - (out-1)/2 and vx = sx - (W-1)/2:
  //   vx = (W/out) * fx * ( cos*ux - sin*uy ),   vy = (H/out) * fy * ( sin*ux + cos*uy )
  // (fx, fy = -1 for a flip; the inverse rotation is by -angle in the y-down frame).
  // Angle 0 uses exact 1/0 so that the separable fast paths apply and identity maps are exact.
  const cos = aug.angle === 0 ? 1 : Math.cos(aug.angle);
  const sin = aug.angle === 0 ? 0 : Math.sin(aug.angle);
  const kx = (srcW / out) * (aug.flipH ? -1 : 1);
  const ky = (srcH / out) * (aug.flipV ? -1 : 1);
  const c = (out - 1) / 2;
  const ax = kx * cos;
  const bx = sin === 0 ? 0 : -kx * sin;
  const ay = sin === 0 ? 0 : ky * sin;
  const by = ky * cos;
  return {
    ax,
    bx,
    cx: (srcW - 1) / 2 - (ax + bx) * c,
    ay,
    by,
    cy: (srcH - 1) / 2 - (ay + by) * c,
  };
}

/** No rotation (flips and scaling only): rows and columns can be resampled independently. */
function separable(m: PixelMap): boolean {
  return m.bx === 0 && m.ay === 0;
}

const EPS = 1e-6;

/**
 * Bilinear-resample the slice's image onto an S×S grid through `map`, gray → 3 channels, normalize
 * with ImageNet mean/std, and write channels-last into dst[offset .. offset + S*S*3).
 */
export function warpImage(src: ImagePlane, size: number, map: PixelMap, dst: Float32Array, offset: number): void {
  const a0 = src.imageScale / IMAGENET_STD[0];
  const a1 = src.imageScale / IMAGENET_STD[1];
  const a2 = src.imageScale / IMAGENET_STD[2];
  const b0 = -IMAGENET_MEAN[0] / IMAGENET_STD[0];
  const b1 = -IMAGENET_MEAN[1] / IMAGENET_STD[1];
  const b2 = -IMAGENET_MEAN[2] / IMAGENET_STD[2];
  const norm = [a0, b0, a1, b1, a2, b2];
  if (separable(map)) {
    if (src.channels === 1) warpGraySeparable(src, size, map, dst, offset, norm);
    else warpSeparableRGB(src, size, map, dst, offset, norm);
  } else warpGeneral(src, size, map, dst, offset, norm);
}

/** Per-output-column source taps for a separable map: left index, right index (both * stride), weight. */
function columnTaps(size: number, scale: number, shift: number, width: number, stride: number) {
  const i0 = new Int32Array(size);
  const i1 = new Int32Array(size);
  const w = new Float32Array(size);
  const max = width - 1;
  for (let x = 0; x < size; x++) {
    let s = scale * x + shift;
    s = s < 0 ? 0 : s > max ? max : s;
    const i = Math.floor(s);
    i0[x] = i * stride;
    i1[x] = (i < max ? i + 1 : i) * stride;
    w[x] = s - i;
  }
  return { i0, i1, w };
}

/** Gray, no rotation: each needed source row is resampled horizontally once, then rows are blended. */
function warpGraySeparable(src: ImagePlane, size: number, map: PixelMap, dst: Float32Array, offset: number, norm: number[]): void {
  const { image, width: W, height: H } = src;
  const [a0, b0, a1, b1, a2, b2] = norm;
  const { i0: xi0, i1: xi1, w: xw } = columnTaps(size, map.ax, map.cx, W, 1);
  let rowA = new Float32Array(size);
  let rowB = new Float32Array(size);
  let ja = -1;
  let jb = -1;
  const fill = (row: Float32Array, j: number) => {
    const base = j * W;
    for (let x = 0; x < size; x++) {
      const l = image[base + xi0[x]];
      row[x] = l + (image[base + xi1[x]] - l) * xw[x];
    }
  };
  const maxY = H - 1;
  let o = offset;
  for (let y = 0; y < size; y++) {
    let sy = map.by * y + map.cy;
    sy = sy < 0 ? 0 : sy > maxY ? maxY : sy;
    const j0 = Math.floor(sy);
    const j1 = j0 < maxY ? j0 + 1 : j0;
    const wy = sy - j0;
    if (j0 !== ja) {
      if (j0 === jb) {
        const t = rowA;
        rowA = rowB;
        rowB = t;
        jb = ja;
      } else fill(rowA, j0);
      ja = j0;
    }
    if (wy !== 0 && j1 !== jb) {
      fill(rowB, j1);
      jb = j1;
    }
    if (wy === 0) {
      for (let x = 0; x < size; x++, o += 3) {
        const v = rowA[x];
        dst[o] = v * a0 + b0;
        dst[o + 1] = v * a1 + b1;
        dst[o + 2] = v * a2 + b2;
      }
    } else {
      for (let x = 0; x < size; x++, o += 3) {
        const t = rowA[x];
        const v = t + (rowB[x] - t) * wy;
        dst[o] = v * a0 + b0;
        dst[o + 1] = v * a1 + b1;
        dst[o + 2] = v * a2 + b2;
      }
    }
  }
}

function warpSeparableRGB(src: ImagePlane, size: number, map: PixelMap, dst: Float32Array, offset: number, norm: number[]): void {
  const { image, width: W, height: H } = src;
  const [a0, b0, a1, b1, a2, b2] = norm;
  const { i0: xi0, i1: xi1, w: xw } = columnTaps(size, map.ax, map.cx, W, 3);
  const maxY = H - 1;
  const stride = W * 3;
  let o = offset;
  for (let y = 0; y < size; y++) {
    let sy = map.by * y + map.cy;
    sy = sy < 0 ? 0 : sy > maxY ? maxY : sy;
    const j0 = Math.floor(sy);
    const wy = sy - j0;
    const r0 = j0 * stride;
    const r1 = (j0 < maxY ? j0 + 1 : j0) * stride;
    for (let x = 0; x < size; x++, o += 3) {
      const p00 = r0 + xi0[x];
      const p01 = r0 + xi1[x];
      const p10 = r1 + xi0[x];
      const p11 = r1 + xi1[x];
      const wx = xw[x];
      for (let c = 0; c < 3; c++) {
        const top = image[p00 + c] + (image[p01 + c] - image[p00 + c]) * wx;
        const bot = image[p10 + c] + (image[p11 + c] - image[p10 + c]) * wx;
        dst[o + c] = top + (bot - top) * wy;
      }
      dst[o] = dst[o] * a0 + b0;
      dst[o + 1] = dst[o + 1] * a1 + b1;
      dst[o + 2] = dst[o + 2] * a2 + b2;
    }
  }
}

/**
 * The x range [lo, hi] of output row y whose taps lie strictly inside the source (sx in [0, W-2],
 * sy in [0, H-2]: both bilinear neighbours exist, no clamping), shrunk by one pixel for rounding.
 */
function interiorSpan(map: PixelMap, y: number, size: number, W: number, H: number): [number, number] {
  let lo = 0;
  let hi = size - 1;
  const bound = (a: number, s0: number, max: number) => {
    if (a === 0) {
      if (s0 < 0 || s0 > max) hi = -1;
      return;
    }
    const p = (0 - s0) / a;
    const q = (max - s0) / a;
    lo = Math.max(lo, Math.ceil(Math.min(p, q)) + 1);
    hi = Math.min(hi, Math.floor(Math.max(p, q)) - 1);
  };
  bound(map.ax, map.bx * y + map.cx, W - 2);
  bound(map.ay, map.by * y + map.cy, H - 2);
  return [lo, hi];
}

/** Any affine map (rotations): per-pixel taps; outside the source is black. */
function warpGeneral(src: ImagePlane, size: number, map: PixelMap, dst: Float32Array, offset: number, norm: number[]): void {
  const { image, width: W, height: H, channels: C } = src;
  const [a0, b0, a1, b1, a2, b2] = norm;
  const maxX = W - 1;
  const maxY = H - 1;
  const lo = -0.5 - EPS;
  const hiX = maxX + 0.5 + EPS;
  const hiY = maxY + 0.5 + EPS;
  const stride = W * C;
  const edge = (x: number, y: number) => {
    const o = offset + (y * size + x) * 3;
    const sx = map.ax * x + map.bx * y + map.cx;
    const sy = map.ay * x + map.by * y + map.cy;
    if (sx < lo || sx > hiX || sy < lo || sy > hiY) {
      dst[o] = b0;
      dst[o + 1] = b1;
      dst[o + 2] = b2;
      return;
    }
    const cx = sx < 0 ? 0 : sx > maxX ? maxX : sx;
    const cy = sy < 0 ? 0 : sy > maxY ? maxY : sy;
    const i = Math.floor(cx);
    const j = Math.floor(cy);
    const wx = cx - i;
    const wy = cy - j;
    const i0 = i * C;
    const i1 = (i < maxX ? i + 1 : i) * C;
    const r0 = j * stride;
    const r1 = (j < maxY ? j + 1 : j) * stride;
    for (let c = 0; c < 3; c++) {
      const cc = C === 1 ? 0 : c;
      const top = image[r0 + i0 + cc] + (image[r0 + i1 + cc] - image[r0 + i0 + cc]) * wx;
      const bot = image[r1 + i0 + cc] + (image[r1 + i1 + cc] - image[r1 + i0 + cc]) * wx;
      dst[o + c] = top + (bot - top) * wy;
    }
    dst[o] = dst[o] * a0 + b0;
    dst[o + 1] = dst[o + 1] * a1 + b1;
    dst[o + 2] = dst[o + 2] * a2 + b2;
  };
  for (let y = 0; y < size; y++) {
    // Gray interior: no bounds checks or clamping. Everything else (RGB, borders, outside): edge().
    const [xlo, xhi] = C === 1 ? interiorSpan(map, y, size, W, H) : [size, -1];
    const split = xhi >= xlo;
    const firstEnd = split ? xlo : size;
    for (let x = 0; x < firstEnd; x++) edge(x, y);
    if (!split) continue;
    let sx = map.ax * xlo + map.bx * y + map.cx;
    let sy = map.ay * xlo + map.by * y + map.cy;
    let o = offset + (y * size + xlo) * 3;
    for (let x = xlo; x <= xhi; x++, sx += map.ax, sy += map.ay, o += 3) {
      const i = sx | 0;
      const j = sy | 0;
      const wx = sx - i;
      const wy = sy - j;
      const p = j * W + i;
      const t = image[p];
      const top = t + (image[p + 1] - t) * wx;
      const b = image[p + W];
      const bot = b + (image[p + W + 1] - b) * wx;
      const v = top + (bot - top) * wy;
      dst[o] = v * a0 + b0;
      dst[o + 1] = v * a1 + b1;
      dst[o + 2] = v * a2 + b2;
    }
    for (let x = xhi + 1; x < size; x++) edge(x, y);
  }
}

/**
 * Nearest-sample `label` of the slice's label map onto an out×out grid through `map`.
 * With `dst`, writes 1/0 floats at dst[offset .. offset + out*out); returns the bounding box of the
 * label on that grid as [x0, y0, x1, y1] (inclusive pixel indices) and its pixel count, or null when
 * it is not visible there. Only the output region that the label's source bounding box maps to is
 * visited: an output pixel takes source pixel (floor(sx + 0.5), floor(sy + 0.5)), which can only be
 * the label inside that box.
 */
export function warpLabel(
  src: LabelPlane,
  label: number,
  out: number,
  map: PixelMap,
  dst?: Float32Array,
  offset = 0,
): { box: [number, number, number, number]; count: number } | null {
  if (dst) dst.fill(0, offset, offset + out * out);
  const lb = src.labelBoxes.get(label);
  if (!lb) return null;
  const { labels, labelWidth: W } = src;
  const [bx0, by0, bx1, by1] = lb;
  // Output-space extent of the source box [bx0-.5, bx1+.5] x [by0-.5, by1+.5] (inverse of the affine map).
  const det = map.ax * map.by - map.bx * map.ay;
  let xa = Infinity;
  let xb = -Infinity;
  let ya = Infinity;
  let yb = -Infinity;
  for (const sx of [bx0 - 0.5, bx1 + 0.5]) {
    for (const sy of [by0 - 0.5, by1 + 0.5]) {
      const dx = sx - map.cx;
      const dy = sy - map.cy;
      const x = (map.by * dx - map.bx * dy) / det;
      const y = (map.ax * dy - map.ay * dx) / det;
      xa = Math.min(xa, x);
      xb = Math.max(xb, x);
      ya = Math.min(ya, y);
      yb = Math.max(yb, y);
    }
  }
  const x0r = Math.max(0, Math.floor(xa) - 1);
  const x1r = Math.min(out - 1, Math.ceil(xb) + 1);
  const y0r = Math.max(0, Math.floor(ya) - 1);
  const y1r = Math.min(out - 1, Math.ceil(yb) + 1);
  let x0 = out;
  let y0 = out;
  let x1 = -1;
  let y1 = -1;
  let count = 0;
  for (let y = y0r; y <= y1r; y++) {
    let sx = map.ax * x0r + map.bx * y + map.cx;
    let sy = map.ay * x0r + map.by * y + map.cy;
    const o = offset + y * out;
    for (let x = x0r; x <= x1r; x++, sx += map.ax, sy += map.ay) {
      const i = Math.floor(sx + 0.5);
      const j = Math.floor(sy + 0.5);
      if (i < bx0 || i > bx1 || j < by0 || j > by1 || labels[j * W + i] !== label) continue;
      if (dst) dst[o + x] = 1;
      count++;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      y1 = y;
    }
  }
  return count === 0 ? null : { box: [x0, y0, x1, y1], count };
}

/**
 * MedSAM's box prompt: each side of the bounding box moved outward by a random integer 0..maxShift
 * (from the four draws in [0,1)), clamped to 0..size.
 */
export function shiftBox(
  box: readonly [number, number, number, number],
  maxShift: number,
  draws: readonly [number, number, number, number],
  size: number,
): [number, number, number, number] {
  const d = (u: number) => Math.floor(u * (maxShift + 1));
  return [
    Math.max(0, box[0] - d(draws[0])),
    Math.max(0, box[1] - d(draws[1])),
    Math.min(size, box[2] + d(draws[2])),
    Math.min(size, box[3] + d(draws[3])),
  ];
}

/** Where renderSample writes sample `i` of a batch. */
export interface BatchBuffers {
  images: Float32Array;
  masks: Float32Array;
  boxes: Float32Array;
  /** (B, S, S) ground truth at input resolution, written when present (clicks are drawn from it) */
  fullMasks?: Float32Array;
}

/**
 * Render one sample (slice, label) into slot `i` of the batch buffers at model resolution `size`:
 * image (S,S,3), low-res ground truth (S/4,S/4), box, and the full-resolution ground truth when
 * asked. Returns false, writing nothing useful, when the label is not visible at either
 * resolution (a tiny label lost by resizing or rotated out);
 * without `requireLowRes`, only the input resolution has to show it (scoring at native resolution).
 */
export function renderSample(
  src: SliceData,
  label: number,
  size: number,
  maxShift: number,
  params: SampleParams,
  dst: BatchBuffers,
  i: number,
  requireLowRes = true,
): boolean {
  const low = size / 4;
  const labelMap = pixelMap(src.labelWidth, src.labelHeight, size, params.aug);
  const full = warpLabel(src, label, size, labelMap, dst.fullMasks, i * size * size);
  if (!full) return false;
  const lowMap = pixelMap(src.labelWidth, src.labelHeight, low, params.aug);
  const lowRes = warpLabel(src, label, low, lowMap, dst.masks, i * low * low);
  if (!lowRes && requireLowRes) return false;
  warpImage(src, size, pixelMap(src.width, src.height, size, params.aug), dst.images, i * size * size * 3);
  dst.boxes.set(shiftBox(full.box, maxShift, params.shift, size), i * 4);
  return true;
}
