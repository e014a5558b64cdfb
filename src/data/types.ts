/**
 * The contract between the data pipeline (src/data) and the training loop (src/train).
 * Arrays are flat row-major Float32Arrays so batches cross worker/prefetch boundaries cheaply.
 */
export interface Batch {
  batchSize: number;
  /** model input resolution S */
  imageSize: number;
  /** low-res mask resolution, S / 4 */
  maskSize: number;
  /** (B, S, S, 3) ImageNet-normalized, channels-last */
  images: Float32Array;
  /** (B, 4) x0, y0, x1, y1 in input pixels (0..S) */
  boxes: Float32Array;
  /** (B, 1, S/4, S/4) binary ground truth at the low-res mask size */
  masks: Float32Array;
  /**
   * The prompt points when the run samples prompts beyond boxes (src/data/prompts.ts): `slots`
   * per sample, coords (B, slots, 2) in input pixels, labels (B, slots): 2/3 box corners,
   * 1 positive clicks, -1 padding. Absent: the box is the prompt.
   */
  points?: { slots: number; coords: Float32Array; labels: Float32Array };
  /** (B, S, S) binary ground truth at input resolution, for correction clicks; only with `points` */
  fullMasks?: Float32Array;
  /** the label value each sample segments */
  labelValues: Int32Array;
  /**
   * Validation at the label's native resolution: each sample's ground truth on the slice's own
   * label grid (width x height, 1 = the label), to score the upsampled prediction against.
   */
  native?: Array<{ width: number; height: number; mask: Uint8Array }>;
  /** where each sample came from: "file.npz#slice=12,label=1" */
  sources: string[];
  /** the image slice each sample was rendered from (what the embedding cache is keyed by) */
  slices: SliceRef[];
}

/** One image slice of the data: the image file (an npz volume or an npy image) and the slice index in it (0 for npy). */
export interface SliceRef {
  path: string;
  slice: number;
}

/** A JSON-serializable position in the sample stream, saved in checkpoints for exact resume. */
export type LoaderState = Record<string, unknown>;
