/** Worker thread of the training loader: renders planned batches with its own BatchProducer. */
import { parentPort, workerData } from 'node:worker_threads';
import { BatchProducer, type ProducerConfig, type WorkerMessage } from './loader.js';

const port = parentPort!;
const producer = new BatchProducer(workerData as ProducerConfig, (message) =>
  port.postMessage({ type: 'warn', message } satisfies WorkerMessage),
);

port.on('message', async (m: { type: 'batch'; id: number; items: Parameters<BatchProducer['produce']>[0] }) => {
  try {
    const { batch, skipped } = await producer.produce(m.items, true);
    const arrays = [batch.images, batch.boxes, batch.masks, batch.labelValues, batch.fullMasks, batch.points?.coords, batch.points?.labels];
    port.postMessage(
      { type: 'batch', id: m.id, batch, skipped } satisfies WorkerMessage,
      arrays.filter((a) => a !== undefined).map((a) => a.buffer as ArrayBuffer),
    );
  } catch (err) {
    port.postMessage({ type: 'error', id: m.id, message: (err as Error).message } satisfies WorkerMessage);
  }
});
