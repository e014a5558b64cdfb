/** What 3D propagation gives back: per-slice logits, and the seed's volume result built from them. */

export interface SliceResult {
  frameIdx: number;
  direction: 'forward' | 'reverse';
  /** (height * width) mask logits; > 0 is the object */
  logits: Float32Array;
  /** milliseconds spent on this slice (encode + track + memory + read) */
  ms: number;
}

/**
 * Per voxel the highest logit any direction gave it, (D * height * width); -Infinity on slices
 * never visited. `> 0` of it is the seed's union over both directions.
 */
export function maxLogits(results: SliceResult[], numFrames: number, height: number, width: number): Float32Array {
  const n = height * width;
  const out = new Float32Array(numFrames * n).fill(-Infinity);
  for (const r of results) {
    const o = r.frameIdx * n;
    for (let i = 0; i < n; i++) if (r.logits[i] > out[o + i]) out[o + i] = r.logits[i];
  }
  return out;
}

/**
 * The seed's volume result: the union of `logits > 0` over both directions, (D * height * width)
 * bytes (1 = object). The seed then keeps the largest 3D connected component (`largestComponent`).
 */
export function unionMasks(results: SliceResult[], numFrames: number, height: number, width: number): Uint8Array {
  return positive(maxLogits(results, numFrames, height, width));
}

/** 1 where the logit is > 0. */
export function positive(logits: Float32Array): Uint8Array {
  const out = new Uint8Array(logits.length);
  for (let i = 0; i < out.length; i++) out[i] = logits[i] > 0 ? 1 : 0;
  return out;
}

/** One label's propagated result: the voxels it claims and its per-voxel score (logit). */
export interface LabelVolume {
  label: number;
  mask: Uint8Array;
  score: Float32Array;
}

/**
 * Several labels propagated one by one, merged into one label map: a voxel claimed by several
 * labels goes to the one with the highest score there (the first given on a tie), so no label
 * overwrites another wholesale.
 */
export function mergeByScore(volumes: LabelVolume[], size: number): Uint8Array | Uint16Array {
  const maxLabel = Math.max(0, ...volumes.map((v) => v.label));
  const out = maxLabel > 255 ? new Uint16Array(size) : new Uint8Array(size);
  const best = new Float32Array(size).fill(-Infinity);
  for (const v of volumes) {
    if (v.mask.length !== size || v.score.length !== size) throw new Error(`mergeByScore: label ${v.label} has ${v.mask.length} voxels, expected ${size}`);
    for (let i = 0; i < size; i++) {
      if (v.mask[i] && (out[i] === 0 || v.score[i] > best[i])) {
        out[i] = v.label;
        best[i] = v.score[i];
      }
    }
  }
  return out;
}

/** Keep the largest 26-connected component of a (D, H, W) binary volume (skimage `label` default for 3D). */
export function largestComponent(seg: Uint8Array, d: number, h: number, w: number): Uint8Array {
  const labels = new Int32Array(seg.length);
  let best = 0;
  let bestSize = 0;
  let next = 0;
  const stack: number[] = [];
  for (let start = 0; start < seg.length; start++) {
    if (!seg[start] || labels[start]) continue;
    next++;
    let size = 0;
    labels[start] = next;
    stack.push(start);
    while (stack.length) {
      const v = stack.pop()!;
      size++;
      const z = Math.floor(v / (h * w));
      const y = Math.floor((v % (h * w)) / w);
      const x = v % w;
      for (let dz = -1; dz <= 1; dz++) {
        const zz = z + dz;
        if (zz < 0 || zz >= d) continue;
        for (let dy = -1; dy <= 1; dy++) {
          const yy = y + dy;
          if (yy < 0 || yy >= h) continue;
          for (let dx = -1; dx <= 1; dx++) {
            const xx = x + dx;
            if (xx < 0 || xx >= w) continue;
            const u = (zz * h + yy) * w + xx;
            if (seg[u] && !labels[u]) {
              labels[u] = next;
              stack.push(u);
            }
          }
        }
      }
    }
    if (size > bestSize) {
      bestSize = size;
      best = next;
    }
  }
  const out = new Uint8Array(seg.length);
  if (best) for (let i = 0; i < seg.length; i++) out[i] = labels[i] === best ? 1 : 0;
  return out;
}
