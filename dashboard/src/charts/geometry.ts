// Pure chart geometry built on D3's scales and shapes: the components draw what these return.

import { extent, line, max, scaleBand, scaleLinear } from 'd3';

import type { Reason } from '../types';

export interface Margin {
  top: number;
  right: number;
  bottom: number;
  left: number;
}

export interface XY {
  x: number;
  y: number;
}

/** An SVG path through the points, with linear scales over the given domains and size. */
export function linePath(
  points: XY[],
  xDomain: [number, number],
  yDomain: [number, number],
  width: number,
  height: number,
): string {
  const x = scaleLinear().domain(xDomain).range([0, width]);
  const y = scaleLinear().domain(yDomain).range([height, 0]);
  const path = line<XY>()
    .defined((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
    .x((p) => x(p.x))
    .y((p) => y(p.y))(points);
  return path ?? '';
}

/** Pairs of a curve's x and y arrays (the API sends a curve as two arrays). */
export function zipCurve(xs: number[], ys: number[]): XY[] {
  const n = Math.min(xs.length, ys.length);
  const points: XY[] = [];
  for (let i = 0; i < n; i += 1) points.push({ x: xs[i] as number, y: ys[i] as number });
  return points;
}

/**
 * The [min, max] of values padded by ``pad`` of the range; ``fallback`` when there are none.
 * A single value gets ``flat`` on either side (default: half its size), so a time axis
 * with one point can say how wide it should be (a minute, a day) instead of decades.
 */
export function paddedDomain(
  values: number[],
  fallback: [number, number] = [0, 1],
  pad = 0.05,
  flat?: number,
): [number, number] {
  const finite = values.filter(Number.isFinite);
  const [low, high] = extent(finite);
  if (low === undefined || high === undefined) return fallback;
  if (low === high) {
    const half = flat ?? Math.abs(low || 1) * 0.5;
    return [low - half, high + half];
  }
  const span = high - low;
  return [low - span * pad, high + span * pad];
}

export interface Bar {
  key: string;
  value: number;
  x: number;
  y: number;
  width: number;
  height: number;
}

/** Horizontal bars, largest first, scaled from 0 to the largest value over ``width``. */
export function horizontalBars(
  entries: [string, number][],
  width: number,
  rowHeight = 22,
  limit = 20,
): Bar[] {
  const top = [...entries].sort((a, b) => b[1] - a[1]).slice(0, limit);
  const largest = max(top, (e) => e[1]) ?? 0;
  const x = scaleLinear()
    .domain([0, largest > 0 ? largest : 1])
    .range([0, width]);
  const y = scaleBand<string>()
    .domain(top.map((e) => e[0]))
    .range([0, top.length * rowHeight])
    .padding(0.2);
  return top.map(([key, value]) => ({
    key,
    value,
    x: 0,
    y: y(key) ?? 0,
    width: Math.max(0, x(Math.max(0, value))),
    height: y.bandwidth(),
  }));
}

export interface DivergingBar extends Bar {
  positive: boolean;
}

/**
 * Bars left (negative: toward staying) and right (positive: toward churn) of a zero line,
 * largest push first; ``zero`` is the x of the line.
 */
export function divergingBars(
  reasons: Reason[],
  width: number,
  rowHeight = 22,
  limit = 20,
): { bars: DivergingBar[]; zero: number; domain: [number, number] } {
  const top = [...reasons]
    .sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution))
    .slice(0, limit);
  const largest = max(top, (r) => Math.abs(r.contribution)) ?? 0;
  const bound = largest > 0 ? largest : 1;
  const domain: [number, number] = [-bound, bound];
  const x = scaleLinear().domain(domain).range([0, width]);
  const y = scaleBand<string>()
    .domain(top.map((r) => r.feature))
    .range([0, top.length * rowHeight])
    .padding(0.2);
  const zero = x(0);
  const bars = top.map((r) => {
    const end = x(r.contribution);
    return {
      key: r.feature,
      value: r.contribution,
      positive: r.contribution > 0,
      x: Math.min(zero, end),
      y: y(r.feature) ?? 0,
      width: Math.abs(end - zero),
      height: y.bandwidth(),
    };
  });
  return { bars, zero, domain };
}

/** Vertical bars of the lift chart, one per decile, on a band scale. */
export function columnBars(
  values: { key: string; value: number }[],
  width: number,
  height: number,
  yMax: number,
): Bar[] {
  const x = scaleBand<string>()
    .domain(values.map((v) => v.key))
    .range([0, width])
    .padding(0.2);
  const y = scaleLinear()
    .domain([0, yMax > 0 ? yMax : 1])
    .range([height, 0]);
  return values.map((v) => ({
    key: v.key,
    value: v.value,
    x: x(v.key) ?? 0,
    y: y(Math.max(0, v.value)),
    width: x.bandwidth(),
    height: height - y(Math.max(0, v.value)),
  }));
}

/** ``0.1234`` -> ``"12.3%"`` (null -> an en dash). */
export function percent(value: number | null | undefined, digits = 1): string {
  return value === null || value === undefined || !Number.isFinite(value)
    ? '–'
    : `${(value * 100).toFixed(digits)}%`;
}

/** A number with a fixed count of decimals (null -> an en dash). */
export function fixed(value: number | null | undefined, digits = 3): string {
  return value === null || value === undefined || !Number.isFinite(value) ? '–' : value.toFixed(digits);
}

/** Seconds as milliseconds text: ``0.0123`` -> ``"12.3 ms"``. */
export function millis(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '–';
  const ms = seconds * 1000;
  return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
}
