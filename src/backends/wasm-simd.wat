;; medtune's own SIMD loops on the wasm backend's memory (src/backends/wasm-simd.ts), where
;; tfjs-backend-wasm's ops take many passes or a transpose. sumRows, adamw and maxPool2x2Grad give
;; the bits of what they replace; sumOfSquares sums in float64.
;; src/backends/wasm-simd-binary.ts is this file assembled (scripts/build-wasm.ts).
(module
  (import "env" "memory" (memory 1 65536 shared))
  ;; sumRows(x, out: byte offsets, rows, cols): out[c] = x[0][c] + x[1][c] + ... in row order,
  ;; reading x once front to back (wasm's Sum transposes a leading-axes reduction first)
  (func (export "sumRows") (param $x i32) (param $out i32) (param $rows i32) (param $cols i32)
    (local $r i32) (local $c i32) (local $row i32) (local $vecEnd i32) (local $at i32)
    (local.set $vecEnd (i32.and (local.get $cols) (i32.const -4)))
    (memory.fill (local.get $out) (i32.const 0) (i32.shl (local.get $cols) (i32.const 2)))
    (local.set $row (local.get $x))
    (block $rowsDone
      (loop $nextRow
        (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $c (i32.const 0))
        (block $done4
          (loop $next4
            (br_if $done4 (i32.ge_u (local.get $c) (local.get $vecEnd)))
            (local.set $at (i32.shl (local.get $c) (i32.const 2)))
            (v128.store (i32.add (local.get $out) (local.get $at))
              (f32x4.add (v128.load (i32.add (local.get $out) (local.get $at))) (v128.load (i32.add (local.get $row) (local.get $at)))))
            (local.set $c (i32.add (local.get $c) (i32.const 4)))
            (br $next4)))
        (block $done
          (loop $next
            (br_if $done (i32.ge_u (local.get $c) (local.get $cols)))
            (local.set $at (i32.shl (local.get $c) (i32.const 2)))
            (f32.store (i32.add (local.get $out) (local.get $at))
              (f32.add (f32.load (i32.add (local.get $out) (local.get $at))) (f32.load (i32.add (local.get $row) (local.get $at)))))
            (local.set $c (i32.add (local.get $c) (i32.const 1)))
            (br $next)))
        (local.set $row (i32.add (local.get $row) (i32.shl (local.get $cols) (i32.const 2))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $nextRow))))
  ;; sumOfSquares(x, n, out: byte offsets): out[0] = the sum of x[i]^2 over n values, each square
  ;; and the running sums in float64 (rounded to float32 once, at the end), so a gradient of
  ;; millions of values loses nothing to float32 accumulation; lanes summed (0+2)+(1+3), then the tail
  (func (export "sumOfSquares") (param $x i32) (param $n i32) (param $out i32)
    (local $i i32) (local $vecEnd i32) (local $x4 v128) (local $lo v128) (local $hi v128)
    (local $accLo v128) (local $accHi v128) (local $total f64) (local $xs f64)
    (local.set $vecEnd (i32.and (local.get $n) (i32.const -4)))
    (block $done4
      (loop $next4
        (br_if $done4 (i32.ge_u (local.get $i) (local.get $vecEnd)))
        (local.set $x4 (v128.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $lo (f64x2.promote_low_f32x4 (local.get $x4)))
        ;; lanes 2 and 3 moved down to be promoted
        (local.set $hi (f64x2.promote_low_f32x4
          (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $x4) (local.get $x4))))
        (local.set $accLo (f64x2.add (local.get $accLo) (f64x2.mul (local.get $lo) (local.get $lo))))
        (local.set $accHi (f64x2.add (local.get $accHi) (f64x2.mul (local.get $hi) (local.get $hi))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $next4)))
    (local.set $accLo (f64x2.add (local.get $accLo) (local.get $accHi)))
    (local.set $total (f64.add (f64x2.extract_lane 0 (local.get $accLo)) (f64x2.extract_lane 1 (local.get $accLo))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $xs (f64.promote_f32 (f32.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2))))))
        (local.set $total (f64.add (local.get $total) (f64.mul (local.get $xs) (local.get $xs))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (f32.store (local.get $out) (f32.demote_f64 (local.get $total))))
  ;; maxPool2x2Grad(x, dy, dx: byte offsets; batch, inH, inW, ch, outH, outW): the gradient of a
  ;; 2x2 max pool of stride 2 (Hiera's q-pooling) for NHWC float32, four channels at a time: each
  ;; window's first maximum in scan order (00, 01, 10, 11) gets dy, as maxPoolGradNhwc
  ;; (fast-kernels.ts) picks it; NaN and -Infinity never win; dx = 0 + dy, so -0 becomes +0 there too
  (func (export "maxPool2x2Grad") (param $x i32) (param $dy i32) (param $dx i32)
    (param $batch i32) (param $inH i32) (param $inW i32) (param $ch i32) (param $outH i32) (param $outW i32)
    (local $b i32) (local $oy i32) (local $ox i32) (local $c i32) (local $vecEnd i32)
    (local $pixel i32) (local $row i32) (local $at i32) (local $dyAt i32) (local $toDx i32)
    (local $x00 v128) (local $x01 v128) (local $x10 v128) (local $x11 v128) (local $best v128) (local $d v128)
    (local $has0 v128) (local $g1 v128) (local $g2 v128) (local $g3 v128)
    (local $s00 f32) (local $s01 f32) (local $s10 f32) (local $s11 f32) (local $sb f32) (local $sd f32)
    (local $h0 i32) (local $k1 i32) (local $k2 i32) (local $k3 i32)
    (local.set $pixel (i32.shl (local.get $ch) (i32.const 2)))
    (local.set $row (i32.mul (local.get $inW) (local.get $pixel)))
    (local.set $vecEnd (i32.and (local.get $ch) (i32.const -4)))
    (local.set $toDx (i32.sub (local.get $dx) (local.get $x)))
    ;; pixels outside every window (odd sizes) keep a zero gradient
    (memory.fill (local.get $dx) (i32.const 0)
      (i32.mul (i32.mul (local.get $batch) (local.get $inH)) (local.get $row)))
    (local.set $dyAt (local.get $dy))
    (local.set $b (i32.const 0))
    (block $batchesDone
      (loop $nextBatch
        (br_if $batchesDone (i32.ge_u (local.get $b) (local.get $batch)))
        (local.set $oy (i32.const 0))
        (block $rowsDone
          (loop $nextRow
            (br_if $rowsDone (i32.ge_u (local.get $oy) (local.get $outH)))
            (local.set $ox (i32.const 0))
            (block $colsDone
              (loop $nextCol
                (br_if $colsDone (i32.ge_u (local.get $ox) (local.get $outW)))
                ;; the window's top-left input pixel
                (local.set $at (i32.add (local.get $x)
                  (i32.add (i32.mul (i32.add (i32.mul (local.get $b) (local.get $inH)) (i32.shl (local.get $oy) (i32.const 1))) (local.get $row))
                           (i32.mul (i32.shl (local.get $ox) (i32.const 1)) (local.get $pixel)))))
                (local.set $c (i32.const 0))
                (block $done4
                  (loop $next4
                    (br_if $done4 (i32.ge_u (local.get $c) (local.get $vecEnd)))
                    (local.set $x00 (v128.load (local.get $at)))
                    (local.set $x01 (v128.load (i32.add (local.get $at) (local.get $pixel))))
                    (local.set $x10 (v128.load (i32.add (local.get $at) (local.get $row))))
                    (local.set $x11 (v128.load (i32.add (i32.add (local.get $at) (local.get $row)) (local.get $pixel))))
                    (local.set $d (v128.load (local.get $dyAt)))
                    (local.set $has0 (f32x4.gt (local.get $x00) (v128.const f32x4 -inf -inf -inf -inf)))
                    (local.set $best (v128.bitselect (local.get $x00) (v128.const f32x4 -inf -inf -inf -inf) (local.get $has0)))
                    (local.set $g1 (f32x4.gt (local.get $x01) (local.get $best)))
                    (local.set $best (v128.bitselect (local.get $x01) (local.get $best) (local.get $g1)))
                    (local.set $g2 (f32x4.gt (local.get $x10) (local.get $best)))
                    (local.set $best (v128.bitselect (local.get $x10) (local.get $best) (local.get $g2)))
                    (local.set $g3 (f32x4.gt (local.get $x11) (local.get $best)))
                    ;; the last comparison that won is the first maximum
                    (v128.store (i32.add (local.get $at) (local.get $toDx))
                      (f32x4.add (v128.const f32x4 0 0 0 0) (v128.and (local.get $d)
                        (v128.andnot (v128.andnot (v128.andnot (local.get $has0) (local.get $g1)) (local.get $g2)) (local.get $g3)))))
                    (v128.store (i32.add (i32.add (local.get $at) (local.get $pixel)) (local.get $toDx))
                      (f32x4.add (v128.const f32x4 0 0 0 0) (v128.and (local.get $d)
                        (v128.andnot (v128.andnot (local.get $g1) (local.get $g2)) (local.get $g3)))))
                    (v128.store (i32.add (i32.add (local.get $at) (local.get $row)) (local.get $toDx))
                      (f32x4.add (v128.const f32x4 0 0 0 0) (v128.and (local.get $d) (v128.andnot (local.get $g2) (local.get $g3)))))
                    (v128.store (i32.add (i32.add (i32.add (local.get $at) (local.get $row)) (local.get $pixel)) (local.get $toDx))
                      (f32x4.add (v128.const f32x4 0 0 0 0) (v128.and (local.get $d) (local.get $g3))))
                    (local.set $at (i32.add (local.get $at) (i32.const 16)))
                    (local.set $dyAt (i32.add (local.get $dyAt) (i32.const 16)))
                    (local.set $c (i32.add (local.get $c) (i32.const 4)))
                    (br $next4)))
                ;; the channels past the last four, one at a time, the same rule
                (block $done
                  (loop $next
                    (br_if $done (i32.ge_u (local.get $c) (local.get $ch)))
                    (local.set $s00 (f32.load (local.get $at)))
                    (local.set $s01 (f32.load (i32.add (local.get $at) (local.get $pixel))))
                    (local.set $s10 (f32.load (i32.add (local.get $at) (local.get $row))))
                    (local.set $s11 (f32.load (i32.add (i32.add (local.get $at) (local.get $row)) (local.get $pixel))))
                    (local.set $sd (f32.load (local.get $dyAt)))
                    (local.set $h0 (f32.gt (local.get $s00) (f32.const -inf)))
                    (local.set $sb (select (local.get $s00) (f32.const -inf) (local.get $h0)))
                    (local.set $k1 (f32.gt (local.get $s01) (local.get $sb)))
                    (local.set $sb (select (local.get $s01) (local.get $sb) (local.get $k1)))
                    (local.set $k2 (f32.gt (local.get $s10) (local.get $sb)))
                    (local.set $sb (select (local.get $s10) (local.get $sb) (local.get $k2)))
                    (local.set $k3 (f32.gt (local.get $s11) (local.get $sb)))
                    (f32.store (i32.add (local.get $at) (local.get $toDx))
                      (f32.add (f32.const 0) (select (local.get $sd) (f32.const 0)
                        (i32.and (local.get $h0) (i32.eqz (i32.or (local.get $k1) (i32.or (local.get $k2) (local.get $k3))))))))
                    (f32.store (i32.add (i32.add (local.get $at) (local.get $pixel)) (local.get $toDx))
                      (f32.add (f32.const 0) (select (local.get $sd) (f32.const 0)
                        (i32.and (local.get $k1) (i32.eqz (i32.or (local.get $k2) (local.get $k3)))))))
                    (f32.store (i32.add (i32.add (local.get $at) (local.get $row)) (local.get $toDx))
                      (f32.add (f32.const 0) (select (local.get $sd) (f32.const 0) (i32.and (local.get $k2) (i32.eqz (local.get $k3))))))
                    (f32.store (i32.add (i32.add (i32.add (local.get $at) (local.get $row)) (local.get $pixel)) (local.get $toDx))
                      (f32.add (f32.const 0) (select (local.get $sd) (f32.const 0) (local.get $k3))))
                    (local.set $at (i32.add (local.get $at) (i32.const 4)))
                    (local.set $dyAt (i32.add (local.get $dyAt) (i32.const 4)))
                    (local.set $c (i32.add (local.get $c) (i32.const 1)))
                    (br $next)))
                (local.set $ox (i32.add (local.get $ox) (i32.const 1)))
                (br $nextCol)))
            (local.set $oy (i32.add (local.get $oy) (i32.const 1)))
            (br $nextRow)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (br $nextBatch))))
  ;; The fused AdamW update, four parameters at a time, in the order of adamWUpdate (adamw-kernels.ts).
  ;; adamw(param, grad, expAvg, expAvgSq, outParam, outExpAvg, outExpAvgSq: byte offsets;
  ;;       n: values; moments: 0 on the first step (expAvg, expAvgSq read as zeros);
  ;;       the factors of adamWFactors)
  (func (export "adamw")
    (param $p i32) (param $g i32) (param $m i32) (param $v i32)
    (param $op i32) (param $om i32) (param $ov i32)
    (param $n i32) (param $moments i32)
    (param $gradScale f32) (param $decay f32) (param $oneMinusBeta1 f32) (param $beta2 f32)
    (param $oneMinusBeta2 f32) (param $bc2Sqrt f32) (param $eps f32) (param $negStepSize f32)
    (local $i i32) (local $at i32) (local $vecEnd i32)
    (local $g4 v128) (local $m4 v128) (local $v4 v128) (local $mi4 v128) (local $vi4 v128)
    (local $gs f32) (local $ms f32) (local $vs f32) (local $mis f32) (local $vis f32)
    (local.set $vecEnd (i32.and (local.get $n) (i32.const -4)))
    ;; four at a time
    (block $done4
      (loop $next4
        (br_if $done4 (i32.ge_u (local.get $i) (local.get $vecEnd)))
        (local.set $at (i32.shl (local.get $i) (i32.const 2)))
        (local.set $g4 (f32x4.mul (v128.load (i32.add (local.get $g) (local.get $at))) (f32x4.splat (local.get $gradScale))))
        (if (local.get $moments)
          (then
            (local.set $m4 (v128.load (i32.add (local.get $m) (local.get $at))))
            (local.set $v4 (v128.load (i32.add (local.get $v) (local.get $at)))))
          (else
            (local.set $m4 (v128.const f32x4 0 0 0 0))
            (local.set $v4 (v128.const f32x4 0 0 0 0))))
        ;; m = m0 + (g - m0) * (1 - b1)
        (local.set $mi4 (f32x4.add (local.get $m4) (f32x4.mul (f32x4.sub (local.get $g4) (local.get $m4)) (f32x4.splat (local.get $oneMinusBeta1)))))
        ;; v = v0 * b2 + (g * (1 - b2)) * g
        (local.set $vi4 (f32x4.add (f32x4.mul (local.get $v4) (f32x4.splat (local.get $beta2)))
                                   (f32x4.mul (f32x4.mul (local.get $g4) (f32x4.splat (local.get $oneMinusBeta2))) (local.get $g4))))
        ;; p = p * (1 - lr wd) + (m / (sqrt(v) / bc2sqrt + eps)) * (-stepSize)
        (v128.store (i32.add (local.get $op) (local.get $at))
          (f32x4.add
            (f32x4.mul (v128.load (i32.add (local.get $p) (local.get $at))) (f32x4.splat (local.get $decay)))
            (f32x4.mul
              (f32x4.div (local.get $mi4)
                (f32x4.add (f32x4.div (f32x4.sqrt (local.get $vi4)) (f32x4.splat (local.get $bc2Sqrt))) (f32x4.splat (local.get $eps))))
              (f32x4.splat (local.get $negStepSize)))))
        (v128.store (i32.add (local.get $om) (local.get $at)) (local.get $mi4))
        (v128.store (i32.add (local.get $ov) (local.get $at)) (local.get $vi4))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $next4)))
    ;; the rest one at a time, the same arithmetic
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $at (i32.shl (local.get $i) (i32.const 2)))
        (local.set $gs (f32.mul (f32.load (i32.add (local.get $g) (local.get $at))) (local.get $gradScale)))
        (if (local.get $moments)
          (then
            (local.set $ms (f32.load (i32.add (local.get $m) (local.get $at))))
            (local.set $vs (f32.load (i32.add (local.get $v) (local.get $at)))))
          (else
            (local.set $ms (f32.const 0))
            (local.set $vs (f32.const 0))))
        (local.set $mis (f32.add (local.get $ms) (f32.mul (f32.sub (local.get $gs) (local.get $ms)) (local.get $oneMinusBeta1))))
        (local.set $vis (f32.add (f32.mul (local.get $vs) (local.get $beta2))
                                 (f32.mul (f32.mul (local.get $gs) (local.get $oneMinusBeta2)) (local.get $gs))))
        (f32.store (i32.add (local.get $op) (local.get $at))
          (f32.add
            (f32.mul (f32.load (i32.add (local.get $p) (local.get $at))) (local.get $decay))
            (f32.mul
              (f32.div (local.get $mis)
                (f32.add (f32.div (f32.sqrt (local.get $vis)) (local.get $bc2Sqrt)) (local.get $eps)))
              (local.get $negStepSize))))
        (f32.store (i32.add (local.get $om) (local.get $at)) (local.get $mis))
        (f32.store (i32.add (local.get $ov) (local.get $at)) (local.get $vis))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))))
