/** The three views of a (D, H, W[, C]) volume: slice k of a view and where its pixels are in the volume. */
import type { Pixels01 } from '../onnx/predict.js';

export type Axis = 'axial' | 'coronal' | 'sagittal';
export const AXES: Axis[] = ['axial', 'coronal', 'sagittal'];

/** How many slices a view has and their rows and columns: axial (H, W), coronal (D, W), sagittal (D, H). */
export function viewDims(axis: Axis, D: number, H: number, W: number): { count: number; rows: number; cols: number } {
  if (axis === 'axial') return { count: D, rows: H, cols: W };
  if (axis === 'coronal') return { count: H, rows: D, cols: W };
  return { count: W, rows: D, cols: H };
}

/** Voxel index (z, y, x) of pixel (r, c) on slice k of a view. */
export function voxelIndex(axis: Axis, k: number, r: number, c: number, H: number, W: number): number {
  if (axis === 'axial') return (k * H + r) * W + c;
  if (axis === 'coronal') return (r * H + k) * W + c;
  return (r * H + c) * W + k;
}

/** The volume seen along a view, (count, rows, cols[, C]); the axial view is the volume itself. */
export function reslice(volume: Pixels01, axis: Axis): Pixels01 {
  if (axis === 'axial') return volume;
  const { depth: D, height: H, width: W, channels: C } = volume;
  const { count, rows, cols } = viewDims(axis, D, H, W);
  const data = new Float32Array(volume.data.length);
  for (let k = 0; k < count; k++) {
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const from = voxelIndex(axis, k, r, c, H, W) * C;
        const to = ((k * rows + r) * cols + c) * C;
        for (let ch = 0; ch < C; ch++) data[to + ch] = volume.data[from + ch];
      }
    }
  }
  return { data, depth: count, height: rows, width: cols, channels: C };
}
