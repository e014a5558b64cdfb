/** Shared building blocks, after the official `sam2/modeling/sam2_utils.py`. */
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
