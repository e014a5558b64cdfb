/**
 * Where a run reports: `<run-dir>/metrics.jsonl` (one JSON object a line:
 * `{"step","loss",<terms>,"lr"}` for training (terms: dice and bce, or those of the SAM2 loss),
 * `{"step","val_dice","val_dice_per_label":{<label name>: dice}}` for validation),
 * TensorBoard event files in `<run-dir>/tensorboard/` (the same numbers plus grad norm, img/s
 * and a validation overlay image), and a console progress bar (plain lines when not a TTY).
 */
import cliProgress from 'cli-progress';
import { encode as encodePng } from 'fast-png';
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { IMAGENET_MEAN, IMAGENET_STD } from '../data/transforms.js';
import { TensorBoardWriter, type TbImage } from './tensorboard.js';

export interface TrainMetrics {
  loss: number;
  /** the loss's named terms, e.g. dice and bce */
  terms: Record<string, number>;
  lr: number;
  gradNorm: number;
  imgPerSec: number;
}

export interface MetricsLogOptions {
  maxSteps: number;
  /** the step the run starts from (resume) */
  startStep: number;
  /** draw a progress bar (default: when stdout is a TTY) */
  progress?: boolean;
  /** write nothing to the console */
  quiet?: boolean;
}

/** Images a second with two significant digits below 1 (a 1024 step on a CPU: 0.018), one decimal above. */
export function formatRate(imgPerSec: number): string {
  return imgPerSec > 0 && imgPerSec < 1 ? imgPerSec.toPrecision(2) : imgPerSec.toFixed(1);
}

function round(x: number, digits = 6): number {
  return Number.isFinite(x) ? Number(x.toPrecision(digits)) : x;
}

export class MetricsLog {
  readonly jsonlPath: string;
  readonly tb: TensorBoardWriter;
  private readonly multibar?: cliProgress.MultiBar;
  private readonly bar?: cliProgress.SingleBar;
  private readonly plainEvery: number;
  private readonly quiet: boolean;

