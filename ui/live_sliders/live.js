/* The Schedule page's totals and prediction, counted in the browser from analysis/schedule/live.py's facts.
   Each function repeats its Python twin step by step (Accountant.totals, Curve.at, Predictor.prediction), on the
   same numbers and in the same order, so the two agree to the last digit (tests/test_live_sliders.py). */
"use strict";

const TINY = 1e-12;

/* Python's round(): the nearest integer, ties to even. */
function pyRound(x) {
  const f = Math.floor(x), d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/* Python's f"{x:.{digits}f}": toFixed, except an exact tie (the digits past the last shown are 5000...: toFixed
   with 40 more digits writes the double's exact value) rounds to even as Python does. */
function fixed(x, digits) {
  if (!Number.isFinite(x)) return String(x);
  const tail = Math.abs(x).toFixed(Math.min(digits + 40, 100)).split(".")[1].slice(digits);
  if (/^50*$/.test(tail)) return (pyRound(x * 10 ** digits) / 10 ** digits).toFixed(digits);
  return x.toFixed(digits);
}

function signed(x, digits) {
  const s = fixed(x, digits);
  return s.startsWith("-") ? s : "+" + s;
}

/* 1234567 -> "1,234,567" (Python's f"{n:,}"). */
function grouped(n) {
  return n.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/* Weights a layer loses at sparsity s (Granularity.removed_units x unit_size). */
function removedWeights(layer, s) {
  if (!(s > 0)) return 0;
  const units = layer.fixed ? layer.fixed[1] : pyRound(s * layer.units);
  return units * layer.unit_size;
}

/* Accountant.totals for an unstructured or fixed-pattern schedule: integer counts, FLOPs in BigInt as Python's
   int arithmetic. */
function totals(facts, values) {
  let removed = 0, kept = 0, flopsKept = 0n;
  for (const layer of facts.layers) {
    const r = removedWeights(layer, values[layer.name] || 0);
    removed += r;
    kept += layer.params - r;
    flopsKept += BigInt(layer.flops) * BigInt(layer.params - r) / BigInt(layer.params);
  }
  const flops = Number(flopsKept);
  return {weights_removed: removed, params_kept: kept, flops_kept: flops,
          global_sparsity: removed / Math.max(facts.weights, 1), params_kept_fraction: kept / Math.max(facts.weights, 1),
          flops_kept_fraction: flops / Math.max(facts.flops, 1)};
}

/* numpy.interp(x, xp, fp) as numpy computes it. */
function interp(x, xp, fp) {
  const n = xp.length;
  if (x < xp[0]) return fp[0];
  if (x > xp[n - 1]) return fp[n - 1];
  if (x === xp[n - 1]) return fp[n - 1];
  let j = 0;
  while (j < n - 1 && xp[j + 1] <= x) j++;
  if (x === xp[j]) return fp[j];
  const slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
  let out = slope * (x - xp[j]) + fp[j];
  if (Number.isNaN(out)) {
    out = slope * (x - xp[j + 1]) + fp[j + 1];
    if (Number.isNaN(out) && fp[j] === fp[j + 1]) out = fp[j];
  }
  return out;
}

function num(v) { return v === null || v === undefined ? NaN : v; }

/* Curve._read: linear between measured sparsities, past the last one towards full_drop at 1. */
function curveRead(curve, key, s) {
  const values = curve[key].map(num), xs = curve.sparsity, last = xs[xs.length - 1];
  if (s <= last) return interp(s, xs, values);
  const v = values[values.length - 1];
  return v + (curve.full_drop - v) * (s - last) / Math.max(1.0 - last, TINY);
}

function raw(p, drops) {
  if (p.model === "additive" || drops.length === 0) {
    let total = 0;
    for (const d of drops) total += d;
    return p.higher_is_better ? p.baseline - total : p.baseline + total;
  }
  const span = Math.max(p.baseline - p.floor, TINY);
  const u = drops.map(d => -Math.log(Math.max((span - d) / span, TINY)));
  let pos = 0, neg = 0;
  for (const x of u) if (x > 0) pos += x ** p.power;
  for (const x of u) if (x < 0) neg += x;
  const totalU = pos ** (1.0 / p.power) + neg;
  return p.floor + span * Math.exp(-Math.max(totalU, -50.0));
}

function clipped(p, v) {
  return p.bounded ? Math.min(Math.max(v, p.chance === null ? -Infinity : p.chance), 1.0) : v;
}

/* Predictor.prediction: the value and its band (NaN ends where the profile has no intervals). ``order`` lists
   the layers in the schedule's order (the sums run in it). */
function prediction(facts, values, order) {
  const p = facts.predictor, byName = {};
  for (const layer of facts.layers) byName[layer.name] = layer;
  const drops = [], lows = [], highs = [];
  for (const name of order) {
    const s = values[name] || 0;
    if (!(s > 0)) continue;
    const curve = byName[name].curve;
    drops.push(curveRead(curve, "counted", s));
    lows.push(curveRead(curve, "lo", s));
    highs.push(curveRead(curve, "hi", s));
  }
  let value = clipped(p, raw(p, drops));
  value = p.higher_is_better ? Math.min(value, p.baseline) : Math.max(value, p.baseline);
  let band = [clipped(p, raw(p, lows)), clipped(p, raw(p, highs))].sort((a, b) => a - b);
  if (![...lows, ...highs].every(Number.isFinite)) band = [NaN, NaN];
  return {value: value, lo: band[0], hi: band[1], dense: p.baseline, pruned: drops.length};
}

if (typeof module !== "undefined") module.exports = {pyRound, fixed, signed, grouped, totals, prediction, interp};
