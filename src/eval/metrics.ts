/**
 * Segmentation metrics: Dice similarity coefficient (DSC) and normalized surface Dice (NSD) at a
 * tolerance in mm, for 2D and 3D binary masks with anisotropic voxel spacing.
 *
 * NSD follows the definition of google-deepmind/surface-distance (`compute_surface_distances`
 * followed by `compute_surface_dice_at_tolerance`), the implementation the medical segmentation
 * challenges score with:
 *
 * 1. The masks are cropped to the bounding box of their union and every corner point of the voxel
 *    grid (a point between 2x2 pixels in 2D, 2x2x2 voxels in 3D, outside counted as background)
 *    gets a neighbourhood code, one bit per neighbour. A point whose neighbourhood is neither all
 *    background nor all foreground is a surface point.
 * 2. Each surface point carries the length (2D) or area (3D) of the surface element that marching
 *    squares / marching cubes put in its cell, in mm with the voxel spacing.
 * 3. Distances from every surface point of one mask to the nearest surface point of the other are
 *    exact Euclidean distances in mm (a separable distance transform over the cropped grid).
 * 4. NSD = (area of gt surface within tolerance of pred + area of pred surface within tolerance of
 *    gt) / (total gt area + total pred area).
 *
 * Everything here is an independent implementation of that definition; the reference numbers it
 * is tested against live in test/fixtures/surface-distance/.
 *
 * Edge cases (the challenge convention): both masks empty -> DSC 1 and NSD 1; exactly one empty ->
 * DSC 0 and NSD 0. (The reference library itself returns NaN for both-empty.)
 */

/** A binary mask, flat row-major; any non-zero value is foreground. */
export type Mask = ArrayLike<number>;

export interface SurfaceDistances {
  /** distance in mm from each gt surface element to the nearest pred surface element (Infinity if pred has none) */
  distancesGtToPred: Float64Array;
  /** distance in mm from each pred surface element to the nearest gt surface element */
  distancesPredToGt: Float64Array;
  /** length (2D, mm) or area (3D, mm^2) of each gt surface element, same order as distancesGtToPred */
  surfelAreasGt: Float64Array;
  /** length or area of each pred surface element, same order as distancesPredToGt */
  surfelAreasPred: Float64Array;
}

function checkShape(shape: readonly number[], spacingMm: readonly number[], n: number, what: string): void {
  if (shape.length !== 2 && shape.length !== 3) {
    throw new Error(`${what}: only 2D and 3D masks are supported, got shape (${shape.join(', ')})`);
  }
  if (spacingMm.length !== shape.length) {
    throw new Error(`${what}: spacing has ${spacingMm.length} values for a ${shape.length}D mask`);
  }
  for (const s of spacingMm) {
    if (!(s > 0) || !Number.isFinite(s)) throw new Error(`${what}: voxel spacing must be positive, got (${spacingMm.join(', ')})`);
  }
  const size = shape.reduce((a, b) => a * b, 1);
  if (size !== n) throw new Error(`${what}: mask has ${n} elements, shape (${shape.join(', ')}) needs ${size}`);
}

// ---------------------------------------------------------------------------------------------
// Surface element tables

/**
 * Contour length of each of the 16 marching-squares cells in 2D.
 * Cell code bits: neighbour (i0, i1) in {0,1}^2 -> bit 1 << (3 - (2*i0 + i1)).
 * The contour joins the midpoints of the cell edges whose two ends differ; the two saddle cells
 * (diagonal neighbours) get two separate segments.
 */
export function contourLengthTable2d(spacingMm: readonly number[]): Float64Array {
  const [s0, s1] = spacingMm;
  const vertical = s0; // segment crossing the cell along axis 0
  const horizontal = s1; // segment crossing the cell along axis 1
  const diag = 0.5 * Math.sqrt(s0 * s0 + s1 * s1); // segment cutting off one corner
  const table = new Float64Array(16);
  for (let code = 1; code < 15; code++) {
    const tl = (code >> 3) & 1;
    const tr = (code >> 2) & 1;
    const bl = (code >> 1) & 1;
    const br = code & 1;
    const n = tl + tr + bl + br;
    if (n === 1 || n === 3) table[code] = diag;
    else if (tl === tr) table[code] = horizontal; // top row vs bottom row
    else if (tl === bl) table[code] = vertical; // left column vs right column
    else table[code] = 2 * diag; // saddle: two corners cut off
  }
  return table;
}

