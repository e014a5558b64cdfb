import seedrandom from 'seedrandom';
import { describe, expect, it } from 'vitest';
import { labelBoxesOf, type SliceData } from '../src/data/sampling.js';
import {
  DEFAULT_AUGMENT,
  IDENTITY,
  IMAGENET_MEAN,
  IMAGENET_STD,
  UNPERTURBED,
  drawParams,
  pixelMap,
  renderSample,
  scaledBoxShift,
  shiftBox,
  warpImage,
  warpLabel,
  type Augment,
} from '../src/data/transforms.js';

/** A gray uint8 slice with labels of the same size. */
function slice(w: number, h: number, pixels: number[], labels?: number[], channels: 1 | 3 = 1): SliceData {
  const lab = Uint8Array.from(labels ?? new Array(w * h).fill(0));
  return {
    image: Uint8Array.from(pixels),
    imageScale: 1 / 255,
    width: w,
    height: h,
    channels,
    labels: lab,
    labelWidth: w,
    labelHeight: h,
    labelBoxes: labelBoxesOf(lab, 0, w, h),
  };
}

/** Undo the normalization of channel c: back to 0..255 gray levels. */
function gray(dst: Float32Array, i: number, c = 0): number {
  return (dst[i * 3 + c] * IMAGENET_STD[c] + IMAGENET_MEAN[c]) * 255;
}

function warp(src: SliceData, size: number, aug: Augment = IDENTITY): Float32Array {
  const dst = new Float32Array(size * size * 3);
  warpImage(src, size, pixelMap(src.width, src.height, size, aug), dst, 0);
  return dst;
}

function mask(src: SliceData, label: number, size: number, aug: Augment = IDENTITY): Float32Array {
  const dst = new Float32Array(size * size);
  warpLabel(src, label, size, pixelMap(src.labelWidth, src.labelHeight, size, aug), dst, 0);
  return dst;
}

describe('resize', () => {
  it('identity map at the same size', () => {
    const m = pixelMap(7, 5, 7, IDENTITY);
    expect(m.ax).toBe(1);
    expect(m.cx).toBe(0);
    expect(m.bx).toBe(0);
    expect(m.ay).toBe(0);
  });

  it('bilinear 2x2 -> 4x4, half-pixel centres, edges clamped (hand-computed)', () => {
    // [[0, 40], [80, 120]]: columns sample at -0.25, 0.25, 0.75, 1.25 → weights (clamp), .25, .75, (clamp)
    const dst = warp(slice(2, 2, [0, 40, 80, 120]), 4);
    const expected = [
      [0, 10, 30, 40],
      [20, 30, 50, 60],
      [60, 70, 90, 100],
      [80, 90, 110, 120],
    ];
    for (let y = 0; y < 4; y++) {
      for (let x = 0; x < 4; x++) expect(gray(dst, y * 4 + x)).toBeCloseTo(expected[y][x], 3);
    }
  });

  it('bilinear 4x4 -> 2x2 averages 2x2 blocks', () => {
    const px = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150];
    const dst = warp(slice(4, 4, px), 2);
    expect(gray(dst, 0)).toBeCloseTo((0 + 10 + 40 + 50) / 4, 3);
    expect(gray(dst, 1)).toBeCloseTo((20 + 30 + 60 + 70) / 4, 3);
    expect(gray(dst, 2)).toBeCloseTo((80 + 90 + 120 + 130) / 4, 3);
    expect(gray(dst, 3)).toBeCloseTo((100 + 110 + 140 + 150) / 4, 3);
  });

  it('gray -> 3 channels with ImageNet normalization on value / 255', () => {
    const dst = warp(slice(1, 1, [255]), 1);
    expect(dst[0]).toBeCloseTo((1 - 0.485) / 0.229, 5);
    expect(dst[1]).toBeCloseTo((1 - 0.456) / 0.224, 5);
    expect(dst[2]).toBeCloseTo((1 - 0.406) / 0.225, 5);
    const zero = warp(slice(1, 1, [0]), 1);
    expect(Array.from(zero)).toEqual([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225].map(Math.fround));
  });

  it('RGB images keep their channels', () => {
    const dst = warp(slice(1, 1, [255, 0, 51], undefined, 3), 2);
    for (let i = 0; i < 4; i++) {
      expect(gray(dst, i, 0)).toBeCloseTo(255, 3);
      expect(gray(dst, i, 1)).toBeCloseTo(0, 3);
      expect(gray(dst, i, 2)).toBeCloseTo(51, 3);
    }
  });

  it('float images in [0,1] (npy folders) use scale 1', () => {
    const src = { ...slice(1, 1, [0]), image: Float32Array.from([0.5]), imageScale: 1 };
    expect(gray(warp(src, 1), 0)).toBeCloseTo(127.5, 3);
  });

  it('mask nearest: 4x4 -> 2x2 takes pixel floor((x + 0.5) * 2); 2x2 -> 4x4 repeats', () => {
    const labels = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const src = slice(4, 4, new Array(16).fill(0), labels);
    expect(Array.from(mask(src, 1, 2))).toEqual([1, 0, 0, 1]);
    const small = slice(2, 2, [0, 0, 0, 0], [1, 0, 0, 2]);
    expect(Array.from(mask(small, 2, 4))).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]);
  });
});

