/**
 * A TensorBoard event-file writer: TFRecord framing around `Event` protobufs, as TensorBoard's
 * own `EventFileWriter` writes them, so TensorBoard (and anything reading TFRecords) reads ours.
 *
 * Record framing: u64 LE payload length, masked CRC32C of those 8 bytes, the payload, masked
 * CRC32C of the payload. Only the few protobuf messages a scalar/image logger needs are defined.
 */
import { crc32c } from '@aws-crypto/crc32c';
import { closeSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import protobuf from 'protobufjs';

const root = protobuf.Root.fromJSON({
  nested: {
    Image: {
      fields: {
        height: { type: 'int32', id: 1 },
        width: { type: 'int32', id: 2 },
        colorspace: { type: 'int32', id: 3 },
        encoded_image_string: { type: 'bytes', id: 4 },
      },
    },
    Value: {
      fields: {
        tag: { type: 'string', id: 1 },
        simple_value: { type: 'float', id: 2 },
        image: { type: 'Image', id: 4 },
      },
    },
    Summary: { fields: { value: { rule: 'repeated', type: 'Value', id: 1 } } },
    Event: {
      fields: {
        wall_time: { type: 'double', id: 1 },
        step: { type: 'int64', id: 2 },
        file_version: { type: 'string', id: 3 },
        summary: { type: 'Summary', id: 5 },
      },
    },
  },
});
const EventType = root.lookupType('Event');

export interface TbImage {
  height: number;
  width: number;
  /** 1 gray, 3 RGB, 4 RGBA */
  colorspace: number;
  /** PNG bytes */
  png: Uint8Array;
}

export type TbValue = { tag: string; value: number } | { tag: string; image: TbImage };

export interface TbEvent {
  wallTime: number;
  step?: number;
  fileVersion?: string;
  values?: TbValue[];
}

/** CRC32C masked as TFRecord does: rotate right by 15 and add a constant. */
export function maskedCrc32c(data: Uint8Array): number {
  const crc = crc32c(data) >>> 0;
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: length, masked CRC of the length, payload, masked CRC of the payload. */
export function tfRecord(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + 4 + payload.byteLength + 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(payload.byteLength), true);
  view.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(payload, 12);
  view.setUint32(12 + payload.byteLength, maskedCrc32c(payload), true);
  return out;
}

/** The `Event` protobuf for one event; fields left out stay out of the bytes, like TensorBoard's writer. */
export function encodeEvent(event: TbEvent): Uint8Array {
  const msg: Record<string, unknown> = { wall_time: event.wallTime };
  if (event.step !== undefined) msg.step = event.step;
  if (event.fileVersion !== undefined) msg.file_version = event.fileVersion;
  if (event.values) {
    msg.summary = {
      value: event.values.map((v) =>
        'image' in v
          ? {
              tag: v.tag,
              image: {
                height: v.image.height,
                width: v.image.width,
                colorspace: v.image.colorspace,
                encoded_image_string: v.image.png,
              },
            }
          : { tag: v.tag, simple_value: v.value },
      ),
    };
  }
  return EventType.encode(EventType.fromObject(msg)).finish();
}

/**
 * The events of an event file's bytes, in order; a record cut short at the end (a run still
 * writing) is left for the next read.
 */
export function readEvents(bytes: Uint8Array): TbEvent[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const events: TbEvent[] = [];
  for (let o = 0; o + 12 <= bytes.byteLength; ) {
    const length = Number(view.getBigUint64(o, true));
    if (o + 12 + length + 4 > bytes.byteLength) break;
    const msg = EventType.toObject(EventType.decode(bytes.subarray(o + 12, o + 12 + length)), { longs: Number, bytes: Uint8Array }) as {
      wall_time?: number;
      step?: number;
      file_version?: string;
      summary?: { value?: Array<{ tag: string; simple_value?: number; image?: { height: number; width: number; colorspace: number; encoded_image_string: Uint8Array } }> };
    };
    const values: TbValue[] | undefined = msg.summary?.value?.map((v) =>
      v.image
        ? { tag: v.tag, image: { height: v.image.height, width: v.image.width, colorspace: v.image.colorspace, png: v.image.encoded_image_string } }
        : { tag: v.tag, value: v.simple_value ?? 0 },
    );
    events.push({ wallTime: msg.wall_time ?? 0, step: msg.step, fileVersion: msg.file_version, values });
    o += 12 + length + 4;
  }
  return events;
}

/**
 * Appends events to `<dir>/events.out.tfevents.<seconds>.<host>`; the first record is the
 * file-version event. Each write goes straight to the file so a killed run keeps its logs.
 */
export class TensorBoardWriter {
  readonly path: string;
  private fd: number | undefined;

  constructor(dir: string, wallTime = Date.now() / 1000, host = hostname()) {
    mkdirSync(dir, { recursive: true });
    this.path = join(dir, `events.out.tfevents.${Math.floor(wallTime)}.${host}`);
    this.fd = openSync(this.path, 'a');
    this.write({ wallTime, fileVersion: 'brain.Event:2' });
  }

  write(event: TbEvent): void {
    if (this.fd === undefined) throw new Error(`${this.path}: writer is closed`);
    writeSync(this.fd, tfRecord(encodeEvent(event)));
  }

  scalars(step: number, values: Record<string, number>, wallTime = Date.now() / 1000): void {
    this.write({ wallTime, step, values: Object.entries(values).map(([tag, value]) => ({ tag, value })) });
  }

  image(step: number, tag: string, image: TbImage, wallTime = Date.now() / 1000): void {
    this.write({ wallTime, step, values: [{ tag, image }] });
  }

  flush(): void {
    if (this.fd !== undefined) fsyncSync(this.fd);
  }

  close(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }
}
