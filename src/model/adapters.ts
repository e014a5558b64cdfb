/**
 * Parameter-efficient adapters on linear layers, applied by the `linear` helpers of ops.ts so the
 * model code stays as it is:
 * - LoRA: y = x W^T + b + (alpha / rank) · dropout(x) A^T B^T, A (rank, in), B (out, rank), B
 *   zero-initialised, so the model starts exactly where its base weights are. Merges into the
 *   weight for export: W' = W + (alpha / rank) B A.
 * - bottleneck (SAM-Med2D's adapter): y + up(GELU(down(y))), down (rank, out), up (out, rank)
 *   zero-initialised; on `*.attn.proj` it sits after the attention, before the residual add.
 * Parameters are named after the layer (PEFT's `<layer>.lora_A.weight`), beside its own.
 */
import type { HostTensor, StateDict } from '../io/safetensors.js';
import { key, type LinearAdapters, type Ops, type OutputRows, type ParamSpec } from './ops.js';

export type AdapterKind = 'lora' | 'bottleneck';

export interface AdapterSettings {
  kind: AdapterKind;
  /** LoRA rank, or the bottleneck's hidden width */
  rank: number;
  /** LoRA scale numerator: the update is scaled by alpha / rank */
  alpha: number;
  /** dropout on the LoRA branch's input while training */
  dropout: number;
  /** linear-layer prefix patterns; `*` stands for any run of characters */
  targets: string[];
}

/** A model's adapters: their settings and the layers they adapt. */
export interface AdapterTable {
  settings: AdapterSettings;
  layers: string[];
}

/** The modules a 2D training step runs whose linear layers adapters can target. */
export const ADAPTABLE_MODULES = ['image_encoder', 'sam_mask_decoder'];

/** The linear layers of a model, prefix -> [out, in]. */
export function linearLayers(specs: ParamSpec[]): Map<string, [number, number]> {
  return new Map(specs.filter((s) => s.linear).map((s) => [s.name.slice(0, -'.weight'.length), s.shape as [number, number]]));
}

/** A target pattern as a regular expression over whole layer prefixes. */
function targetRegExp(pattern: string): RegExp {
  return new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
}

/** The layers each target pattern selects, in the model's order; `unmatched` lists patterns that select none. */
export function matchTargets(layers: Iterable<string>, targets: string[]): { layers: string[]; unmatched: string[] } {
  const all = [...layers];
  const res = targets.map(targetRegExp);
  const unmatched = targets.filter((_, i) => !all.some((l) => res[i].test(l)));
  return { layers: all.filter((l) => res.some((re) => re.test(l))), unmatched };
}

/** Parameters of a table's adapters on the model of `modelSpecs`. */
export function adapterParamSpecs({ settings, layers }: AdapterTable, modelSpecs: ParamSpec[]): ParamSpec[] {
  const r = settings.rank;
  const shapes = linearLayers(modelSpecs);
  const specs: ParamSpec[] = [];
  for (const prefix of layers) {
    const shape = shapes.get(prefix);
    if (!shape) throw new Error(`adapter on '${prefix}': the model has no such linear layer`);
    const [out, inDim] = shape;
    if (settings.kind === 'lora') {
      // PEFT's init: A kaiming-uniform (a = sqrt 5, bound 1/sqrt(in)), B zeros
      specs.push(
        { name: key(prefix, 'lora_A.weight'), shape: [r, inDim], init: { kind: 'uniform', bound: 1 / Math.sqrt(inDim) } },
        { name: key(prefix, 'lora_B.weight'), shape: [out, r], init: { kind: 'zeros' } },
      );
    } else {
      const bound = 1 / Math.sqrt(out);
      specs.push(
        { name: key(prefix, 'adapter.down.weight'), shape: [r, out], init: { kind: 'uniform', bound } },
        { name: key(prefix, 'adapter.down.bias'), shape: [r], init: { kind: 'uniform', bound } },
        { name: key(prefix, 'adapter.up.weight'), shape: [out, r], init: { kind: 'zeros' } },
        { name: key(prefix, 'adapter.up.bias'), shape: [out], init: { kind: 'zeros' } },
      );
    }
  }
  return specs;
}