/** Straightforward per-pixel bilinear through the same map: the reference for every fast path. */
function naiveWarp(src: SliceData, size: number, aug: Augment): Float32Array {
  const m = pixelMap(src.width, src.height, size, aug);
  const out = new Float32Array(size * size * 3);
  const { width: W, height: H, channels: C } = src;
  const px = (i: number, j: number, c: number) => src.image[(j * W + i) * C + (C === 1 ? 0 : c)];
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const sx = m.ax * x + m.bx * y + m.cx;
      const sy = m.ay * x + m.by * y + m.cy;
      for (let c = 0; c < 3; c++) {
        let v = 0;
        if (sx >= -0.5 && sx <= W - 0.5 && sy >= -0.5 && sy <= H - 0.5) {
          const cx = Math.min(Math.max(sx, 0), W - 1);
          const cy = Math.min(Math.max(sy, 0), H - 1);
          const i = Math.floor(cx);
          const j = Math.floor(cy);
          const [i1, j1] = [Math.min(i + 1, W - 1), Math.min(j + 1, H - 1)];
          const [wx, wy] = [cx - i, cy - j];
          const top = px(i, j, c) * (1 - wx) + px(i1, j, c) * wx;
          const bot = px(i, j1, c) * (1 - wx) + px(i1, j1, c) * wx;
          v = top * (1 - wy) + bot * wy;
        }
        out[(y * size + x) * 3 + c] = (v * src.imageScale - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
      }
    }
  }
  return out;
}

describe('fast paths agree with a naive per-pixel reference', () => {
  const rng = seedrandom('ref');
  const cases: [number, number, 1 | 3, number, Augment][] = [
    [37, 23, 1, 64, IDENTITY],
    [37, 23, 1, 16, { flipH: true, flipV: false, angle: 0 }],
    [64, 64, 1, 64, { flipH: false, flipV: true, angle: 0 }],
    [40, 52, 1, 48, { flipH: false, flipV: false, angle: 0.15 }],
    [40, 52, 1, 96, { flipH: true, flipV: true, angle: -0.17 }],
    [30, 30, 3, 32, IDENTITY],
    [30, 30, 3, 32, { flipH: true, flipV: false, angle: 0.1 }],
  ];
  for (const [w, h, c, size, aug] of cases) {
    it(`${w}x${h}x${c} -> ${size}, ${JSON.stringify(aug)}`, () => {
      const src = slice(w, h, Array.from({ length: w * h * c }, () => Math.floor(rng() * 256)), undefined, c);
      const fast = warp(src, size, aug);
      const ref = naiveWarp(src, size, aug);
      let worst = 0;
      for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(fast[i] - ref[i]));
      expect(worst).toBeLessThan(1e-4);
    });
  }
});

