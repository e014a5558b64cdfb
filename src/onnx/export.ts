/**
 * Export a SAM2 model to a folder of ONNX graphs (see graphs.ts for the list), each with the
 * model config, image size and normalization in `metadata_props`, plus `medtune-onnx.json`
 * (the same facts for the inference code, readable without parsing a model).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { StateDict } from '../io/safetensors.js';
import { IMAGENET_MEAN, IMAGENET_STD, type Sam2Config } from '../model/config.js';
import { Adapters, type AdapterTable } from '../model/adapters.js';
import { SAM2Base } from '../model/sam2.js';
import { OPSET } from './graph-builder.js';
import { allGraphs, GRAPH_FILES, MANIFEST_FILE, type GraphKey, type Manifest } from './graphs.js';

export { MANIFEST_FILE };
import { traceGraph, type OnnxValue } from './onnx-ops.js';

export interface ExportedGraph {
  key: GraphKey;
  file: string;
  bytes: number;
  nodes: number;
  ms: number;
}

export function manifestFor(config: Sam2Config): Manifest {
  return {
    format: 'medtune-onnx',
    version: 1,
    opset: OPSET,
    image_size: config.image_size,
    normalization: { mean: [...IMAGENET_MEAN], std: [...IMAGENET_STD] },
    graphs: { ...GRAPH_FILES },
    config,
  };
}

function metadataFor(manifest: Manifest, key: GraphKey): Record<string, string> {
  return {
    'medtune.graph': key,
    'medtune.image_size': String(manifest.image_size),
    'medtune.normalization': JSON.stringify(manifest.normalization),
    'medtune.model_config': JSON.stringify(manifest.config),
  };
}

/** Trace one graph of `config` with `params` into a serialized ONNX model. */
export function buildGraph(config: Sam2Config, params: StateDict, key: GraphKey, adapters?: AdapterTable): { bytes: Uint8Array; nodes: number } {
  const model = new SAM2Base(config);
  const def = allGraphs(model)[key];
  const ops = traceGraph(def, params, adapters && new Adapters<OnnxValue>(adapters.settings, new Set(adapters.layers)));
  return { bytes: ops.graph.toModel(metadataFor(manifestFor(config), key), `medtune ${def.name}`), nodes: ops.graph.nodeCount };
}

/**
 * Write every graph (or `only` those) and the manifest to `outDir`. `params` must be the
 * model's parameters by official name (see weights.ts loadStateDict); `adapters` (bottleneck
 * ones: LoRA merges into the weights first) become nodes of the layers they adapt.
 */
export function exportGraphs(
  config: Sam2Config,
  params: StateDict,
  outDir: string,
  opts: { only?: GraphKey[]; log?: (line: string) => void; adapters?: AdapterTable } = {},
): ExportedGraph[] {
  mkdirSync(outDir, { recursive: true });
  const manifest = manifestFor(config);
  const keys = opts.only ?? (Object.keys(GRAPH_FILES) as GraphKey[]);
  const out: ExportedGraph[] = [];
  for (const key of keys) {
    const t0 = performance.now();
    const { bytes, nodes } = buildGraph(config, params, key, opts.adapters);
    const file = join(outDir, GRAPH_FILES[key]);
    writeFileSync(file, bytes);
    const entry = { key, file, bytes: bytes.byteLength, nodes, ms: performance.now() - t0 };
    out.push(entry);
    opts.log?.(`  ${GRAPH_FILES[key].padEnd(32)} ${String(nodes).padStart(5)} nodes  ${(bytes.byteLength / 1e6).toFixed(1).padStart(7)} MB`);
  }
  writeFileSync(join(outDir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 1)}\n`);
  return out;
}
