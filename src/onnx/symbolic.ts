/**
 * Symbolic dimensions for the exporter.
 *
 * Model code only ever sees concrete shapes (`Ops.shape` returns numbers). To keep some graph
 * dimensions dynamic (the batch, the number of points or memories) the exporter traces the model
 * several times with different values of the symbols and compares every shape-like integer the
 * model hands to the op layer (reshape targets, tile counts, slice bounds, constant shapes) and
 * every value's shape. Each one becomes a multilinear polynomial in the symbols
 * (`c0 + a*batch + b*num_points + c*batch*num_points`), fitted from the 2^k traces where each
 * symbol is at its base value or one more and checked against a trace with all of them two
 * more. The final trace emits constants where the polynomial is constant and, only where it is
 * not, a few nodes reading the symbols from the graph inputs' runtime shapes.
 */

/** c0 + sum coef[m] * m over monomials m: symbol names joined by '*', sorted */
export interface Expr {
  c0: number;
  coef: Record<string, number>;
}

export function constExpr(n: number): Expr {
  return { c0: n, coef: {} };
}

export function isConst(e: Expr): boolean {
  return Object.keys(e.coef).length === 0;
}

export function exprEquals(a: Expr, b: Expr): boolean {
  if (a.c0 !== b.c0) return false;
  const ka = Object.keys(a.coef);
  if (ka.length !== Object.keys(b.coef).length) return false;
  return ka.every((k) => a.coef[k] === b.coef[k]);
}

export function exprAdd(a: Expr, b: Expr): Expr {
  const coef = { ...a.coef };
  for (const [k, v] of Object.entries(b.coef)) {
    coef[k] = (coef[k] ?? 0) + v;
    if (coef[k] === 0) delete coef[k];
  }
  return { c0: a.c0 + b.c0, coef };
}

export function exprKey(e: Expr): string {
  const terms = Object.keys(e.coef)
    .sort()
    .map((k) => (e.coef[k] === 1 ? k : `${e.coef[k]}*${k}`));
  if (e.c0 !== 0 || terms.length === 0) terms.push(String(e.c0));
  return terms.join('+');
}

/** The symbol name when `e` is exactly one symbol, else undefined. */
export function pureSymbol(e: Expr): string | undefined {
  const keys = Object.keys(e.coef);
  return e.c0 === 0 && keys.length === 1 && e.coef[keys[0]] === 1 ? keys[0] : undefined;
}

export function monomialSymbols(m: string): string[] {
  return m.split('*');
}

export function evalExpr(e: Expr, values: Record<string, number>): number {
  let v = e.c0;
  for (const [m, c] of Object.entries(e.coef)) v += c * monomialSymbols(m).reduce((p, s) => p * values[s], 1);
  return v;
}

/** What one trace records, in call order. */
export interface TraceLog {
  /** one signature per op call (op name and its structural attributes) */
  ops: string[];
  /** every shape-like integer vector handed to the op layer */
  ints: number[][];
  /** the shape of every value created */
  shapes: number[][];
  /** constants: data and shape, by creation order */
  consts: Array<{ data: Float32Array; shape: number[] }>;
}

export function emptyLog(): TraceLog {
  return { ops: [], ints: [], shapes: [], consts: [] };
}

/** Affine expressions for every recorded integer and shape of the base trace. */
export interface ShapePlan {
  ints: Expr[][];
  shapes: Expr[][];
}

/** All subsets of `names` (as sorted arrays), the empty set first. */
function subsets(names: string[]): string[][] {
  const out: string[][] = [[]];
  for (const n of names) for (const s of [...out]) out.push([...s, n]);
  return out.map((s) => s.sort());
}

/** The trace values where the symbols in `bumped` are one larger than at base. */
export function traceValues(base: Record<string, number>, bumped: string[]): Record<string, number> {
  return Object.fromEntries(Object.entries(base).map(([k, v]) => [k, bumped.includes(k) ? v + 1 : v]));
}

/**
 * Fit one multilinear polynomial per recorded number. `traces[i]` was taken at
 * `traceValues(base, corners[i])`. In shifted variables y_s = x_s - base_s the coefficient of a
 * monomial M is the inclusion-exclusion sum over the corners inside M; expanding
 * prod (x_s - base_s) gives the coefficients in the symbols themselves.
 */
function fitPolynomial(base: Record<string, number>, corners: string[][], values: number[]): Expr {
  const valueAt = new Map(corners.map((c, i) => [c.join('*'), values[i]]));
  const shifted = new Map<string, number>();
  for (const m of corners) {
    let d = 0;
    for (const t of subsets(m)) d += (m.length - t.length) % 2 === 0 ? valueAt.get(t.join('*'))! : -valueAt.get(t.join('*'))!;
    if (d !== 0) shifted.set(m.join('*'), d);
  }
  const coef: Record<string, number> = {};
  let c0 = 0;
  for (const [mKey, d] of shifted) {
    const m = mKey === '' ? [] : mKey.split('*');
    for (const u of subsets(m)) {
      const rest = m.filter((s) => !u.includes(s));
      const c = d * rest.reduce((p, s) => p * -base[s], 1);
      if (u.length === 0) c0 += c;
      else coef[u.join('*')] = (coef[u.join('*')] ?? 0) + c;
    }
  }
  for (const k of Object.keys(coef)) if (coef[k] === 0) delete coef[k];
  return { c0, coef };
}