const ADAPTER_PARAM = /\.(lora_[AB]|adapter\.(down|up))\.(weight|bias)$/;

/** Whether a state-dict key is an adapter's parameter (not the base model's). */
export function isAdapterParam(name: string): boolean {
  return ADAPTER_PARAM.test(name);
}

/** The adapter table of a model, applied to the outputs of the linear layers it names. */
export class Adapters<T> implements LinearAdapters<T> {
  private readonly scale: number;
  /** the LoRA branch's x A^T for the parts of a fused projection after its first */
  private last?: { prefix: string; x: T; down: T };

  constructor(
    readonly settings: AdapterSettings,
    readonly layers: ReadonlySet<string>,
    /** training-time dropout on the LoRA branch's input, per layer; none at inference and export */
    private readonly dropout?: (x: T, prefix: string) => T,
  ) {
    this.scale = settings.alpha / settings.rank;
  }

  apply(ops: Ops<T>, prefix: string, x: T, y: T, rows?: OutputRows): T {
    if (!this.layers.has(prefix)) return y;
    if (this.settings.kind === 'bottleneck') {
      if (rows) throw new Error(`bottleneck adapter on ${prefix}: a fused projection's parts cannot take one; target its output layer instead`);
      const hidden = ops.gelu(ops.linear(y, ops.param(key(prefix, 'adapter.down.weight')), ops.param(key(prefix, 'adapter.down.bias'))));
      return ops.add(y, ops.linear(hidden, ops.param(key(prefix, 'adapter.up.weight')), ops.param(key(prefix, 'adapter.up.bias'))));
    }
    if (!rows || rows.start === 0 || this.last?.prefix !== prefix || this.last.x !== x) {
      const input = this.dropout ? this.dropout(x, prefix) : x;
      this.last = { prefix, x, down: ops.linear(input, ops.param(key(prefix, 'lora_A.weight'))) };
    }
    let b = ops.param(key(prefix, 'lora_B.weight'));
    if (rows) b = ops.slice(b, [rows.start, 0], [rows.count, this.settings.rank]);
    return ops.add(y, ops.mul(ops.linear(this.last.down, b), this.scale));
  }
}

/**
 * LoRA merged into the base weights, W' = W + (alpha / rank) B A, without the adapter
 * parameters: the state dict of a plain model. Bottleneck adapters do not merge (an error).
 */
export function mergeLora(params: StateDict, settings: AdapterSettings): StateDict {
  if (settings.kind !== 'lora') throw new Error(`${settings.kind} adapters do not merge into the base weights`);
  const scale = settings.alpha / settings.rank;
  const out: StateDict = new Map();
  for (const [name, t] of params) {
    if (isAdapterParam(name)) continue;
    const prefix = name.endsWith('.weight') ? name.slice(0, -'.weight'.length) : undefined;
    const a = prefix ? params.get(key(prefix, 'lora_A.weight')) : undefined;
    const b = prefix ? params.get(key(prefix, 'lora_B.weight')) : undefined;
    out.set(name, a && b ? mergedWeight(t, a, b, scale) : t);
  }
  return out;
}

function mergedWeight(w: HostTensor, a: HostTensor, b: HostTensor, scale: number): HostTensor {
  const [out, inDim] = w.shape;
  const r = a.shape[0];
  const data = Float32Array.from(w.data);
  for (let o = 0; o < out; o++) {
    for (let k = 0; k < r; k++) {
      const s = scale * b.data[o * r + k];
      if (s === 0) continue;
      const row = o * inDim;
      const aRow = k * inDim;
      for (let i = 0; i < inDim; i++) data[row + i] += s * a.data[aRow + i];
    }
  }
  return { data, shape: [...w.shape] };
}
