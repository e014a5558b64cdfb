/** Shared building blocks, after the official `sam2/modeling/sam2_utils.py`: the MLP and mask arithmetic. */
import { key, linear, linearSpecs, type Ops, type ParamSpec } from './ops.js';

/** LayerNorm2d epsilon (the official channels-first LayerNorm; here a last-axis layerNorm on NHWC). */
export const LAYER_NORM_2D_EPS = 1e-6;

export type Activation = 'relu' | 'gelu';

/** MLP with `numLayers` Linear layers at `${prefix}.layers.${i}`, activation between them. */
export class MLP {
  constructor(
    readonly prefix: string,
    readonly inputDim: number,
    readonly hiddenDim: number,
    readonly outputDim: number,
    readonly numLayers: number,
    readonly activation: Activation = 'relu',
    readonly sigmoidOutput = false,
  ) {}

  private dims(): Array<[number, number]> {
    const hidden = Array<number>(this.numLayers - 1).fill(this.hiddenDim);
    const ins = [this.inputDim, ...hidden];
    const outs = [...hidden, this.outputDim];
    return ins.map((d, i) => [d, outs[i]]);
  }

  paramSpecs(): ParamSpec[] {
    return this.dims().flatMap(([i, o], n) => linearSpecs(key(this.prefix, `layers.${n}`), i, o));
  }

  forward<T>(ops: Ops<T>, x: T): T {
    for (let n = 0; n < this.numLayers; n++) {
      x = linear(ops, x, key(this.prefix, `layers.${n}`));
      if (n < this.numLayers - 1) x = this.activation === 'relu' ? ops.relu(x) : ops.gelu(x);
    }
    return this.sigmoidOutput ? ops.sigmoid(x) : x;
  }
}

/** (B, 1, H, W) or (B, H, W, 1) -> (B, H, W, 1) (the same memory layout). */
export function toMaskNhwc<T>(ops: Ops<T>, x: T): T {
  const s = ops.shape(x);
  if (s.length !== 4 || (s[1] !== 1 && s[3] !== 1)) throw new Error(`expected a (B, 1, H, W) mask, got (${s.join(', ')})`);
  return s[3] === 1 ? x : ops.reshape(x, [-1, s[2], s[3], 1]);
}

/** 1 - x */
export function oneMinus<T>(ops: Ops<T>, x: T): T {
  return ops.add(ops.neg(x), 1);
}

/** 1 where x > 0, else 0 (float; exact). */
export function greaterThanZero<T>(ops: Ops<T>, x: T): T {
  return oneMinus(ops, ops.equal(ops.relu(x), 0));
}

/** x with a leading batch of 1 or `batch`, tiled to `batch`. */
export function tileToBatch<T>(ops: Ops<T>, x: T, batch: number): T {
  const shape = ops.shape(x);
  if (shape[0] === batch) return x;
  if (shape[0] !== 1) throw new Error(`tileToBatch: a leading dimension of ${shape[0]} cannot be tiled to a batch of ${batch}`);
  return ops.tile(x, [batch, ...shape.slice(1).map(() => 1)]);
}
