/**
 * `medtune doctor [--json]`: which backends this machine can run, and why not where not: native
 * TensorFlow (its version, the GPUs it sees, its threads), WebGPU (the adapter Dawn offers), wasm
 * and cpu; and what `backend: auto` would pick. TensorFlow is loaded in child processes only, so
 * both tfjs-node builds can be examined.
 */
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { CommandModule } from 'yargs';
import type { AutoCandidate } from '../backend.js';
import type { TensorflowBuildInfo } from '../backends/tensorflow-setup.js';
import type { TensorflowGpu } from '../backends/tensorflow.js';
import type { WebgpuAdapterReport } from '../backends/webgpu.js';

export interface TensorflowPackageReport {
  package: string;
  installed: boolean;
  loads: boolean;
  tfVersion?: string;
  /** how it was built: by `medtune setup tensorflow` (with its wheel), or the package's prebuilt addon */
  build?: TensorflowBuildInfo | 'prebuilt';
  gpus: TensorflowGpu[];
  error?: string;
}

export interface DoctorReport {
  cores: number;
  tensorflow: {
    available: boolean;
    why: string;
    /** NVIDIA GPUs the kernel driver lists */
    driverGpus: string[];
    packages: TensorflowPackageReport[];
    threads: { intraOp: number; interOp: number };
  };
  webgpu: { available: boolean; why: string; adapter?: WebgpuAdapterReport };
  wasm: { available: boolean; why: string };
  cpu: { available: true; why: string };
  auto: { backend: string; candidate: AutoCandidate; passedOver: string[]; hint?: string };
}

/** Where the project resolves `pkg`, undefined when it is not installed. */
function packageDir(pkg: string, projectDir: string): string | undefined {
  try {
    return join(createRequire(join(projectDir, 'package.json')).resolve(`${pkg}/package.json`), '..');
  } catch {
    return undefined;
  }
}

export async function doctor(projectDir: string = process.cwd()): Promise<DoctorReport> {
  const { cudaGpus, probeTensorflowPackage, tensorflowThreads, SETUP_HINT } = await import('../backends/tensorflow.js');
  const { readBuildInfo } = await import('../backends/tensorflow-setup.js');
  const { probeWebgpu } = await import('../backends/webgpu.js');
  const { autoOrder } = await import('../backend.js');

  const driverGpus = cudaGpus();
  const packages = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'].map((pkg): TensorflowPackageReport => {
    const dir = packageDir(pkg, projectDir);
    if (!dir) return { package: pkg, installed: false, loads: false, gpus: [] };
    const probe = probeTensorflowPackage(pkg, projectDir);
    return { package: pkg, installed: true, loads: probe.ok, tfVersion: probe.tfVersion, gpus: probe.gpus, error: probe.error, build: readBuildInfo(dir) ?? 'prebuilt' };
  });
  const [gpuPkg, cpuPkg] = packages;
  const usable = packages.filter((p) => p.loads);
  const tfWhy = usable.length
    ? usable.map((p) => `${p.package}: TensorFlow ${p.tfVersion}${p.gpus.length ? ` on ${p.gpus.map((g) => g.name).join(', ')}` : ''}`).join('; ')
    : packages.some((p) => p.installed)
      ? packages.filter((p) => p.installed).map((p) => `${p.package} does not load (${p.error}): \`${SETUP_HINT} --force\` rebuilds it`).join('; ')
      : `not installed: \`${SETUP_HINT}\` builds it (\`${SETUP_HINT} --gpu\` for an NVIDIA GPU)`;

  const webgpuProbe = await probeWebgpu();
  const webgpu = webgpuProbe.ok
    ? {
        available: true,
        why: webgpuProbe.adapter.isFallbackAdapter ? 'only a software fallback adapter: correct but slow, `auto` skips it' : 'hardware adapter',
        adapter: webgpuProbe.adapter,
      }
    : { available: false, why: webgpuProbe.reason };

  let wasm: DoctorReport['wasm'];
  try {
    const { useWasm } = await import('../backends/wasm.js');
    wasm = { available: true, why: (await useWasm()).device };
  } catch (err) {
    wasm = { available: false, why: (err as Error).message };
  }

  const yes = <T,>(value: T) => async () => ({ ok: true as const, value });
  const no = (reason: string) => async () => ({ ok: false as const, reason });
  const gpuOk = gpuPkg.loads && gpuPkg.gpus.length > 0;
  const auto = await autoOrder<string>(
    {
      'tensorflow-gpu': gpuOk
        ? yes('tensorflow')
        : no(!driverGpus.length ? 'no NVIDIA GPU' : !gpuPkg.installed ? `${gpuPkg.package} is not installed` : gpuPkg.loads ? 'TensorFlow sees no GPU' : `${gpuPkg.package} does not load`),
      webgpu: webgpu.available && !webgpu.adapter?.isFallbackAdapter ? yes('webgpu') : no(webgpu.available ? 'only a software fallback adapter' : webgpu.why.split(':')[0]),
      'tensorflow-cpu': cpuPkg.loads ? yes('tensorflow') : no(cpuPkg.installed ? `${cpuPkg.package} does not load` : `${cpuPkg.package} is not installed`),
      wasm: wasm.available ? yes('wasm') : no(wasm.why),
    },
    driverGpus.length > 0,
  );

  return {
    cores: availableParallelism(),
    tensorflow: { available: usable.length > 0, why: tfWhy, driverGpus, packages, threads: tensorflowThreads() },
    webgpu,
    wasm,
    cpu: { available: true, why: 'plain JavaScript, 1 thread' },
    auto: { backend: auto.value, candidate: auto.picked, passedOver: auto.passedOver, hint: auto.hint },
  };
}

