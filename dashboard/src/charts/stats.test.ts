import { describe, expect, it } from 'vitest';

import type { HistogramBucket, LiveStats, RouteStats } from '../types';
import { histogramQuantile, isApiRoute, subtractBuckets, sumBuckets, summarizeLive } from './stats';

// Cumulative buckets: 10 requests <= 10 ms, 20 <= 50 ms, 20 in all (+Inf).
const BUCKETS: HistogramBucket[] = [
  { le: 0.01, count: 10 },
  { le: 0.05, count: 20 },
  { le: null, count: 20 },
];

function route(name: string, ok: number, buckets: HistogramBucket[], errors = 0): RouteStats {
  const requests: Record<string, number> = { '200': ok };
  if (errors) requests['500'] = errors;
  return { route: name, requests, latency_count: ok + errors, latency_sum: 0, buckets };
}

function sample(now: string, routes: RouteStats[], cache: Record<string, number> = { hit: 0, miss: 0 }, replica = 'r1'): LiveStats {
  return {
    replica,
    started_at: '2026-11-28T00:00:00Z',
    now,
    model_version: 3,
    routes,
    cache,
    predictions: {},
    rate_limited: 0,
  };
}

describe('histogramQuantile', () => {
  it('interpolates inside the bucket the rank falls in', () => {
    expect(histogramQuantile(0.5, BUCKETS)).toBeCloseTo(0.01);
    expect(histogramQuantile(0.25, BUCKETS)).toBeCloseTo(0.005);
    expect(histogramQuantile(0.75, BUCKETS)).toBeCloseTo(0.03);
  });

  it('answers the largest finite bound for ranks in the +Inf bucket', () => {
    const slow = [{ le: 0.1, count: 1 }, { le: null, count: 10 }];
    expect(histogramQuantile(0.99, slow)).toBe(0.1);
  });

  it('is null without observations and ignores bucket order', () => {
    expect(histogramQuantile(0.5, [{ le: 0.1, count: 0 }, { le: null, count: 0 }])).toBeNull();
    expect(histogramQuantile(0.5, [...BUCKETS].reverse())).toBeCloseTo(0.01);
  });
});

describe('bucket arithmetic', () => {
  it('subtracts the previous sample bucket by bucket, never below zero', () => {
    const later = [{ le: 0.01, count: 15 }, { le: null, count: 30 }];
    const earlier = [{ le: 0.01, count: 10 }, { le: null, count: 40 }];
    expect(subtractBuckets(later, earlier)).toEqual([{ le: 0.01, count: 5 }, { le: null, count: 0 }]);
  });

  it('sums histograms of several routes', () => {
    expect(sumBuckets([BUCKETS, BUCKETS])).toEqual([
      { le: 0.01, count: 20 },
      { le: 0.05, count: 40 },
      { le: null, count: 40 },
    ]);
  });
});

describe('isApiRoute', () => {
  it('leaves out probes, metrics, the dashboard and its static files', () => {
    expect(isApiRoute('/v1/predict')).toBe(true);
    expect(isApiRoute('/v1/oauth/token')).toBe(true);
    for (const r of ['/metrics', '/readyz', '/v1/healthz', '/v1/dashboard/live', '/ui/{path:path}', 'unmatched']) {
      expect(isApiRoute(r)).toBe(false);
    }
  });
});

describe('summarizeLive', () => {
  const first = sample('2026-11-28T00:00:10Z', [route('/v1/predict', 10, BUCKETS.map((b) => ({ ...b, count: b.count / 2 })))], {
    hit: 2,
    miss: 8,
  });
  const second = sample(
    '2026-11-28T00:00:20Z',
    [route('/v1/predict', 30, BUCKETS, 2), route('/v1/dashboard/live', 5, BUCKETS)],
    { hit: 12, miss: 8 },
  );

  it('gives rates and window percentiles between two samples of one replica', () => {
    const summary = summarizeLive(first, second);
    expect(summary.window).toBe(10);
    // 20 more /v1/predict answers and 2 errors in 10 s; the dashboard's polls do not count.
    expect(summary.requests).toBe(22);
    expect(summary.requestRate).toBeCloseTo(2.2);
    expect(summary.errors).toBe(2);
    expect(summary.latencyScope).toBe('window');
    expect(summary.p50).toBeCloseTo(0.01);
    // 10 lookups in the window, all hits.
    expect(summary.cacheHitRatio).toBe(1);
    expect(summary.cacheScope).toBe('window');
    expect(summary.routes[0]?.route).toBe('/v1/predict');
    expect(summary.routes[0]?.rate).toBeCloseTo(2.2);
  });

  it('falls back to figures since start for a first sample or another replica', () => {
    for (const previous of [null, { ...first, replica: 'r2' }, { ...first, started_at: '2026-11-28T00:00:05Z' }]) {
      const summary = summarizeLive(previous, second);
      expect(summary.window).toBeNull();
      expect(summary.requestRate).toBeNull();
      expect(summary.latencyScope).toBe('since start');
      expect(summary.cacheHitRatio).toBeCloseTo(12 / 20);
      expect(summary.cacheScope).toBe('since start');
    }
  });

  it('keeps percentiles since start when the window saw no API request', () => {
    const idle = sample('2026-11-28T00:00:30Z', second.routes, second.cache);
    const summary = summarizeLive(second, idle);
    expect(summary.requestRate).toBe(0);
    expect(summary.latencyScope).toBe('since start');
    expect(summary.p50).toBeCloseTo(0.01);
    expect(summary.cacheScope).toBe('since start');
  });
});
