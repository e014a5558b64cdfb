/**
 * Kernels of the tensorflow backend that skip the TensorFlow op when there is nothing to do.
 * tfjs-core runs Cast and Reshape through their kernels even when the dtype or the shape does not
 * change (every broadcasting gradient ends in `reshape(dy, x.shape)`, every Mul/Div gradient casts
 * to float32), and tfjs-node dispatches each one as an eager op: about one op in six of a training
 * step. Here they share the input's buffer instead, as tfjs-node's own Identity kernel does.
 */
import * as tf from '@tensorflow/tfjs-core';

interface TensorInfo {
  dataId: object;
  shape: number[];
  dtype: tf.DataType;
}
interface RefCountingBackend {
  incRef(dataId: object): void;
}

let registered = false;

function sameBuffer(x: TensorInfo, backend: unknown): TensorInfo {
  (backend as RefCountingBackend).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

function override(kernelName: string, isNoOp: (x: TensorInfo, attrs: Record<string, unknown>) => boolean): void {
  const original = tf.getKernel(kernelName, 'tensorflow');
  if (!original) throw new Error(`the tensorflow backend has no ${kernelName} kernel to refine`);
  tf.unregisterKernel(kernelName, 'tensorflow');
  tf.registerKernel({
    ...original,
    kernelFunc: (args) => {
      const x = (args.inputs as { x: TensorInfo }).x;
      if (isNoOp(x, args.attrs as Record<string, unknown>)) return sameBuffer(x, args.backend);
      return original.kernelFunc(args);
    },
  });
}

/** Call once tfjs-node has registered its kernels (after importing it). */
export function registerTensorflowKernels(): void {
  if (registered) return;
  registered = true;
  override(tf.Cast, (x, attrs) => attrs.dtype === x.dtype);
  override(tf.Reshape, (x, attrs) => {
    const shape = attrs.shape as number[];
    return shape.length === x.shape.length && shape.every((d, i) => d === x.shape[i]);
  });
}