describe('box prompt', () => {
  // 8x8 source, label 3 on columns 2..5, rows 1..3
  const labels = new Array(64).fill(0);
  for (let y = 1; y <= 3; y++) for (let x = 2; x <= 5; x++) labels[y * 8 + x] = 3;
  const src = slice(8, 8, new Array(64).fill(100), labels);

  it('tight box in S coordinates (x2 upsampling: inclusive pixel indices)', () => {
    const r = warpLabel(src, 3, 16, pixelMap(8, 8, 16, IDENTITY));
    expect(r?.box).toEqual([4, 2, 11, 7]);
    expect(r?.count).toBe(8 * 6);
    expect(warpLabel(src, 1, 16, pixelMap(8, 8, 16, IDENTITY))).toBeNull();
  });

  it('bbox_shift is given at 256 scale', () => {
    expect(scaledBoxShift(5, 256)).toBe(5);
    expect(scaledBoxShift(5, 512)).toBe(10);
    expect(scaledBoxShift(5, 1024)).toBe(20);
    expect(scaledBoxShift(0, 1024)).toBe(0);
  });

  it('each side moves outward by 0..maxShift, every value reached, clamped to 0..S', () => {
    const rng = seedrandom('box');
    const seen = [new Set<number>(), new Set<number>(), new Set<number>(), new Set<number>()];
    const box = [20, 30, 40, 50] as const;
    for (let i = 0; i < 2000; i++) {
      const b = shiftBox(box, 6, [rng(), rng(), rng(), rng()], 64);
      [box[0] - b[0], box[1] - b[1], b[2] - box[2], b[3] - box[3]].forEach((m, k) => seen[k].add(m));
    }
    for (const s of seen) expect([...s].sort()).toEqual([0, 1, 2, 3, 4, 5, 6]); // outward only, never past 6
    expect(shiftBox([1, 2, 62, 63], 6, [0.99, 0.99, 0.99, 0.99], 64)).toEqual([0, 0, 64, 64]);
    expect(shiftBox([1, 2, 62, 63], 6, [0, 0, 0, 0], 64)).toEqual([1, 2, 62, 63]);
  });

  it('renderSample writes image, low-res mask and shifted box into the batch slot', () => {
    const S = 16;
    const dst = { images: new Float32Array(2 * S * S * 3), masks: new Float32Array(2 * 16), boxes: new Float32Array(8) };
    expect(renderSample(src, 3, S, 0, UNPERTURBED, dst, 1)).toBe(true);
    expect(Array.from(dst.boxes.subarray(4))).toEqual([4, 2, 11, 7]);
    expect(Array.from(dst.boxes.subarray(0, 4))).toEqual([0, 0, 0, 0]);
    // low-res 4x4: column x samples source floor((x+.5)*2) = 1,3,5,7; rows 1,3,5,7
    expect(Array.from(dst.masks.subarray(16))).toEqual([0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(gray(dst.images, S * S + 5)).toBeCloseTo(100, 3);
  });

  it('renderSample rejects a label lost at the low-res size', () => {
    const lab = new Array(64 * 64).fill(0);
    lab[64 * 10 + 10] = 1; // one pixel, not on the sampled grid at 16/4 = 4
    const tiny = slice(64, 64, new Array(64 * 64).fill(0), lab);
    const dst = { images: new Float32Array(16 * 16 * 3), masks: new Float32Array(16), boxes: new Float32Array(4) };
    expect(renderSample(tiny, 1, 16, 0, UNPERTURBED, dst, 0)).toBe(false);
  });
});

describe('augmentation', () => {
  // asymmetric 6x4 image: brightness = 10*x + 50*y; label 1 on a 2x1 block at the top-left
  const W = 6;
  const H = 4;
  const px: number[] = [];
  const lab: number[] = [];
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      px.push(10 * x + 50 * y);
      lab.push(x >= 1 && x <= 2 && y === 0 ? 1 : 0);
    }
  }
  const src = slice(W, H, px, lab);
  const S = 12;

  it('horizontal flip mirrors image, mask and box together', () => {
    const aug = { flipH: true, flipV: false, angle: 0 };
    const [img0, img1] = [warp(src, S), warp(src, S, aug)];
    const [m0, m1] = [mask(src, 1, S), mask(src, 1, S, aug)];
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        expect(img1[(y * S + x) * 3]).toBe(img0[(y * S + (S - 1 - x)) * 3]);
        expect(m1[y * S + x]).toBe(m0[y * S + (S - 1 - x)]);
      }
    }
    const b0 = warpLabel(src, 1, S, pixelMap(W, H, S, IDENTITY))!.box;
    const b1 = warpLabel(src, 1, S, pixelMap(W, H, S, aug))!.box;
    expect(b1).toEqual([S - 1 - b0[2], b0[1], S - 1 - b0[0], b0[3]]);
  });

  it('vertical flip mirrors image, mask and box together', () => {
    const aug = { flipH: false, flipV: true, angle: 0 };
    const [img0, img1] = [warp(src, S), warp(src, S, aug)];
    const [m0, m1] = [mask(src, 1, S), mask(src, 1, S, aug)];
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        expect(img1[(y * S + x) * 3 + 1]).toBe(img0[((S - 1 - y) * S + x) * 3 + 1]);
        expect(m1[y * S + x]).toBe(m0[(S - 1 - y) * S + x]);
      }
    }
    const b0 = warpLabel(src, 1, S, pixelMap(W, H, S, IDENTITY))!.box;
    const b1 = warpLabel(src, 1, S, pixelMap(W, H, S, aug))!.box;
    expect(b1).toEqual([b0[0], S - 1 - b0[3], b0[2], S - 1 - b0[1]]);
  });

  it('a quarter turn rotates counter-clockwise as displayed: out[y][x] = in[x][S-1-y]', () => {
    const sq = slice(4, 4, Array.from({ length: 16 }, (_, i) => i * 10), [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const aug = { flipH: false, flipV: false, angle: Math.PI / 2 };
    const img0 = warp(sq, 4);
    const img1 = warp(sq, 4, aug);
    for (let y = 0; y < 4; y++) {
      for (let x = 0; x < 4; x++) expect(img1[(y * 4 + x) * 3]).toBeCloseTo(img0[(x * 4 + (3 - y)) * 3], 4);
    }
    // label on the top row, left half → left column, bottom half
    expect(Array.from(mask(sq, 1, 4, aug))).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
  });

  it('small rotations keep image and mask aligned; corners brought in are black', () => {
    // a bright disc labelled 1 in a 64x64 image, off-centre
    const N = 64;
    const p: number[] = [];
    const l: number[] = [];
    for (let y = 0; y < N; y++) {
      for (let x = 0; x < N; x++) {
        const inside = (x - 40) ** 2 + (y - 22) ** 2 <= 100;
        p.push(inside ? 200 : 20);
        l.push(inside ? 1 : 0);
      }
    }
    const disc = slice(N, N, p, l);
    const aug = { flipH: true, flipV: false, angle: (9 * Math.PI) / 180 };
    const img = warp(disc, N, aug);
    const m = mask(disc, 1, N, aug);
    let mismatch = 0;
    let ones = 0;
    for (let i = 0; i < N * N; i++) {
      ones += m[i];
      if (m[i] !== (gray(img, i) > 110 ? 1 : 0)) mismatch++;
    }
    expect(ones).toBeGreaterThan(250);
    expect(mismatch).toBeLessThan(20); // boundary pixels only (bilinear vs nearest)
    expect(gray(img, 0)).toBeCloseTo(0, 3); // a corner rotated in from outside
    const r = warpLabel(disc, 1, N, pixelMap(N, N, N, aug))!;
    let [x0, y0, x1, y1] = [N, N, -1, -1];
    for (let i = 0; i < N * N; i++) {
      if (!m[i]) continue;
      const x = i % N;
      const y = Math.floor(i / N);
      [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
    }
    expect(r.box).toEqual([x0, y0, x1, y1]);
    expect(r.count).toBe(ones);
  });

  it('drawParams: flips about half the time, angles within the limit, none without augment', () => {
    const rng = seedrandom('aug');
    let h = 0;
    let v = 0;
    for (let i = 0; i < 1000; i++) {
      const p = drawParams(rng, DEFAULT_AUGMENT);
      h += p.aug.flipH ? 1 : 0;
      v += p.aug.flipV ? 1 : 0;
      expect(Math.abs(p.aug.angle)).toBeLessThanOrEqual((DEFAULT_AUGMENT.maxRotation * Math.PI) / 180);
    }
    expect(h).toBeGreaterThan(400);
    expect(h).toBeLessThan(600);
    expect(v).toBeGreaterThan(400);
    expect(drawParams(rng, null).aug).toEqual(IDENTITY);
  });
});
