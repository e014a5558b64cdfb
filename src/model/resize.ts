/**
 * The interpolations of the official model as forward computations over `Ops`: bilinear
 * (align_corners=False) mask upsampling and PyTorch's antialiased bilinear downsampling, whose
 * filter (`antialiasBilinearMatrix`) also resizes mask prompts on the host.
 */
import type { Ops } from './ops.js';

/** Bilinear resize (align_corners=False, no antialias) of (B, M, h, w) masks to (B, M, H, W). */
export function upsampleMasks<T>(ops: Ops<T>, masks: T, size: [number, number]): T {
  const [, m, h, w] = ops.shape(masks);
  if (h === size[0] && w === size[1]) return masks;
  if (m === 1) return ops.reshape(ops.resizeBilinear(ops.reshape(masks, [-1, h, w, 1]), size), [-1, 1, size[0], size[1]]);
  return ops.transpose(ops.resizeBilinear(ops.transpose(masks, [0, 2, 3, 1]), size), [0, 3, 1, 2]);
}

/**
 * PyTorch's `interpolate(mode='bilinear', align_corners=False, antialias=True)` along one axis
 * as an (outSize, inSize) row-major matrix: a triangle filter widened by the scale factor when
 * downsampling, each row normalised (ATen `_compute_indices_min_size_weights_aa`).
 */
export function antialiasBilinearMatrix(inSize: number, outSize: number): Float32Array {
  const scale = inSize / outSize;
  const support = scale >= 1 ? scale : 1;
  const invScale = scale >= 1 ? 1 / scale : 1;
  const out = new Float32Array(outSize * inSize);
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
    let total = 0;
    const ws: number[] = [];
    for (let j = xmin; j < xmax; j++) {
      const wgt = Math.max(0, 1 - Math.abs((j - center + 0.5) * invScale));
      ws.push(wgt);
      total += wgt;
    }
    for (let j = xmin; j < xmax; j++) out[i * inSize + j] = total > 0 ? ws[j - xmin] / total : 0;
  }
  return out;
}

/** Antialiased bilinear resize of (B, H, W, C) to (B, oh, ow, C), as two constant matrix products. */
export function resizeBilinearAntialias<T>(ops: Ops<T>, x: T, size: [number, number]): T {
  const [, h, w, c] = ops.shape(x);
  const [oh, ow] = size;
  if (oh === h && ow === w) return x;
  // columns: (B*C*H, W) @ Rx^T
  let y = ops.reshape(ops.transpose(x, [0, 3, 1, 2]), [-1, w]);
  y = ops.matMul(y, ops.constant(antialiasBilinearMatrix(w, ow), [ow, w]), false, true);
  // rows: (B*C*ow, H) @ Ry^T
  y = ops.reshape(ops.transpose(ops.reshape(y, [-1, h, ow]), [0, 2, 1]), [-1, h]);
  y = ops.matMul(y, ops.constant(antialiasBilinearMatrix(h, oh), [oh, h]), false, true);
  // (B, C, ow, oh) -> (B, oh, ow, C)
  return ops.transpose(ops.reshape(y, [-1, c, ow, oh]), [0, 3, 2, 1]);
}

/**
 * `resizeBilinearAntialias` on the host for one (h, w) map — the same two products with the same
 * filter — for mask prompts, which reach the graphs already at model resolution.
 */
export function resizeAntialiasHost(src: ArrayLike<number>, h: number, w: number, oh: number, ow: number): Float32Array {
  const rx = antialiasBilinearMatrix(w, ow);
  const ry = antialiasBilinearMatrix(h, oh);
  const tmp = new Float32Array(h * ow);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < ow; x++) {
      let acc = 0;
      for (let j = 0; j < w; j++) {
        const wt = rx[x * w + j];
        if (wt !== 0) acc += wt * src[y * w + j];
      }
      tmp[y * ow + x] = acc;
    }
  }
  const out = new Float32Array(oh * ow);
  for (let y = 0; y < oh; y++) {
    for (let j = 0; j < h; j++) {
      const wt = ry[y * h + j];
      if (wt === 0) continue;
      for (let x = 0; x < ow; x++) out[y * ow + x] += wt * tmp[j * ow + x];
    }
  }
  return out;
}
