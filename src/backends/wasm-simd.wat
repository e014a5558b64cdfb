;; medtune's own SIMD loops on the wasm backend's memory (src/backends/wasm-simd.ts), where
;; tfjs-backend-wasm's ops take many passes or a transpose. sumRows and adamw round to float32 in
;; the order of the ops they replace, so the bits agree; sumOfSquares sums in float64.
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
