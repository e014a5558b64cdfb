/**
 * `Sam2FrameGraphs` on TensorFlow.js: each piece runs the TypeScript model eagerly through
 * `TfOps` inside `tf.tidy`, so only the returned handles survive.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Sam2Config } from './config.js';
import { roundToBfloat16, type HeadsResult, type HostPrompt, type Sam2FrameGraphs } from './frame-graphs.js';
import type { MemoryContext, MemoryFeatures } from './memory-bank.js';
import { predictorStability } from './mask-decoder.js';
import { upsampleMasks } from './resize.js';
import type { FrameFeatures, SAM2Base } from './sam2.js';
import { TfOps } from './tf-ops.js';


export class TfFrameGraphs implements Sam2FrameGraphs<tf.Tensor> {
  readonly config: Sam2Config;
  private readonly ops: TfOps;

  constructor(
    readonly model: SAM2Base,
    params: ReadonlyMap<string, tf.Tensor>,
    /** store memory features at bfloat16 precision as the official predictor does (default true) */
    private readonly bf16Memory = true,
  ) {
    this.config = model.config;
    this.ops = new TfOps(params);
  }

  async encodeImage(image: Float32Array): Promise<FrameFeatures<tf.Tensor>> {
    const S = this.config.image_size;
    if (image.length !== S * S * 3) throw new Error(`encodeImage: expected ${S}x${S}x3 values, got ${image.length}`);
    return tf.tidy(() => {
      const f = this.model.encodeFrame(this.ops, tf.tensor(image, [1, S, S, 3]));
      return { visionFeats: f.visionFeats, visionPos: f.visionPos, highRes: f.highRes };
    }) as FrameFeatures<tf.Tensor>;
  }

  async conditionOnMemory(frame: FrameFeatures<tf.Tensor>, memory: MemoryContext<tf.Tensor> | null): Promise<tf.Tensor> {
    return tf.tidy(() => this.model.conditionOnMemory(this.ops, frame, memory));
  }

  async samHeads(pixFeat: tf.Tensor, frame: FrameFeatures<tf.Tensor>, prompt: HostPrompt, multimask: boolean): Promise<HeadsResult<tf.Tensor>> {
    const S = this.config.image_size;
    return tf.tidy(() => {
      const p = prompt.points;
      const n = p ? p.labels.length : 0;
      const out = this.model.forwardSamHeads(this.ops, {
        backboneFeatures: pixFeat,
        highRes: frame.highRes,
        points: p ? { coords: tf.tensor(p.coords, [1, n, 2]), labels: tf.tensor(p.labels, [1, n]) } : undefined,
        maskInputs: prompt.mask ? tf.tensor(prompt.mask, [1, S, S, 1]) : undefined,
        multimaskOutput: multimask,
        stability: predictorStability(this.config.sam_mask_decoder_extra_args),
      });
      return { lowResMasks: out.lowResMasks, objPtr: out.objPtr, objectScoreLogits: out.objectScoreLogits };
    }) as HeadsResult<tf.Tensor>;
  }

  async maskAsOutput(frame: FrameFeatures<tf.Tensor>, mask: Float32Array): Promise<HeadsResult<tf.Tensor>> {
    const S = this.config.image_size;
    return tf.tidy(() => {
      const out = this.model.useMaskAsOutput(this.ops, frame.visionFeats, frame.highRes, tf.tensor(mask, [1, S, S, 1]));
      return { lowResMasks: out.lowResMasks, objPtr: out.objPtr, objectScoreLogits: out.objectScoreLogits };
    }) as HeadsResult<tf.Tensor>;
  }

  async encodeMemory(frame: FrameFeatures<tf.Tensor>, lowResMasks: tf.Tensor, objectScoreLogits: tf.Tensor, isMaskFromPts: boolean): Promise<MemoryFeatures<tf.Tensor>> {
    const S = this.config.image_size;
    const mem = tf.tidy(() => {
      const highRes = upsampleMasks(this.ops, lowResMasks, [S, S]);
      const m = this.model.encodeNewMemory(this.ops, frame, highRes, objectScoreLogits, isMaskFromPts);
      return { features: m.features, posEnc: m.posEnc };
    }) as MemoryFeatures<tf.Tensor>;
    if (!this.bf16Memory) return mem;
    const rounded = tf.tensor(roundToBfloat16((await mem.features.data()) as Float32Array), mem.features.shape);
    mem.features.dispose();
    return { features: rounded, posEnc: mem.posEnc };
  }

  async readMasks(lowResMasks: tf.Tensor, size: [number, number]): Promise<Float32Array> {
    const up = tf.tidy(() => upsampleMasks(this.ops, lowResMasks, size));
    const data = (await up.data()) as Float32Array;
    up.dispose();
    return data;
  }

  release(handles: tf.Tensor[]): void {
    for (const h of handles) h.dispose();
  }
}
