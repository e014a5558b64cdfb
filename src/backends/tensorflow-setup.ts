/**
 * `medtune setup tensorflow [--gpu]`: builds @tensorflow/tfjs-node (or -node-gpu) 4.22's addon
 * against the TensorFlow C library of a current TensorFlow wheel, for machines where the package's
 * own install (a libtensorflow 2.9.1 download; CUDA 11.2 for the GPU build) does not work.
 *
 * The wheel comes from `pip download` (cached) and is only unpacked, never installed into a Python.
 * The npm package goes into this project's node_modules with its install script off, so it
 * registers with the project's own tfjs-core. The addon is built in a staging copy beside the
 * package and moved into place only once a child process has loaded it; any failure leaves the
 * node_modules as it was.
 */
import { spawnSync } from 'node:child_process';
import {
  accessSync,
  closeSync,
  constants,
  cpSync,
  createReadStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { homedir, tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Unzip, UnzipInflate } from 'fflate';
import { probeTensorflowPackage } from './tensorflow.js';

/** The tfjs-node release whose binding sources are built (the project's tfjs-core version). */
export const TFJS_NODE_VERSION = '4.22.0';
/** Written into the package folder after a build: what it was built from. */
export const BUILD_MARKER = 'medtune-build.json';

export interface TensorflowBuildInfo {
  package: string;
  tfVersion: string;
  wheel: string;
  /** folders of the CUDA libraries (GPU build), relative to the package */
  cudaLibDirs: string[];
  builtAt: string;
}

export interface TensorflowSetupOptions {
  gpu?: boolean;
  /** TensorFlow version of the wheel; default: the newest pip offers */
  tfVersion?: string;
  /** rebuild even when a working build (or the prebuilt install) is there */
  force?: boolean;
  /** the project whose node_modules gets the package; default: this medtune checkout */
  projectDir?: string;
  /** where downloaded wheels are kept; default $MEDTUNE_CACHE or ~/.cache/medtune */
  cacheDir?: string;
  /** environment of the tools run (PATH); default process.env */
  env?: NodeJS.ProcessEnv;
  log?: (line: string) => void;
}

export interface TensorflowSetupResult {
  status: 'built' | 'already-built' | 'prebuilt-works';
  package: string;
  tfVersion: string;
}

/** A setup failure with what to do about it; the CLI prints only the message. */
export class SetupError extends Error {}

export function defaultProjectDir(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
}

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.MEDTUNE_CACHE || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'medtune');
}

export function packageName(gpu: boolean): string {
  return gpu ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
}

/** The wheel's PyPI project: the CUDA build is `tensorflow`, the CPU-only one `tensorflow-cpu`. */
export function wheelProject(gpu: boolean): string {
  return gpu ? 'tensorflow' : 'tensorflow-cpu';
}

// ---------------------------------------------------------------- pure helpers (tested directly)

/**
 * The oldest glibc a wheel runs on, from its platform tags (manylinux_2_27_x86_64, manylinux2014_x86_64,
 * ...; compressed tag sets joined by '.'); undefined when it names no manylinux tag.
 */
export function wheelMinGlibc(wheelFile: string): string | undefined {
  const platformTag = wheelFile.replace(/\.whl$/, '').split('-').at(-1) ?? '';
  const legacy: Record<string, string> = { manylinux1: '2.5', manylinux2010: '2.12', manylinux2014: '2.17' };
  const versions: string[] = [];
  for (const tag of platformTag.split('.')) {
    const m = /^manylinux_(\d+)_(\d+)_/.exec(tag);
    if (m) versions.push(`${m[1]}.${m[2]}`);
    const l = /^(manylinux\d+)_/.exec(tag);
    if (l && legacy[l[1]]) versions.push(legacy[l[1]]);
  }
  return versions.sort(compareVersions)[0];
}

export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The glibc this Node runs on, undefined on musl (Alpine) or non-Linux systems. */
export function systemGlibc(): string | undefined {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return header?.glibcVersionRuntime;
}