/**
 * Fit the plan from traces at every corner of the unit cube above `base` (corners: which symbols
 * are bumped by one, the empty corner first) and check it against a trace with every symbol two larger.
 */
export function buildPlan(
  base: Record<string, number>,
  traces: Array<{ corner: string[]; log: TraceLog }>,
  check: { values: Record<string, number>; log: TraceLog },
): ShapePlan {
  const ref = traces[0].log;
  const all = [...traces.slice(1).map((t) => ({ name: `+{${t.corner.join(',')}}`, log: t.log })), { name: 'check', log: check.log }];
  for (const { name, log } of all) {
    if (log.ops.length !== ref.ops.length) {
      throw new Error(
        `the model builds a different graph when a symbolic dimension changes (${ref.ops.length} vs ${log.ops.length} ops, trace ${name}); ` +
          'it loops or branches on that dimension, so it cannot be dynamic',
      );
    }
    const k = log.ops.findIndex((op, i) => op !== ref.ops[i]);
    if (k >= 0) throw new Error(`graph structure changes with a symbolic dimension at op #${k}: ${ref.ops[k]} vs ${log.ops[k]} (trace ${name})`);
  }
  const corners = traces.map((t) => t.corner);
  const fit = (pick: (log: TraceLog) => number[][], what: string): Expr[][] =>
    pick(ref).map((vec, i) =>
      vec.map((_, j) =>
        fitPolynomial(
          base,
          corners,
          traces.map(({ log }) => {
            const v = pick(log)[i];
            if (!v || v.length !== vec.length) throw new Error(`${what} #${i} changes rank with a symbolic dimension; it cannot be dynamic`);
            return v[j];
          }),
        ),
      ),
    );
  const ints = fit((l) => l.ints, 'integer argument');
  const shapes = fit((l) => l.shapes, 'value shape');
  const verify = (exprs: Expr[][], actual: number[][], what: string) => {
    exprs.forEach((vec, i) =>
      vec.forEach((e, j) => {
        if (evalExpr(e, check.values) !== actual[i][j]) {
          throw new Error(`${what} #${i}[${j}] is not multilinear in the symbolic dimensions (${exprKey(e)}); cannot export it dynamically`);
        }
      }),
    );
  };
  verify(ints, check.log.ints, 'integer argument');
  verify(shapes, check.log.shapes, 'value shape');
  // a constant whose shape depends on a symbol must repeat along those axes (it is expanded at run time)
  ref.consts.forEach((c, i) => {
    const axes = new Set<number>();
    for (const { log } of all) log.consts[i].shape.forEach((d, a) => d !== c.shape[a] && axes.add(a));
    if (axes.size === 0) return;
    for (const { data, shape } of [c, ...all.map((t) => t.log.consts[i])]) {
      if (!collapseAxes(data, shape, [...axes])) {
        throw new Error(`constant #${i} of shape [${shape}] varies along a symbolic dimension; it cannot be exported dynamically`);
      }
    }
  });
  return { ints, shapes };
}

/** Every corner of the unit cube above the base values: which symbols are bumped. */
export function cubeCorners(names: string[]): string[][] {
  return subsets(names);
}

/** Take index 0 along `axes` if the data is the same along them, else null. */
export function collapseAxes(data: Float32Array, shape: number[], axes: number[]): { data: Float32Array; shape: number[] } | null {
  const outShape = shape.map((d, a) => (axes.includes(a) ? 1 : d));
  const strides = shape.map((_, a) => shape.slice(a + 1).reduce((x, y) => x * y, 1));
  const out = new Float32Array(outShape.reduce((x, y) => x * y, 1));
  const outStrides = outShape.map((_, a) => outShape.slice(a + 1).reduce((x, y) => x * y, 1));
  for (let i = 0; i < data.length; i++) {
    let o = 0;
    for (let a = 0; a < shape.length; a++) {
      const idx = Math.floor(i / strides[a]) % shape[a];
      if (!axes.includes(a)) o += idx * outStrides[a];
    }
    let first = true;
    for (let a = 0; a < shape.length; a++) if (axes.includes(a) && Math.floor(i / strides[a]) % shape[a] !== 0) first = false;
    if (first) out[o] = data[i];
    else if (out[o] !== data[i]) return null;
  }
  return { data: out, shape: outShape };
}
