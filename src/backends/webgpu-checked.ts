/**
 * tfjs's WebGPU backend with its GPU errors raised. WebGPU reports validation and out-of-memory
 * errors asynchronously, and tfjs-backend-webgpu only lets Dawn print them, so a run would go on
 * with wrong numbers. Here every program runs inside error scopes, labelled with the kernel and
 * input shapes that dispatched it; every readback first waits for those scopes and throws a
 * WebgpuError naming the op if any reported an error (as do uncaptured errors and a lost device).
 */
import * as tf from '@tensorflow/tfjs-core';
import { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';

export class WebgpuError extends Error {
  override name = 'WebgpuError';
}

interface ErrorLike {
  message: string;
  constructor: { name: string };
}

/** The kernel (tfjs op) being run and its input shapes, for error messages. */
let currentKernel = '';

function describeInputs(inputs: tf.NamedTensorInfoMap | tf.TensorInfo[]): string {
  const list = Array.isArray(inputs) ? inputs : Object.values(inputs);
  return list.map((t) => (t ? `[${t.shape.join(',')}]` : '-')).join(' ');
}

/**
 * Wraps every kernel registered for 'webgpu' so errors name the kernel and input shapes.
 * Call after all webgpu kernels (tfjs's and ours) are registered; idempotent.
 */
export function labelWebgpuKernels(): void {
  for (const config of tf.getKernelsForBackend('webgpu')) {
    if ((config.kernelFunc as { labelled?: boolean }).labelled) continue;
    const run = config.kernelFunc;
    const labelled: tf.KernelFunc & { labelled?: boolean } = (args) => {
      const outer = currentKernel;
      currentKernel = `${config.kernelName}(${describeInputs(args.inputs)})`;
      try {
        return run(args);
      } finally {
        currentKernel = outer;
      }
    };
    labelled.labelled = true;
    tf.unregisterKernel(config.kernelName, 'webgpu');
    tf.registerKernel({ ...config, kernelFunc: labelled });
  }
}

interface ProgramLike {
  constructor: { name: string };
  outputShape: number[];
}

type GpuDevice = ConstructorParameters<typeof WebGPUBackend>[0];

export class CheckedWebGPUBackend extends WebGPUBackend {
  private pendingScopes: Promise<void>[] = [];
  /** errors of our programs' scopes: they name the op */
  private errors: string[] = [];
  /** errors outside them (queue submission, a lost device), often consequences of the above */
  private uncaptured: string[] = [];
  private released = false;
  /** programs dispatched and bytes of their outputs, since creation (for the bench) */
  readonly counters = { dispatches: 0, bytesWritten: 0 };

  /**
   * @param softwareAdapter a fallback adapter (lavapipe): the product kernels of webgpu-matmul.ts
   *   replace tfjs's there
   */
  constructor(
    device: GpuDevice,
    adapterInfo: ConstructorParameters<typeof WebGPUBackend>[1] | undefined,
    readonly softwareAdapter = false,
  ) {
    super(device, adapterInfo);
    device.addEventListener('uncapturederror', (event) => {
      const error = (event as unknown as { error: ErrorLike }).error;
      this.uncaptured.push(`${error.constructor.name} outside any tfjs program: ${error.message}`);
    });
    void device.lost.then((info) => {
      if (!this.released) this.uncaptured.push(`the WebGPU device was lost (${info.reason}): ${info.message}`);
    });
  }

  override runWebGPUProgram(
    program: Parameters<WebGPUBackend['runWebGPUProgram']>[0],
    inputs: tf.TensorInfo[],
    outputDtype: tf.DataType,
    programDefinedUniform?: Parameters<WebGPUBackend['runWebGPUProgram']>[3],
    output?: tf.TensorInfo,
  ): tf.TensorInfo {
    this.device.pushErrorScope('out-of-memory');
    this.device.pushErrorScope('validation');
    try {
      const out = super.runWebGPUProgram(program, inputs, outputDtype, programDefinedUniform, output);
      this.counters.dispatches++;
      this.counters.bytesWritten += 4 * out.shape.reduce((n, d) => n * d, 1);
      return out;
    } finally {
      const p = program as unknown as ProgramLike;
      const where = `${currentKernel || 'a kernel'}: ${p.constructor.name} (inputs ${describeInputs(inputs) || 'none'}, output [${p.outputShape}])`;
      const scopes = [this.device.popErrorScope(), this.device.popErrorScope()];
      this.pendingScopes.push(
        Promise.all(scopes).then((errors) => {
          for (const e of errors) if (e) this.errors.push(`${e.constructor.name} in ${where}: ${e.message}`);
        }),
      );
    }
  }

  override dispose(): void {
    this.released = true;
    super.dispose();
  }

  /** Throws a WebgpuError if any GPU work submitted so far reported an error. */
  async checkErrors(): Promise<void> {
    await this.settleScopes();
    if (this.errors.length === 0 && this.uncaptured.length === 0) return;
    // a failed program may still sit in the open command encoder: submit and wait for it, so its
    // consequences are reported now with their cause, not at the next readback
    this.endComputePassEncoder();
    (this as unknown as { commandEncoder: unknown }).commandEncoder ??= this.device.createCommandEncoder();
    this.submitQueue();
    await this.queue.onSubmittedWorkDone();
    await this.settleScopes();
    const errors = [...this.errors, ...this.uncaptured];
    this.errors = [];
    this.uncaptured = [];
    // a concurrent readback (Promise.all of several) took and threw them while this one waited
    if (errors.length === 0) return;
    const more = errors.length > 1 ? `\n(and ${errors.length - 1} more GPU error(s) after it)` : '';
    throw new WebgpuError(`WebGPU error: ${errors[0]}${more}`);
  }

  private async settleScopes(): Promise<void> {
    const scopes = this.pendingScopes;
    this.pendingScopes = [];
    await Promise.all(scopes);
  }

  override async read(dataId: object): ReturnType<WebGPUBackend['read']> {
    await this.checkErrors();
    const values = await super.read(dataId);
    // the copy to the staging buffer is GPU work too
    await this.checkErrors();
    return values;
  }
}
