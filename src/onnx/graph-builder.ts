/**
 * A small ONNX graph builder over the compiled ONNX protobuf schema of `onnx-proto`
 * (protobufjs): nodes, initializers, typed graph inputs/outputs, dead-node pruning and
 * serialization to a ModelProto.
 */
import onnxProto from 'onnx-proto';

export const { onnx } = onnxProto;

/** The default-domain opset the exporter targets (LayerNormalization needs 17). */
export const OPSET = 17;
/** IR version 8 is what opset 17 exporters (PyTorch, onnx 1.12+) write. */
export const IR_VERSION = 8;

export type ElemType = 'float32' | 'int64' | 'bool';
const ELEM: Record<ElemType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  int64: onnx.TensorProto.DataType.INT64,
  bool: onnx.TensorProto.DataType.BOOL,
};

/** A dimension in a declared input/output: a number, or a symbolic name (dim_param). */
export type DeclaredDim = number | string;

export type AttrValue = number | string | number[] | { floats: number[] } | { float: number };

export interface NodeSpec {
  op: string;
  inputs: string[];
  outputs: string[];
  attrs?: Record<string, AttrValue>;
  domain?: string;
}

function attribute(name: string, v: AttrValue): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'number') {
    return Number.isInteger(v) ? { name, type: T.INT, i: v } : { name, type: T.FLOAT, f: v };
  }
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v };
  if ('floats' in v) return { name, type: T.FLOATS, floats: v.floats };
  return { name, type: T.FLOAT, f: v.float };
}

function valueInfo(name: string, elem: ElemType, dims: DeclaredDim[]): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: ELEM[elem],
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

export class GraphBuilder {
  private readonly nodes: NodeSpec[] = [];
  private readonly initializers = new Map<string, onnxProto.onnx.ITensorProto>();
  private readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  private counter = 0;
  private readonly cse = new Map<string, string[]>();
  private readonly constants = new Map<string, string[]>();

  constructor(readonly name: string) {}

  /** A fresh value name with a readable hint. */
  fresh(hint = 'v'): string {
    return `${hint.replace(/[^A-Za-z0-9_.]/g, '_')}_${this.counter++}`;
  }

  /**
   * Append a node; an identical node (same op, inputs and attributes) already in the graph is
   * reused instead (common-subexpression elimination, so model code may compute a shared
   * piece twice, e.g. the decoder for single- and multi-mask outputs).
   */
  node(op: string, inputs: string[], attrs?: Record<string, AttrValue>, nOutputs = 1, domain?: string): string[] {
    const key = `${domain ?? ''}|${op}|${inputs.join(',')}|${JSON.stringify(attrs ?? {})}|${nOutputs}`;
    const seen = this.cse.get(key);
    if (seen) return seen;
    const outputs = Array.from({ length: nOutputs }, () => this.fresh(op));
    this.nodes.push({ op, inputs, outputs, attrs, domain });
    this.cse.set(key, outputs);
    return outputs;
  }

  /** A float32 constant initializer, shared with any earlier constant of equal shape and bytes. */
  constant(dims: number[], data: Float32Array): string {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    let h = 2166136261;
    for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 16777619);
    const key = `${dims.join('x')}:${h >>> 0}`;
    for (const name of this.constants.get(key) ?? []) {
      const t = this.initializers.get(name)!;
      const other = t.rawData as Uint8Array;
      if (other.length === bytes.length && other.every((b, i) => b === bytes[i])) return name;
    }
    const name = this.initializer(this.fresh('const'), 'float32', dims, data);
    this.constants.set(key, [...(this.constants.get(key) ?? []), name]);
    return name;
  }

  hasInitializer(name: string): boolean {
    return this.initializers.has(name);
  }

  initializer(name: string, elem: ElemType, dims: number[], data: Float32Array | BigInt64Array | Uint8Array): string {
    if (this.initializers.has(name)) throw new Error(`initializer '${name}' is defined twice`);
    const raw = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    this.initializers.set(name, { name, dataType: ELEM[elem], dims, rawData: raw });
    return name;
  }

  input(name: string, elem: ElemType, dims: DeclaredDim[]): string {
    this.inputs.push(valueInfo(name, elem, dims));
    return name;
  }

  /** Declare `value` as graph output `name` (an Identity renames it when needed). */
  output(name: string, value: string, elem: ElemType, dims: DeclaredDim[]): void {
    if (value !== name) this.nodes.push({ op: 'Identity', inputs: [value], outputs: [name] });
    this.outputs.push(valueInfo(name, elem, dims));
  }

  /** Remove nodes and initializers no output depends on. */
  private prune(): { nodes: NodeSpec[]; inits: onnxProto.onnx.ITensorProto[] } {
    const needed = new Set(this.outputs.map((o) => o.name!));
    const kept: NodeSpec[] = [];
    for (let i = this.nodes.length - 1; i >= 0; i--) {
      const n = this.nodes[i];
      if (!n.outputs.some((o) => needed.has(o))) continue;
      kept.push(n);
      for (const x of n.inputs) if (x) needed.add(x);
    }
    kept.reverse();
    const inits = [...this.initializers.values()].filter((t) => needed.has(t.name!));
    return { nodes: kept, inits };
  }

  get nodeCount(): number {
    return this.prune().nodes.length;
  }

  toModel(metadata: Record<string, string> = {}, docString = ''): Uint8Array {
    const { nodes, inits } = this.prune();
    const graph: onnxProto.onnx.IGraphProto = {
      name: this.name,
      node: nodes.map((n, i) => ({
        name: `${n.op}_${i}`,
        opType: n.op,
        input: n.inputs,
        output: n.outputs,
        domain: n.domain ?? '',
        attribute: Object.entries(n.attrs ?? {}).map(([k, v]) => attribute(k, v)),
      })),
      initializer: inits,
      input: this.inputs,
      output: this.outputs,
    };
    const model: onnxProto.onnx.IModelProto = {
      irVersion: IR_VERSION,
      opsetImport: [
        { domain: '', version: OPSET },
        ...[...new Set(nodes.map((n) => n.domain).filter((d): d is string => !!d))].map((domain) => ({ domain, version: 1 })),
      ],
      producerName: 'medtune',
      producerVersion: '0.1.0',
      docString,
      graph,
      metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
    };
    return onnx.ModelProto.encode(onnx.ModelProto.create(model)).finish();
  }
}

/** Read the metadata_props of a serialized model without loading it into a runtime. */
export function readModelMetadata(bytes: Uint8Array): Record<string, string> {
  const model = onnx.ModelProto.decode(bytes);
  const out: Record<string, string> = {};
  for (const p of model.metadataProps) if (p.key) out[p.key] = p.value ?? "";
  return out;
}