/** Throws a SetupError when the wheel needs a newer glibc than `glibc` (the system's). */
export function checkGlibc(wheelFile: string, glibc: string | undefined): void {
  const needed = wheelMinGlibc(wheelFile);
  if (!needed) return;
  if (!glibc) {
    throw new SetupError(`${wheelFile} is built for glibc >= ${needed}, but this system has no glibc (musl/Alpine?): use a glibc-based Linux (Debian, Ubuntu, RHEL) or an older --tf-version built for it`);
  }
  if (compareVersions(glibc, needed) < 0) {
    throw new SetupError(
      `${wheelFile} needs glibc >= ${needed}, this system has glibc ${glibc}: upgrade the OS (or its glibc), or pick an older TensorFlow built for it with --tf-version`,
    );
  }
}

/** The requirements a wheel's METADATA lists under its `and-cuda` extra (the CUDA 12 runtime wheels). */
export function andCudaRequirements(metadata: string): string[] {
  const out: string[] = [];
  for (const line of metadata.split(/\r?\n/)) {
    const m = /^Requires-Dist:\s*([^;]+);\s*(.*)$/.exec(line);
    if (m && /extra\s*==\s*["']and-cuda["']/.test(m[2])) out.push(m[1].replace(/[()\s]/g, ''));
  }
  return out;
}

/** The wheel file pip reports it saved (or found already downloaded). */
export function pipSavedFiles(pipOutput: string): string[] {
  const files: string[] = [];
  for (const line of pipOutput.split(/\r?\n/)) {
    const m = /^(?:Saved|File was already downloaded)\s+(.+\.whl)\s*$/.exec(line.trim());
    if (m) files.push(m[1]);
  }
  return files;
}

// ---------------------------------------------------------------- tools

function findOnPath(name: string, env: NodeJS.ProcessEnv): string | undefined {
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      if (statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

interface Tools {
  npm: string;
  /** pip's command line: [pip] or [python3, -m, pip] */
  pip: string[];
}

function run(cmd: string, args: string[], opts: { cwd?: string; env: NodeJS.ProcessEnv; inherit?: boolean }) {
  const r = spawnSync(cmd, args, {
    cwd: opts.cwd,
    env: opts.env,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    stdio: opts.inherit ? ['ignore', 'inherit', 'inherit'] : ['ignore', 'pipe', 'pipe'],
  });
  return { ok: r.status === 0 && !r.error, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, error: r.error };
}

/** npm, pip and the compiler toolchain node-gyp needs, or a SetupError naming what is missing. */
export function checkTools(env: NodeJS.ProcessEnv): Tools {
  const npm = findOnPath('npm', env);
  if (!npm) throw new SetupError('npm not found on PATH: it comes with Node.js (https://nodejs.org), which medtune needs anyway');
  let pip: string[] | undefined;
  const pipExe = findOnPath('pip3', env) ?? findOnPath('pip', env);
  if (pipExe && run(pipExe, ['--version'], { env }).ok) pip = [pipExe];
  const python = findOnPath('python3', env);
  if (!pip && python && run(python, ['-m', 'pip', '--version'], { env }).ok) pip = [python, '-m', 'pip'];
  if (!pip) {
    throw new SetupError(
      'pip not found (neither pip3, pip nor `python3 -m pip`): it fetches the TensorFlow wheel the addon is built against. ' +
        'Install it (Debian/Ubuntu: `apt-get install python3-pip`; or https://pip.pypa.io/en/stable/installation/) and run this again',
    );
  }
  const missing = [env.CXX ? undefined : findOnPath('g++', env) ? undefined : 'g++', findOnPath('make', env) ? undefined : 'make', python ? undefined : 'python3'].filter(
    (x): x is string => Boolean(x),
  );
  if (missing.length) {
    throw new SetupError(
      `cannot build the TensorFlow addon: ${missing.join(', ')} not found on PATH (node-gyp needs a C++ compiler, make and python3). ` +
        'Debian/Ubuntu: `apt-get install build-essential python3`; Fedora/RHEL: `dnf install gcc-c++ make python3`',
    );
  }
  return { npm, pip };
}

// ---------------------------------------------------------------- wheels

function pipDownload(tools: Tools, dir: string, requirements: string[], env: NodeJS.ProcessEnv) {
  const glibc = systemGlibc();
  const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
  // name the manylinux tags ourselves, newest compatible first, then newer ones: pip then takes a
  // wheel built for a newer glibc too, and checkGlibc says so plainly instead of "no matching distribution"
  const minor = Number(glibc?.split('.')[1] ?? 17);
  const platforms: string[] = [];
  for (let m = minor; m >= 17; m--) platforms.push(`manylinux_2_${m}_${arch}`);
  platforms.push(`manylinux2014_${arch}`);
  for (let m = minor + 1; m <= minor + 20; m++) platforms.push(`manylinux_2_${m}_${arch}`);
  const args = ['download', '--no-deps', '--only-binary=:all:', '--disable-pip-version-check', '--retries', '1', '-d', dir];
  for (const p of platforms) args.push('--platform', p);
  return run(tools.pip[0], [...tools.pip.slice(1), ...args, ...requirements], { env });
}

function pythonVersion(tools: Tools, env: NodeJS.ProcessEnv): string {
  const r = run(tools.pip[0], [...tools.pip.slice(1), '--version'], { env });
  return /python (\d+\.\d+)/.exec(r.out)?.[1] ?? 'unknown';
}

/** Downloads (or finds in the cache) the TensorFlow wheel; returns its path. */
function getTensorflowWheel(tools: Tools, cacheDir: string, gpu: boolean, tfVersion: string | undefined, env: NodeJS.ProcessEnv): string {
  const dir = join(cacheDir, 'wheels');
  mkdirSync(dir, { recursive: true });
  const project = wheelProject(gpu);
  const requirement = tfVersion ? `${project}==${tfVersion}` : project;
  const r = pipDownload(tools, dir, [requirement], env);
  const saved = pipSavedFiles(r.out).map((f) => resolve(dir, f));
  if (!r.ok || saved.length !== 1) {
    const said = r.out.split('\n').filter((l) => /ERROR|error:/.test(l)).join(' ').trim() || r.out.trim().split('\n').slice(-3).join(' ');
    const where = `for Python ${pythonVersion(tools, env)} on linux ${process.arch}`;
    if (gpu) {
      throw new SetupError(
        `pip offers no \`${requirement}\` wheel ${where} (pip: ${said}). The GPU build needs the CUDA-enabled \`tensorflow\` wheel ` +
          'and the nvidia-*-cu12 wheels it depends on, all on PyPI: run this where pip reaches pypi.org (check `pip config list`). ' +
          'Without a GPU wheel, `npx medtune setup tensorflow` builds the CPU backend.',
      );
    }
    throw new SetupError(
      `pip offers no \`${requirement}\` wheel ${where} (pip: ${said}). ` +
        (tfVersion ? 'Pick a version pip lists, or leave out --tf-version for the newest. ' : '') +
        'TensorFlow publishes wheels for the recent CPython versions only: a python3 of one of those, or pip access to pypi.org, is needed',
    );
  }
  return saved[0];
}

/** Unpacks the members of `zipFile` that `wanted` accepts (path → destination, or undefined to skip). */
export async function extractMembers(zipFile: string, wanted: (name: string) => string | undefined): Promise<number> {
  let count = 0;
  let failure: Error | undefined;
  const unzip = new Unzip((file) => {
    const out = wanted(file.name);
    if (!out || file.name.endsWith('/')) return;
    mkdirSync(dirname(out), { recursive: true });
    const fd = openSync(out, 'w');
    file.ondata = (err, chunk, final) => {
      if (err) failure ??= new Error(`${zipFile}: ${file.name}: ${err.message}`);
      else writeSync(fd, chunk);
      if (err || final) closeSync(fd);
    };
    file.start();
    count++;
  });
  unzip.register(UnzipInflate);
  for await (const chunk of createReadStream(zipFile, { highWaterMark: 4 << 20 })) {
    unzip.push(chunk as Uint8Array);
    if (failure) throw failure;
  }
  unzip.push(new Uint8Array(0), true);
  if (failure) throw failure;
  return count;
}

async function readWheelMetadata(wheel: string): Promise<string> {
  const tmp = mkdtempSync(join(tmpdir(), 'medtune-wheel-'));
  try {
    const out = join(tmp, 'METADATA');
    await extractMembers(wheel, (name) => (/^[^/]+\.dist-info\/METADATA$/.test(name) ? out : undefined));
    return existsSync(out) ? readFileSync(out, 'utf8') : '';
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- the build

export function readBuildInfo(pkgDir: string): TensorflowBuildInfo | undefined {
  try {
    return JSON.parse(readFileSync(join(pkgDir, BUILD_MARKER), 'utf8')) as TensorflowBuildInfo;
  } catch {
    return undefined;
  }
}

/** The package's tfjs-core and tfjs must be the project's own, or the backend registers in another engine. */
function checkSingleEngine(pkgDir: string, projectDir: string): void {
  const fromProject = createRequire(join(projectDir, 'package.json'));
  const fromPackage = createRequire(join(pkgDir, 'package.json'));
  for (const dep of ['@tensorflow/tfjs-core', '@tensorflow/tfjs']) {
    const a = fromProject.resolve(dep);
    const b = fromPackage.resolve(dep);
    if (a !== b) {
      throw new SetupError(`${pkgDir} resolves its own ${dep} (${b}) instead of the project's (${a}): it would register in a second tfjs engine. Align the versions (${TFJS_NODE_VERSION}) and run again`);
    }
  }
}

function copyPackageSources(from: string, to: string): void {
  // everything but the build outputs and the libraries of an earlier build
  const skip = (entry: string) => ['deps', 'lib', 'build', BUILD_MARKER].includes(entry) || entry.startsWith('build-tmp-');
  mkdirSync(to, { recursive: true });
  for (const entry of readdirSync(from)) {
    if (!skip(entry)) cpSync(join(from, entry), join(to, entry), { recursive: true, verbatimSymlinks: true });
  }
}

/** Lays out deps/lib (libtensorflow under the names binding.gyp and install.js expect), deps/include and the CUDA libraries. */
async function unpackLibraries(stage: string, wheel: string, cudaWheels: string[]): Promise<number> {
  const wheelName = wheel.split('/').at(-1)!;
  const lib = join(stage, 'deps', 'lib');
  const include = join(stage, 'deps', 'include');
  const members = await extractMembers(wheel, (name) => {
    if (name === 'tensorflow/libtensorflow_cc.so.2' || name === 'tensorflow/libtensorflow_framework.so.2') return join(lib, name.slice('tensorflow/'.length));
    if (name.startsWith('tensorflow/include/')) return join(include, name.slice('tensorflow/include/'.length));
    return undefined;
  });
  for (const so of ['libtensorflow_cc.so.2', 'libtensorflow_framework.so.2']) {
    if (!existsSync(join(lib, so))) throw new SetupError(`${wheelName} holds no tensorflow/${so}: this wheel layout is not supported`);
  }
  // binding.gyp links -ltensorflow -ltensorflow_framework; install.js skips its download when libtensorflow.so.2.9.1 exists
  symlinkSync('libtensorflow_cc.so.2', join(lib, 'libtensorflow.so'));
  symlinkSync('libtensorflow_cc.so.2', join(lib, 'libtensorflow.so.2.9.1'));
  symlinkSync('libtensorflow_framework.so.2', join(lib, 'libtensorflow_framework.so'));
  for (const w of cudaWheels) {
    // the GPU wheel's libraries carry the rpath $ORIGIN/../nvidia/<lib>/lib (pip's site-packages layout): mirror it under deps/
    await extractMembers(w, (name) => (/^nvidia\/[^/]+\/lib\/[^/]+$/.test(name) ? join(stage, 'deps', name) : undefined));
  }
  return members;
}

/** node-gyp through npm (npm supplies node-gyp and Node's headers); the headers and intermediates go afterwards. */
function buildAddon(stage: string, pkg: string, tools: Tools, env: NodeJS.ProcessEnv): void {
  const build = run(tools.npm, ['run', 'build-addon-from-source', '--foreground-scripts'], {
    cwd: stage,
    env: { ...env, npm_config_build_from_source: 'true' },
  });
  const addons = existsSync(join(stage, 'lib')) ? readdirSync(join(stage, 'lib')).filter((d) => existsSync(join(stage, 'lib', d, 'tfjs_binding.node'))) : [];
  if (!build.ok || addons.length === 0) {
    throw new SetupError(`building the ${pkg} addon failed:\n${build.out.trim().split('\n').slice(-25).join('\n')}`);
  }
  rmSync(join(stage, 'deps', 'include'), { recursive: true, force: true });
  for (const d of readdirSync(stage)) if (d === 'build' || d.startsWith('build-tmp-')) rmSync(join(stage, d), { recursive: true, force: true });
}

/** Keeps lib/ and deps/ for the next setup of the same build; a cache that cannot be written only costs time. */
function saveToCache(stage: string, cached: string, log: (line: string) => void): void {
  const tmp = `${cached}.tmp-${process.pid}`;
  try {
    for (const d of ['lib', 'deps']) cpSync(join(stage, d), join(tmp, d), { recursive: true, verbatimSymlinks: true });
    rmSync(cached, { recursive: true, force: true });
    renameSync(tmp, cached);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    log(`  (could not keep the build in ${cached}: ${(err as Error).message})`);
  }
}

/**
 * Builds the native backend (see the file's comment). Returns what was done; throws SetupError
 * with the reason and the remedy when it cannot.
 */
export async function setupTensorflow(opts: TensorflowSetupOptions = {}): Promise<TensorflowSetupResult> {
  const gpu = Boolean(opts.gpu);
  const env = opts.env ?? process.env;
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const projectDir = opts.projectDir ?? defaultProjectDir();
  const cacheDir = opts.cacheDir ?? defaultCacheDir(env);
  const pkg = packageName(gpu);
  const pkgDir = join(projectDir, 'node_modules', pkg);
  const steps = 7;
  let n = 0;
  const step = (what: string) => log(`[${++n}/${steps}] ${what}`);

  if (process.platform !== 'linux') {
    throw new SetupError(`the build from a TensorFlow wheel is for Linux; on ${process.platform}, \`npm install ${pkg}\` installs its prebuilt addon`);
  }
  if (process.arch !== 'x64' && process.arch !== 'arm64') throw new SetupError(`TensorFlow publishes no wheels for ${process.arch}`);

  step(`checking ${pkg}`);
  if (existsSync(pkgDir) && !opts.force) {
    const loaded = probeTensorflowPackage(pkgDir, projectDir, env);
    if (loaded.ok && (!opts.tfVersion || opts.tfVersion === loaded.tfVersion)) {
      const info = readBuildInfo(pkgDir);
      log(
        info
          ? `${pkg} is already built against TensorFlow ${loaded.tfVersion} (from ${info.wheel}); nothing to do (--force rebuilds it)`
          : `${pkg} works as installed (its prebuilt addon, TensorFlow ${loaded.tfVersion}); left alone (--force rebuilds it from a wheel)`,
      );
      return { status: info ? 'already-built' : 'prebuilt-works', package: pkg, tfVersion: loaded.tfVersion! };
    }
    log(loaded.ok ? `  built against TensorFlow ${loaded.tfVersion}; rebuilding against ${opts.tfVersion}` : `  installed but does not load (${loaded.error}); rebuilding`);
  }

  step('checking the tools (npm, pip, g++, make, python3)');
  const tools = checkTools(env);

  step(`getting the ${wheelProject(gpu)}${opts.tfVersion ? ` ${opts.tfVersion}` : ''} wheel with pip (cache: ${join(cacheDir, 'wheels')})`);
  const wheel = getTensorflowWheel(tools, cacheDir, gpu, opts.tfVersion, env);
  const wheelName = wheel.split('/').at(-1)!;
  const tfVersion = wheelName.split('-')[1];
  log(`  ${wheelName}`);
  checkGlibc(wheelName, systemGlibc());

  const stage = join(dirname(pkgDir), `.${pkg.split('/')[1]}-build-${process.pid}`);
  const hadPackage = existsSync(pkgDir);
  let installed = false;
  try {
    const cudaWheels: string[] = [];
    if (gpu) {
      const reqs = andCudaRequirements(await readWheelMetadata(wheel));
      if (!reqs.length) throw new SetupError(`${wheelName} lists no \`and-cuda\` requirements: not a CUDA-enabled TensorFlow wheel`);
      log(`  CUDA runtime wheels: ${reqs.join(' ')}`);
      const r = pipDownload(tools, join(cacheDir, 'wheels'), reqs, env);
      if (!r.ok) {
        throw new SetupError(`pip could not fetch the CUDA 12 runtime wheels ${wheelName} needs (${r.out.trim().split('\n').slice(-2).join(' ')}): they are on PyPI; run this where pip reaches pypi.org`);
      }
      cudaWheels.push(...pipSavedFiles(r.out).map((f) => resolve(cacheDir, 'wheels', f)));
    }

    step(`installing ${pkg}@${TFJS_NODE_VERSION} into ${join(projectDir, 'node_modules')} (install script off)`);
    if (!hadPackage) {
      const other = join(projectDir, 'node_modules', packageName(!gpu));
      const hadOther = existsSync(other);
      const r = run(tools.npm, ['install', '--no-save', '--ignore-scripts', '--no-audit', '--no-fund', `${pkg}@${TFJS_NODE_VERSION}`], { cwd: projectDir, env });
      installed = true;
      // npm also restores the other optional tfjs-node package, without its addon: it would only fail to load
      if (!hadOther) rmSync(other, { recursive: true, force: true });
      if (!r.ok) throw new SetupError(`npm could not install ${pkg}@${TFJS_NODE_VERSION}: ${r.out.trim().split('\n').slice(-3).join(' ')}`);
    }
    checkSingleEngine(pkgDir, projectDir);
    copyPackageSources(pkgDir, stage);

    // a build of the same package, wheel and N-API version made before (CI reruns) is copied, not redone
    const cached = join(cacheDir, 'builds', `${pkg.split('/')[1]}-${TFJS_NODE_VERSION}-napi${process.versions.napi}-${wheelName.replace(/\.whl$/, '')}`);
    const fromCache = existsSync(join(cached, 'lib')) && existsSync(join(cached, 'deps'));
    if (fromCache) {
      step(`reusing the addon built before (${cached})`);
      for (const d of ['lib', 'deps']) cpSync(join(cached, d), join(stage, d), { recursive: true, verbatimSymlinks: true });
      n++;
    } else {
      step(`unpacking libtensorflow and its headers from ${wheelName}`);
      log(`  ${await unpackLibraries(stage, wheel, cudaWheels)} files`);
      step(`building the addon (node-gyp; about a minute)`);
      buildAddon(stage, pkg, tools, env);
    }
    const nvidia = join(stage, 'deps', 'nvidia');
    const cudaLibDirs = existsSync(nvidia) ? readdirSync(nvidia).map((d) => join('deps', 'nvidia', d, 'lib')) : [];

    step('loading the addon in a child process');
    const loaded = probeTensorflowPackage(stage, projectDir, env);
    if (!loaded.ok) {
      if (fromCache) rmSync(cached, { recursive: true, force: true });
      throw new SetupError(`the ${fromCache ? 'cached build of the ' : 'built '}addon does not load${fromCache ? ' (removed from the cache: run again to rebuild)' : ''}: ${loaded.error}`);
    }
    if (!fromCache) saveToCache(stage, cached, log);
    const info: TensorflowBuildInfo = { package: pkg, tfVersion: loaded.tfVersion!, wheel: wheelName, cudaLibDirs, builtAt: new Date().toISOString() };
    writeFileSync(join(stage, BUILD_MARKER), `${JSON.stringify(info, null, 2)}\n`);

    const old = `${stage}-old`;
    renameSync(pkgDir, old);
    renameSync(stage, pkgDir);
    rmSync(old, { recursive: true, force: true });
    log(`${pkg} built against TensorFlow ${loaded.tfVersion} (wheel ${tfVersion}): backend 'tensorflow' is ready`);
    return { status: 'built', package: pkg, tfVersion: loaded.tfVersion! };
  } catch (err) {
    // leave node_modules as it was: no staging folder, no package without its addon
    if (installed) rmSync(pkgDir, { recursive: true, force: true });
    throw err;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}