const LIMITS_SHOWN = ['maxBufferSize', 'maxStorageBufferBindingSize', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup'];

export function formatDoctor(r: DoctorReport): string {
  const out: string[] = [];
  const block = (name: string, available: boolean, lines: string[]) => {
    out.push(`${name.padEnd(11)}${available ? 'available' : 'not available'}`);
    for (const l of lines) out.push(`           ${l}`);
  };
  const tf = r.tensorflow;
  block('tensorflow', tf.available, [
    tf.why,
    ...tf.packages
      .filter((p) => p.installed)
      .map((p) => `${p.package}: ${p.build === 'prebuilt' ? 'prebuilt addon' : p.build ? `built by medtune setup from ${p.build.wheel}` : ''}`),
    ...tf.packages.flatMap((p) => p.gpus.map((g) => `GPU ${g.index}: ${g.name}, compute capability ${g.computeCapability}, ${g.memoryMB} MB`)),
    `NVIDIA driver: ${tf.driverGpus.length ? tf.driverGpus.join(', ') : 'none'}`,
    `threads: ${tf.threads.intraOp} intra-op, ${tf.threads.interOp} inter-op (backend_threads; default all ${r.cores} cores)`,
  ]);
  const a = r.webgpu.adapter;
  block(
    'webgpu',
    r.webgpu.available,
    a
      ? [
          `${[a.vendor, a.device].filter(Boolean).join(' ')} (architecture ${a.architecture || '?'}${a.isFallbackAdapter ? ', isFallbackAdapter' : ''}): ${r.webgpu.why}`,
          a.description,
          `limits: ${LIMITS_SHOWN.map((k) => `${k} ${a.limits[k]}`).join(', ')}`,
        ].filter(Boolean)
      : [r.webgpu.why],
  );
  block('wasm', r.wasm.available, [r.wasm.why]);
  block('cpu', true, [r.cpu.why]);
  out.push(`auto       ${r.auto.backend} (${r.auto.candidate})`);
  for (const p of r.auto.passedOver) out.push(`           passed over ${p}`);
  if (r.auto.hint) out.push(`           ${r.auto.hint}`);
  return out.join('\n');
}

export const doctorCommand: CommandModule<object, { json?: boolean }> = {
  command: 'doctor',
  describe: 'Which backends run here (native TensorFlow, WebGPU, wasm, cpu), why not, and what `backend: auto` picks',
  builder: (y) => y.option('json', { type: 'boolean', default: false, describe: 'the report as JSON' }),
  handler: async (args) => {
    const report = await doctor();
    console.log(args.json ? JSON.stringify(report, null, 2) : formatDoctor(report));
  },
};
