/**
 * `medtune setup tensorflow`: the wheel checks on hand-made inputs, and each failure that must stop
 * the setup before it touches node_modules (no pip, no compiler, no wheel, the GPU wheel missing),
 * run in a scratch project with pip cut off from any index.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  andCudaRequirements,
  checkGlibc,
  defaultProjectDir,
  pipSavedFiles,
  readBuildInfo,
  setupTensorflow,
  SetupError,
  wheelMinGlibc,
} from '../src/backends/tensorflow-setup.js';

describe('wheel checks', () => {
  it('reads the oldest glibc a wheel runs on from its platform tags', () => {
    expect(wheelMinGlibc('tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl')).toBe('2.27');
    expect(wheelMinGlibc('tensorflow-2.15.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl')).toBe('2.17');
    expect(wheelMinGlibc('x-1.0-cp311-cp311-manylinux2010_x86_64.whl')).toBe('2.12');
    expect(wheelMinGlibc('x-1.0-cp311-cp311-macosx_12_0_arm64.whl')).toBeUndefined();
  });

  it('refuses a wheel built for a newer glibc, or for glibc on musl, saying what to do', () => {
    expect(() => checkGlibc('tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl', '2.36')).not.toThrow();
    expect(() => checkGlibc('tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl', '2.27')).not.toThrow();
    expect(() => checkGlibc('tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl', '2.24')).toThrow(
      /needs glibc >= 2\.27, this system has glibc 2\.24.*--tf-version/,
    );
    expect(() => checkGlibc('tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl', undefined)).toThrow(/no glibc \(musl/);
  });

  it("lists the CUDA 12 runtime wheels of the 'and-cuda' extra", () => {
    const metadata = [
      'Name: tensorflow',
      'Requires-Dist: numpy>=1.26.0',
      'Requires-Dist: nvidia-cublas-cu12<13.0,>=12.5.3.2; extra == "and-cuda"',
      'Requires-Dist: nvidia-cudnn-cu12 (<10.0,>=9.3.0.75) ; extra == "and-cuda"',
      'Requires-Dist: tensorflow-io-gcs-filesystem>=0.23.1; (sys_platform != "win32") and extra == "gcs-filesystem"',
    ].join('\n');
    expect(andCudaRequirements(metadata)).toEqual(['nvidia-cublas-cu12<13.0,>=12.5.3.2', 'nvidia-cudnn-cu12<10.0,>=9.3.0.75']);
  });

  it("finds the wheel pip saved or had already", () => {
    expect(pipSavedFiles('Processing /opt/x.whl\nSaved ./tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl\nSuccessfully downloaded tensorflow-cpu\n')).toEqual([
      './tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl',
    ]);
    expect(pipSavedFiles('File was already downloaded /c/wheels/tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl\n')).toEqual([
      '/c/wheels/tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl',
    ]);
  });
});

function which(cmd: string): string | undefined {
  try {
    return execFileSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

// the interpreter itself (python3 may be a pyenv shim that needs more than a PATH of its own)
const python = (() => {
  try {
    return execFileSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
})();
const pythonHasPip = python !== undefined && (() => {
  try {
    execFileSync(python, ['-m', 'pip', '--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe('setup tensorflow stops with a clear message, node_modules untouched', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'medtune-setup-'));
  const project = join(scratch, 'project');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), '{"name":"scratch","private":true}\n');
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  /** A PATH holding only the named tools (symlinked from this machine's). */
  function pathWith(...tools: string[]): string {
    const bin = mkdtempSync(join(scratch, 'bin-'));
    symlinkSync(process.execPath, join(bin, 'node'));
    for (const t of tools) {
      const found = t === 'python3' ? python : which(t);
      if (found) symlinkSync(found, join(bin, t));
    }
    return bin;
  }
  // pip with no config and no index: nothing is offered, whatever this machine's pip reaches
  const offline = { PIP_CONFIG_FILE: '/dev/null', PIP_NO_INDEX: '1', PIP_FIND_LINKS: '' };
  const setup = (env: NodeJS.ProcessEnv, gpu = false) =>
    setupTensorflow({ gpu, projectDir: project, cacheDir: join(scratch, 'cache'), env: { ...env, ...offline, HOME: process.env.HOME }, log: () => {} });
  const untouched = () => expect(readdirSync(project)).toEqual(['package.json']);

  it.skipIf(!which('npm'))('without pip', async () => {
    await expect(setup({ PATH: pathWith('npm') })).rejects.toThrow(/pip not found.*apt-get install python3-pip/);
    untouched();
  });

  it.skipIf(!which('npm') || !pythonHasPip)('without a compiler', async () => {
    await expect(setup({ PATH: pathWith('npm', 'python3') })).rejects.toThrow(/g\+\+, make not found on PATH.*build-essential/);
    untouched();
  });

  it.skipIf(!which('npm') || !pythonHasPip || !which('g++') || !which('make'))('when pip offers no wheel', async () => {
    const err = await setup({ PATH: process.env.PATH }).catch((e) => e);
    expect(err).toBeInstanceOf(SetupError);
    expect(err.message).toMatch(/pip offers no `tensorflow-cpu` wheel for Python \d+\.\d+ on linux/);
    untouched();
  });

  it.skipIf(!which('npm') || !pythonHasPip || !which('g++') || !which('make'))('--gpu when no CUDA TensorFlow wheel is offered', async () => {
    const err = await setup({ PATH: process.env.PATH }, true).catch((e) => e);
    expect(err).toBeInstanceOf(SetupError);
    expect(err.message).toMatch(/pip offers no `tensorflow` wheel.*CUDA-enabled `tensorflow` wheel and the nvidia-\*-cu12 wheels/);
    untouched();
  });
});

const built = readBuildInfo(join(defaultProjectDir(), 'node_modules', '@tensorflow', 'tfjs-node'));
describe('setup tensorflow when the backend is built', () => {
  it.skipIf(!built && !process.env.CI)(built ? 'a second run says so and changes nothing' : 'skipped: @tensorflow/tfjs-node is not built here (npx medtune setup tensorflow)', async () => {
    expect(built, 'CI is set but @tensorflow/tfjs-node was not built by `medtune setup tensorflow`').toBeDefined();
    const lines: string[] = [];
    const r = await setupTensorflow({ log: (l) => lines.push(l) });
    expect(r).toMatchObject({ status: 'already-built', package: '@tensorflow/tfjs-node', tfVersion: built!.tfVersion });
    expect(lines.at(-1)).toMatch(/already built against TensorFlow \d+\.\d+/);
    expect(existsSync(join(defaultProjectDir(), 'node_modules', '@tensorflow', 'tfjs-node', 'deps', 'include'))).toBe(false);
  });
});