type Vec3 = [number, number, number];

/** corner index c = 4*i0 + 2*i1 + i2 of the 2x2x2 cell; its bit in the code is 1 << (7 - c) */
function cornerInside(code: number, k: readonly number[]): boolean {
  return ((code >> (7 - (4 * k[0] + 2 * k[1] + k[2]))) & 1) === 1;
}

/** The 6 faces of the unit cell, each as its 4 corners in cyclic order. */
const CELL_FACES: Vec3[][] = (() => {
  const faces: Vec3[][] = [];
  for (let axis = 0; axis < 3; axis++) {
    const [o0, o1] = [0, 1, 2].filter((a) => a !== axis);
    for (const v of [0, 1]) {
      const face: Vec3[] = [];
      for (const [a, b] of [[0, 0], [1, 0], [1, 1], [0, 1]]) {
        const k: Vec3 = [0, 0, 0];
        k[axis] = v;
        k[o0] = a;
        k[o1] = b;
        face.push(k);
      }
      faces.push(face);
    }
  }
  return faces;
})();

/** Edge midpoint in doubled coordinates (exact small integers, usable as a key). */
function midpoint2(a: Vec3, b: Vec3): Vec3 {
  return [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
}

function triangleAreaVector(a: Vec3, b: Vec3, c: Vec3): Vec3 {
  // points are doubled coordinates: halve them before the cross product
  const u = [(b[0] - a[0]) / 2, (b[1] - a[1]) / 2, (b[2] - a[2]) / 2];
  const v = [(c[0] - a[0]) / 2, (c[1] - a[1]) / 2, (c[2] - a[2]) / 2];
  return [(u[1] * v[2] - u[2] * v[1]) / 2, (u[2] * v[0] - u[0] * v[2]) / 2, (u[0] * v[1] - u[1] * v[0]) / 2];
}

/** All triangulations of a polygon given by vertex indices in cyclic order. */
function triangulations(idx: number[]): Array<Array<[number, number, number]>> {
  if (idx.length < 3) return [[]];
  if (idx.length === 3) return [[[idx[0], idx[1], idx[2]]]];
  const out: Array<Array<[number, number, number]>> = [];
  const a = idx[0];
  const b = idx[idx.length - 1];
  for (let m = 1; m < idx.length - 1; m++) {
    for (const left of triangulations(idx.slice(0, m + 1))) {
      for (const right of triangulations(idx.slice(m))) {
        out.push([...left, ...right, [a, idx[m], b]]);
      }
    }
  }
  return out;
}

/**
 * Marching-cubes surface of each of the 256 cell codes, as the area vectors (normal times area,
 * unit spacing) of its triangles.
 *
 * The iso-surface joins the midpoints of the cell edges whose ends differ. On a face with two
 * diagonal foreground corners (ambiguous), the minority state is separated: the corners of the
 * state held by at most 4 of the 8 cell corners are cut off (so a code and its complement get the
 * same surface). Each closed polygon is split into triangles; a non-planar polygon is split the
 * way that gives the largest area at unit spacing. This reproduces the surface elements of the
 * reference implementation exactly (checked against it for all 256 codes at several spacings).
 */
const SURFEL_AREA_VECTORS: Vec3[][] = (() => {
  const table: Vec3[][] = [];
  for (let code = 0; code < 256; code++) {
    let popcount = 0;
    for (let c = 0; c < 8; c++) popcount += (code >> c) & 1;
    const minorityIsInside = popcount <= 4;
    const segments: Array<[Vec3, Vec3]> = [];
    for (const face of CELL_FACES) {
      const inside = face.map((k) => cornerInside(code, k));
      const crossings: number[] = [];
      for (let i = 0; i < 4; i++) if (inside[i] !== inside[(i + 1) % 4]) crossings.push(i);
      const edgeMid = (i: number): Vec3 => midpoint2(face[i], face[(i + 1) % 4]);
      if (crossings.length === 2) {
        segments.push([edgeMid(crossings[0]), edgeMid(crossings[1])]);
      } else if (crossings.length === 4) {
        for (let j = 0; j < 4; j++) {
          if (inside[j] === minorityIsInside) segments.push([edgeMid((j + 3) % 4), edgeMid(j)]);
        }
      }
    }
    // chain the segments into closed loops
    const key = (p: Vec3) => `${p[0]},${p[1]},${p[2]}`;
    const remaining = segments.slice();
    const vectors: Vec3[] = [];
    while (remaining.length > 0) {
      const [first, second] = remaining.shift()!;
      const loop: Vec3[] = [first, second];
      for (;;) {
        const last = key(loop[loop.length - 1]);
        const i = remaining.findIndex(([p, q]) => key(p) === last || key(q) === last);
        if (i < 0) break;
        const [p, q] = remaining.splice(i, 1)[0];
        loop.push(key(p) === last ? q : p);
      }
      if (key(loop[0]) !== key(loop[loop.length - 1])) throw new Error(`marching cubes: open contour for cell code ${code}`);
      loop.pop();
      let best: Vec3[] = [];
      let bestArea = -1;
      for (const tris of triangulations(loop.map((_, i) => i))) {
        const vs = tris.map(([a, b, c]) => triangleAreaVector(loop[a], loop[b], loop[c]));
        const area = vs.reduce((s, v) => s + Math.hypot(v[0], v[1], v[2]), 0);
        if (area > bestArea + 1e-12) {
          bestArea = area;
          best = vs;
        }
      }
      vectors.push(...best);
    }
    table.push(vectors);
  }
  return table;
})();

/** Surface element area (mm^2) of each of the 256 marching-cubes cells for a voxel spacing. */
export function surfaceAreaTable3d(spacingMm: readonly number[]): Float64Array {
  const [s0, s1, s2] = spacingMm;
  const scale = [s1 * s2, s0 * s2, s0 * s1];
  const table = new Float64Array(256);
  for (let code = 0; code < 256; code++) {
    let sum = 0;
    for (const v of SURFEL_AREA_VECTORS[code]) sum += Math.hypot(v[0] * scale[0], v[1] * scale[1], v[2] * scale[2]);
    table[code] = sum;
  }
  return table;
}

// ---------------------------------------------------------------------------------------------
// Exact Euclidean distance transform

/**
 * Squared Euclidean distance (mm^2) from every grid point to the nearest feature point, exact, by
 * a two-sided scan along axis 0, then lower envelopes of parabolas (Felzenszwalb & Huttenlocher)
 * along each further axis.
 * Axes are processed in order 0, 1, 2 so that the sum is formed as ((d0 s0)^2 + (d1 s1)^2) + (d2 s2)^2.
 * Points with no feature at all get Infinity.
 */
export function squaredDistanceTransform(features: Uint8Array, dims: readonly number[], spacingMm: readonly number[]): Float64Array {
  const total = dims.reduce((a, b) => a * b, 1);
  const f = new Float64Array(total);
  // axis 0 from the binary features: distance in voxels to the nearest feature along the axis,
  // scanned plane by plane forward and backward (contiguous memory), then (d * s0)^2
  const n0 = dims[0];
  const plane = total / n0;
  for (let p = 0; p < plane; p++) f[p] = features[p] ? 0 : Infinity;
  for (let i = plane; i < total; i++) f[i] = features[i] ? 0 : f[i - plane] + 1;
  for (let i = total - plane - 1; i >= 0; i--) {
    const d = f[i + plane] + 1;
    if (d < f[i]) f[i] = d;
  }
  const s0 = spacingMm[0];
  for (let i = 0; i < total; i++) {
    const d = f[i];
    if (d !== Infinity) {
      const m = d * s0;
      f[i] = m * m;
    }
  }
  const maxN = Math.max(...dims);
  const g = new Float64Array(maxN);
  const v = new Int32Array(maxN); // parabola vertices
  const z = new Float64Array(maxN + 1); // envelope boundaries
  const out = new Float64Array(maxN);
  for (let axis = 1; axis < dims.length; axis++) {
    const n = dims[axis];
    const stride = dims.slice(axis + 1).reduce((x, y) => x * y, 1);
    const s = spacingMm[axis];
    const w = s * s;
    const outerCount = total / (n * stride);
    for (let outer = 0; outer < outerCount; outer++) {
      for (let inner = 0; inner < stride; inner++) {
        const base = outer * stride * n + inner;
        for (let q = 0; q < n; q++) g[q] = f[base + q * stride];
        // lower envelope of the parabolas w (x - q)^2 + g[q]
        let k = -1;
        for (let q = 0; q < n; q++) {
          const gq = g[q];
          if (gq === Infinity) continue;
          if (k < 0) {
            k = 0;
            v[0] = q;
            z[0] = -Infinity;
            z[1] = Infinity;
            continue;
          }
          const fq = gq + w * q * q;
          let sct = (fq - (g[v[k]] + w * v[k] * v[k])) / (2 * w * (q - v[k]));
          while (sct <= z[k]) {
            k--;
            sct = (fq - (g[v[k]] + w * v[k] * v[k])) / (2 * w * (q - v[k]));
          }
          k++;
          v[k] = q;
          z[k] = sct;
          z[k + 1] = Infinity;
        }
        if (k < 0) continue; // no finite value on this line: stays Infinity
        let j = 0;
        for (let q = 0; q < n; q++) {
          while (z[j + 1] < q) j++;
          const d = (q - v[j]) * s;
          out[q] = d * d + g[v[j]];
        }
        for (let q = 0; q < n; q++) f[base + q * stride] = out[q];
      }
    }
  }
  return f;
}

// ---------------------------------------------------------------------------------------------
// Surface distances

interface Bbox {
  lo: number[];
  hi: number[];
}

function unionBbox(a: Mask, b: Mask, shape: readonly number[]): Bbox | null {
  // treat a 2D mask as one slice of a 3D one
  const [D, H, W] = shape.length === 3 ? shape : [1, shape[0], shape[1]];
  let lo0 = Infinity;
  let hi0 = -1;
  let lo1 = Infinity;
  let hi1 = -1;
  let lo2 = Infinity;
  let hi2 = -1;
  let i = 0;
  for (let z = 0; z < D; z++) {
    for (let y = 0; y < H; y++) {
      let first = -1;
      let last = -1;
      for (let x = 0; x < W; x++, i++) {
        if (a[i] || b[i]) {
          if (first < 0) first = x;
          last = x;
        }
      }
      if (first >= 0) {
        if (z < lo0) lo0 = z;
        hi0 = z;
        if (y < lo1) lo1 = y;
        if (y > hi1) hi1 = y;
        if (first < lo2) lo2 = first;
        if (last > hi2) hi2 = last;
      }
    }
  }
  if (hi0 < 0) return null;
  return shape.length === 3 ? { lo: [lo0, lo1, lo2], hi: [hi0, hi1, hi2] } : { lo: [lo1, lo2], hi: [hi1, hi2] };
}

/**
 * Neighbourhood codes on the corner grid of the bounding box: grid point q (dims = box size + 1)
 * sits between voxels lo + q - 1 and lo + q along each axis (outside the box counts as background).
 */
function neighbourCodes(mask: Mask, shape: readonly number[], box: Bbox, dims: number[]): Uint8Array {
  const is3d = shape.length === 3;
  const [, H, W] = is3d ? shape : [1, shape[0], shape[1]];
  const lo = is3d ? box.lo : [0, ...box.lo];
  const [G0, G1, G2] = is3d ? dims : [1, dims[0], dims[1]];
  const [C0, C1, C2] = is3d ? [G0 - 1, G1 - 1, G2 - 1] : [1, G1 - 1, G2 - 1];
  // the cropped mask with one zero voxel of padding on each side: P[q + k] = mask[lo + q - 1 + k]
  const P0 = C0 + 2;
  const P1 = C1 + 2;
  const P2 = C2 + 2;
  const pad = new Uint8Array(P0 * P1 * P2);
  for (let z = 0; z < C0; z++) {
    for (let y = 0; y < C1; y++) {
      const src = ((lo[0] + z) * H + lo[1] + y) * W + lo[2];
      const dst = ((z + 1) * P1 + y + 1) * P2 + 1;
      for (let x = 0; x < C2; x++) pad[dst + x] = mask[src + x] ? 1 : 0;
    }
  }
  const codes = new Uint8Array(G0 * G1 * G2);
  if (!is3d) {
    // 2D: the padded slice is plane 1 of `pad`
    const base = P1 * P2;
    let o = 0;
    for (let q1 = 0; q1 < G1; q1++) {
      let r = base + q1 * P2;
      for (let q2 = 0; q2 < G2; q2++, r++) {
        codes[o++] = (pad[r] << 3) | (pad[r + 1] << 2) | (pad[r + P2] << 1) | pad[r + P2 + 1];
      }
    }
    return codes;
  }
  const sZ = P1 * P2;
  let o = 0;
  for (let q0 = 0; q0 < G0; q0++) {
    for (let q1 = 0; q1 < G1; q1++) {
      let r = q0 * sZ + q1 * P2;
      for (let q2 = 0; q2 < G2; q2++, r++) {
        codes[o++] =
          (pad[r] << 7) |
          (pad[r + 1] << 6) |
          (pad[r + P2] << 5) |
          (pad[r + P2 + 1] << 4) |
          (pad[r + sZ] << 3) |
          (pad[r + sZ + 1] << 2) |
          (pad[r + sZ + P2] << 1) |
          pad[r + sZ + P2 + 1];
      }
    }
  }
  return codes;
}

/**
 * Distances between the surfaces of two binary masks and the size of each surface element,
 * as `compute_surface_distances` of the reference (unsorted: order does not change any metric).
 * `shape` is (H, W) or (D, H, W); `spacingMm` gives the spacing along the same axes.
 */
export function computeSurfaceDistances(
  maskGt: Mask,
  maskPred: Mask,
  shape: readonly number[],
  spacingMm: readonly number[],
): SurfaceDistances {
  checkShape(shape, spacingMm, maskGt.length, 'ground truth');
  checkShape(shape, spacingMm, maskPred.length, 'prediction');
  const box = unionBbox(maskGt, maskPred, shape);
  if (!box) {
    const empty = new Float64Array(0);
    return { distancesGtToPred: empty, distancesPredToGt: empty, surfelAreasGt: empty, surfelAreasPred: empty };
  }
  const dims = box.lo.map((lo, a) => box.hi[a] - lo + 2);
  const is3d = shape.length === 3;
  const full = is3d ? 255 : 15;
  const areaTable = is3d ? surfaceAreaTable3d(spacingMm) : contourLengthTable2d(spacingMm);
  const codesGt = neighbourCodes(maskGt, shape, box, dims);
  const codesPred = neighbourCodes(maskPred, shape, box, dims);
  const n = codesGt.length;
  const borderGt = new Uint8Array(n);
  const borderPred = new Uint8Array(n);
  let nGt = 0;
  let nPred = 0;
  for (let i = 0; i < n; i++) {
    if (codesGt[i] !== 0 && codesGt[i] !== full) {
      borderGt[i] = 1;
      nGt++;
    }
    if (codesPred[i] !== 0 && codesPred[i] !== full) {
      borderPred[i] = 1;
      nPred++;
    }
  }
  const distToGt = nGt > 0 ? squaredDistanceTransform(borderGt, dims, spacingMm) : null;
  const distToPred = nPred > 0 ? squaredDistanceTransform(borderPred, dims, spacingMm) : null;
  const distancesGtToPred = new Float64Array(nGt);
  const surfelAreasGt = new Float64Array(nGt);
  const distancesPredToGt = new Float64Array(nPred);
  const surfelAreasPred = new Float64Array(nPred);
  let a = 0;
  let b = 0;
  for (let i = 0; i < n; i++) {
    if (borderGt[i]) {
      distancesGtToPred[a] = distToPred ? Math.sqrt(distToPred[i]) : Infinity;
      surfelAreasGt[a++] = areaTable[codesGt[i]];
    }
    if (borderPred[i]) {
      distancesPredToGt[b] = distToGt ? Math.sqrt(distToGt[i]) : Infinity;
      surfelAreasPred[b++] = areaTable[codesPred[i]];
    }
  }
  return { distancesGtToPred, distancesPredToGt, surfelAreasGt, surfelAreasPred };
}

/**
 * Surface Dice at a tolerance, exactly the reference's `compute_surface_dice_at_tolerance`:
 * NaN when both surfaces are empty.
 */
export function surfaceDiceAtTolerance(sd: SurfaceDistances, toleranceMm: number): number {
  let overlap = 0;
  let total = 0;
  for (let i = 0; i < sd.surfelAreasGt.length; i++) {
    total += sd.surfelAreasGt[i];
    if (sd.distancesGtToPred[i] <= toleranceMm) overlap += sd.surfelAreasGt[i];
  }
  for (let i = 0; i < sd.surfelAreasPred.length; i++) {
    total += sd.surfelAreasPred[i];
    if (sd.distancesPredToGt[i] <= toleranceMm) overlap += sd.surfelAreasPred[i];
  }
  return overlap / total;
}

/** Dice similarity coefficient 2|A∩B| / (|A| + |B|); both empty -> 1, one empty -> 0. */
export function diceCoefficient(maskGt: Mask, maskPred: Mask): number {
  if (maskGt.length !== maskPred.length) {
    throw new Error(`dice: masks differ in size (${maskGt.length} vs ${maskPred.length})`);
  }
  let inter = 0;
  let sum = 0;
  for (let i = 0; i < maskGt.length; i++) {
    const g = maskGt[i] ? 1 : 0;
    const p = maskPred[i] ? 1 : 0;
    sum += g + p;
    inter += g & p;
  }
  return sum === 0 ? 1 : (2 * inter) / sum;
}

/** Intersection over union |A∩B| / |A∪B|; both empty -> 1. */
export function intersectionOverUnion(maskGt: Mask, maskPred: Mask): number {
  if (maskGt.length !== maskPred.length) {
    throw new Error(`IoU: masks differ in size (${maskGt.length} vs ${maskPred.length})`);
  }
  let inter = 0;
  let union = 0;
  for (let i = 0; i < maskGt.length; i++) {
    const g = maskGt[i] ? 1 : 0;
    const p = maskPred[i] ? 1 : 0;
    inter += g & p;
    union += g | p;
  }
  return union === 0 ? 1 : inter / union;
}

/** Normalized surface Dice at `toleranceMm`; both empty -> 1, one empty -> 0. */
export function normalizedSurfaceDice(
  maskGt: Mask,
  maskPred: Mask,
  shape: readonly number[],
  spacingMm: readonly number[],
  toleranceMm: number,
): number {
  const sd = computeSurfaceDistances(maskGt, maskPred, shape, spacingMm);
  if (sd.surfelAreasGt.length === 0 && sd.surfelAreasPred.length === 0) return 1;
  return surfaceDiceAtTolerance(sd, toleranceMm);
}

export interface BinaryScores {
  dsc: number;
  /** NSD at each requested tolerance, in the order given */
  nsd: number[];
  gtVoxels: number;
  predVoxels: number;
}

/** DSC and NSD at one or more tolerances, sharing one surface-distance computation. */
export function scoreBinary(
  maskGt: Mask,
  maskPred: Mask,
  shape: readonly number[],
  spacingMm: readonly number[],
  tolerancesMm: readonly number[],
): BinaryScores {
  if (maskGt.length !== maskPred.length) {
    throw new Error(`masks differ in size (${maskGt.length} vs ${maskPred.length})`);
  }
  let gtVoxels = 0;
  let predVoxels = 0;
  let inter = 0;
  for (let i = 0; i < maskGt.length; i++) {
    const g = maskGt[i] ? 1 : 0;
    const p = maskPred[i] ? 1 : 0;
    gtVoxels += g;
    predVoxels += p;
    inter += g & p;
  }
  const sum = gtVoxels + predVoxels;
  const dsc = sum === 0 ? 1 : (2 * inter) / sum;
  const sd = computeSurfaceDistances(maskGt, maskPred, shape, spacingMm);
  const bothEmpty = sd.surfelAreasGt.length === 0 && sd.surfelAreasPred.length === 0;
  const nsd = tolerancesMm.map((t) => (bothEmpty ? 1 : surfaceDiceAtTolerance(sd, t)));
  return { dsc, nsd, gtVoxels, predVoxels };
}
