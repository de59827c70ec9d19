import { describe, expect, it } from 'vitest';

import {
  columnBars,
  divergingBars,
  fixed,
  horizontalBars,
  linePath,
  millis,
  paddedDomain,
  percent,
  zipCurve,
} from './geometry';

describe('linePath', () => {
  it('maps data to pixels with y pointing down', () => {
    expect(linePath([{ x: 0, y: 0 }, { x: 1, y: 1 }], [0, 1], [0, 1], 100, 50)).toBe('M0,50L100,0');
  });

  it('breaks the line at missing values', () => {
    const path = linePath([{ x: 0, y: 0 }, { x: 0.5, y: NaN }, { x: 1, y: 1 }], [0, 1], [0, 1], 100, 50);
    expect(path).toBe('M0,50ZM100,0Z');
  });
});

describe('zipCurve and paddedDomain', () => {
  it('pairs the shorter of two arrays', () => {
    expect(zipCurve([0, 0.5, 1], [0, 0.8])).toEqual([{ x: 0, y: 0 }, { x: 0.5, y: 0.8 }]);
  });

  it('pads a range, widens a single value and falls back when empty', () => {
    expect(paddedDomain([0, 10], [0, 1], 0.1)).toEqual([-1, 11]);
    expect(paddedDomain([5])).toEqual([2.5, 7.5]);
    expect(paddedDomain([1000], [0, 1], 0, 60)).toEqual([940, 1060]);
    expect(paddedDomain([], [0, 1])).toEqual([0, 1]);
    expect(paddedDomain([NaN, Infinity], [3, 4])).toEqual([3, 4]);
  });
});

describe('horizontalBars', () => {
  it('puts the largest first and scales it to the full width', () => {
    const bars = horizontalBars([['a', 1], ['b', 4], ['c', 2]], 200);
    expect(bars.map((b) => b.key)).toEqual(['b', 'c', 'a']);
    expect(bars[0]?.width).toBe(200);
    expect(bars[1]?.width).toBe(100);
    expect(bars[0]!.y).toBeLessThan(bars[1]!.y);
  });

  it('keeps at most ``limit`` bars and draws nothing below zero', () => {
    const entries: [string, number][] = Array.from({ length: 30 }, (_, i) => [`f${i}`, i - 1]);
    const bars = horizontalBars(entries, 100, 20, 20);
    expect(bars).toHaveLength(20);
    expect(bars.every((b) => b.width >= 0)).toBe(true);
  });
});

describe('divergingBars', () => {
  it('draws pushes toward churn right of zero and toward staying left of it', () => {
    const { bars, zero, domain } = divergingBars(
      [
        { feature: 'fee', contribution: 0.5 },
        { feature: 'tenure', contribution: -1 },
      ],
      200,
    );
    expect(domain).toEqual([-1, 1]);
    expect(zero).toBe(100);
    expect(bars.map((b) => b.key)).toEqual(['tenure', 'fee']); // largest push first
    const [tenure, fee] = bars;
    expect(tenure).toMatchObject({ positive: false, x: 0, width: 100 });
    expect(fee).toMatchObject({ positive: true, x: 100, width: 50 });
  });
});

describe('columnBars', () => {
  it('stands bars on the baseline with heights proportional to values', () => {
    const bars = columnBars([{ key: '1', value: 2 }, { key: '2', value: 1 }], 100, 80, 4);
    expect(bars[0]!.height).toBe(40);
    expect(bars[1]!.height).toBe(20);
    expect(bars[0]!.y + bars[0]!.height).toBe(80);
    expect(bars[0]!.x).toBeLessThan(bars[1]!.x);
  });
});

describe('formatting', () => {
  it('writes percentages, fixed decimals and milliseconds, with a dash for missing', () => {
    expect(percent(0.1234)).toBe('12.3%');
    expect(percent(null)).toBe('–');
    expect(fixed(0.81234)).toBe('0.812');
    expect(fixed(undefined)).toBe('–');
    expect(millis(0.0123)).toBe('12.3 ms');
    expect(millis(0.0012)).toBe('1.20 ms');
    expect(millis(null)).toBe('–');
  });
});