  constructor(runDir: string, private readonly opts: MetricsLogOptions) {
    this.jsonlPath = join(runDir, 'metrics.jsonl');
    // A resumed run repeats the steps after its checkpoint: drop what was logged for them.
    if (existsSync(this.jsonlPath)) {
      const kept = readFileSync(this.jsonlPath, 'utf8')
        .split('\n')
        .filter((line) => {
          if (!line.trim()) return false;
          try {
            return (JSON.parse(line) as { step: number }).step <= opts.startStep;
          } catch {
            return false;
          }
        });
      writeFileSync(this.jsonlPath, kept.map((l) => `${l}\n`).join(''));
    }
    this.tb = new TensorBoardWriter(join(runDir, 'tensorboard'));
    this.quiet = opts.quiet ?? false;
    const progress = !this.quiet && (opts.progress ?? process.stdout.isTTY === true);
    this.plainEvery = Math.max(1, Math.floor(opts.maxSteps / 20));
    if (progress) {
      this.multibar = new cliProgress.MultiBar(
        {
          format: 'step {value}/{total} |{bar}| loss {loss} | {ips} img/s | ETA {eta_formatted}',
          hideCursor: true,
          clearOnComplete: false,
          etaBuffer: 20,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar = this.multibar.create(opts.maxSteps, opts.startStep, { loss: '-', ips: '-' });
    }
  }

  /** A line for the console that does not tear the progress bar. */
  message(text: string): void {
    if (this.quiet) return;
    if (this.multibar) this.multibar.log(`${text}\n`);
    else console.log(text);
  }

  train(step: number, m: TrainMetrics, logNow: boolean): void {
    if (logNow) {
      appendFileSync(
        this.jsonlPath,
        `${JSON.stringify({ step, loss: round(m.loss), ...Object.fromEntries(Object.entries(m.terms).map(([k, v]) => [k, round(v)])), lr: round(m.lr) })}\n`,
      );
      this.tb.scalars(step, {
        'train/loss': m.loss,
        ...Object.fromEntries(Object.entries(m.terms).map(([k, v]) => [`train/${k}_loss`, v])),
        'train/lr': m.lr,
        'train/grad_norm': m.gradNorm,
        'train/img_per_sec': m.imgPerSec,
      });
    }
    if (this.bar) {
      this.bar.update(step, { loss: m.loss.toFixed(4), ips: formatRate(m.imgPerSec) });
    } else if (!this.quiet && (step % this.plainEvery === 0 || step === this.opts.maxSteps)) {
      console.log(
        `step ${step}/${this.opts.maxSteps}  loss ${m.loss.toFixed(4)} (${Object.entries(m.terms).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(', ')})  ` +
          `lr ${m.lr.toExponential(2)}  grad-norm ${m.gradNorm.toFixed(3)}  ${formatRate(m.imgPerSec)} img/s`,
      );
    }
  }

  /** `perLabel`: mean Dice by label name */
  val(step: number, valDice: number, perLabel: Record<string, number>, overlay?: TbImage): void {
    const byName = Object.fromEntries(Object.entries(perLabel).map(([k, v]) => [k, round(v)]));
    appendFileSync(this.jsonlPath, `${JSON.stringify({ step, val_dice: round(valDice), val_dice_per_label: byName })}\n`);
    this.tb.scalars(step, { 'val/dice': valDice, ...Object.fromEntries(Object.entries(perLabel).map(([k, v]) => [`val/dice/${k.replace(/[^\w.-]+/g, '_')}`, v])) });
    if (overlay) this.tb.image(step, 'val/overlay', overlay);
  }

  close(): void {
    this.bar?.stop();
    // a redraw prints the messages still buffered by log()
    this.multibar?.update();
    this.multibar?.stop();
    this.tb.close();
  }
}

export interface OverlayInput {
  /** (S, S, 3) ImageNet-normalized, channels-last */
  image: Float32Array;
  imageSize: number;
  /** (m, m) ground truth and prediction (logits or 0/1) at the low-res mask size */
  gt: Float32Array;
  pred: Float32Array;
  maskSize: number;
  /** x0, y0, x1, y1 in input pixels */
  box: ArrayLike<number>;
  /** longest side of the picture (default 256) */
  maxSide?: number;
}

/**
 * A validation slice as a PNG: the gray image, ground truth in green, prediction (logit > 0) in
 * red (both: yellow), and the prompt box in cyan.
 */
export function renderOverlay(o: OverlayInput): TbImage {
  const S = o.imageSize;
  const out = Math.min(S, o.maxSide ?? 256);
  const scale = S / out;
  const rgb = new Uint8Array(out * out * 3);
  for (let y = 0; y < out; y++) {
    for (let x = 0; x < out; x++) {
      const sx = Math.min(S - 1, Math.floor((x + 0.5) * scale));
      const sy = Math.min(S - 1, Math.floor((y + 0.5) * scale));
      let gray = 0;
      for (let c = 0; c < 3; c++) gray += o.image[(sy * S + sx) * 3 + c] * IMAGENET_STD[c] + IMAGENET_MEAN[c];
      gray = Math.max(0, Math.min(1, gray / 3)) * 255;
      const mx = Math.min(o.maskSize - 1, Math.floor((sx * o.maskSize) / S));
      const my = Math.min(o.maskSize - 1, Math.floor((sy * o.maskSize) / S));
      const g = o.gt[my * o.maskSize + mx] > 0.5;
      const p = o.pred[my * o.maskSize + mx] > 0;
      const tint: [number, number, number] | undefined = g && p ? [255, 255, 0] : g ? [0, 255, 0] : p ? [255, 0, 0] : undefined;
      const i = (y * out + x) * 3;
      for (let c = 0; c < 3; c++) rgb[i + c] = Math.round(tint ? 0.55 * gray + 0.45 * tint[c] : gray);
    }
  }
  const [x0, y0, x1, y1] = Array.from(o.box, (v) => Math.max(0, Math.min(out - 1, Math.round(v / scale))));
  const put = (x: number, y: number) => rgb.set([0, 255, 255], (y * out + x) * 3);
  for (let x = x0; x <= x1; x++) {
    put(x, y0);
    put(x, y1);
  }
  for (let y = y0; y <= y1; y++) {
    put(x0, y);
    put(x1, y);
  }
  return { height: out, width: out, colorspace: 3, png: encodePng({ width: out, height: out, data: rgb, channels: 3, depth: 8 }) };
}
