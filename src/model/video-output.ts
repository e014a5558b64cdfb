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
 * The seed's volume result: the union of `logits > 0` over both directions, (D * height * width)
 * bytes (1 = object). The seed then keeps the largest 3D connected component (`largestComponent`).
 */
export function unionMasks(results: SliceResult[], numFrames: number, height: number, width: number): Uint8Array {
  const n = height * width;
  const seg = new Uint8Array(numFrames * n);
  for (const r of results) {
    for (let i = 0; i < n; i++) if (r.logits[i] > 0) seg[r.frameIdx * n + i] = 1;
  }
  return seg;
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
