// Live-serving arithmetic over a replica's Prometheus counters: request rates between two
// samples, latency percentiles from histogram buckets, cache hit ratio.

import type { HistogramBucket, LiveStats, RouteStats } from '../types';

/** Routes that are not API traffic: probes, metrics, docs, the dashboard and its own polling. */
export function isApiRoute(route: string): boolean {
  if (route.startsWith('/v1/dashboard') || route.startsWith('/ui')) return false;
  const ignored = ['/healthz', '/readyz', '/metrics', '/v1/healthz', '/v1/readyz', '/v1/metrics'];
  return !ignored.includes(route) && !['/docs', '/openapi.json', 'unmatched'].includes(route);
}

/**
 * The q-quantile (0..1) of a cumulative histogram, interpolating linearly inside the bucket
 * where it falls (what Prometheus's histogram_quantile does). Null when it holds no
 * observation; an answer in the +Inf bucket is the largest finite bound.
 */
export function histogramQuantile(q: number, buckets: HistogramBucket[]): number | null {
  const sorted = [...buckets].sort((a, b) => (a.le ?? Infinity) - (b.le ?? Infinity));
  const last = sorted[sorted.length - 1];
  const total = last?.count ?? 0;
  if (total <= 0) return null;
  const rank = Math.min(Math.max(q, 0), 1) * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const bucket of sorted) {
    if (bucket.count >= rank && bucket.count > lowerCount) {
      if (bucket.le === null) return lowerBound;
      const share = (rank - lowerCount) / (bucket.count - lowerCount);
      return lowerBound + (bucket.le - lowerBound) * share;
    }
    if (bucket.le !== null) lowerBound = bucket.le;
    lowerCount = bucket.count;
  }
  return lowerBound;
}

function bucketKey(bucket: HistogramBucket): string {
  return bucket.le === null ? '+Inf' : String(bucket.le);
}

/** Bucket-wise sum of histograms (the same bounds on every route). */
export function sumBuckets(histograms: HistogramBucket[][]): HistogramBucket[] {
  const sums = new Map<string, HistogramBucket>();
  for (const histogram of histograms) {
    for (const bucket of histogram) {
      const key = bucketKey(bucket);
      const found = sums.get(key);
      if (found) found.count += bucket.count;
      else sums.set(key, { le: bucket.le, count: bucket.count });
    }
  }
  return [...sums.values()].sort((a, b) => (a.le ?? Infinity) - (b.le ?? Infinity));
}

/** ``current - previous`` bucket by bucket: the observations between two samples. */
export function subtractBuckets(
  current: HistogramBucket[],
  previous: HistogramBucket[],
): HistogramBucket[] {
  const before = new Map(previous.map((b) => [bucketKey(b), b.count]));
  return current.map((b) => ({ le: b.le, count: Math.max(0, b.count - (before.get(bucketKey(b)) ?? 0)) }));
}

function requestCount(route: RouteStats | undefined): number {
  if (!route) return 0;
  return Object.values(route.requests).reduce((a, b) => a + b, 0);
}

function errorCount(route: RouteStats | undefined): number {
  if (!route) return 0;
  return Object.entries(route.requests)
    .filter(([status]) => status.startsWith('5'))
    .reduce((a, [, n]) => a + n, 0);
}

export interface RouteSummary {
  route: string;
  total: number; // since the replica started
  requests: number; // in the window (the total when there is no window)
  rate: number | null; // requests per second between the two samples
  errors: number;
  p50: number | null; // seconds
  p95: number | null;
  p99: number | null;
}

export interface LiveSummary {
  replica: string;
  at: number; // epoch ms of the sample
  // Seconds between the two samples of this replica; null for a first sample (cumulative).
  window: number | null;
  requestRate: number | null;
  requests: number;
  errors: number;
  p50: number | null;
  p95: number | null;
  p99: number | null;
  // What the percentiles and the hit ratio cover: the window, or (no API request or cache
  // lookup in it) everything since the replica started.
  latencyScope: 'window' | 'since start';
  cacheScope: 'window' | 'since start';
  cacheHitRatio: number | null;
  cacheLookups: number;
  routes: RouteSummary[];
}

function total(buckets: HistogramBucket[]): number {
  return buckets.reduce((largest, b) => Math.max(largest, b.count), 0);
}

/**
 * What the live page shows for ``current``. With a ``previous`` sample of the same replica
 * (and no restart in between), rates and percentiles cover the time between the two samples;
 * otherwise rates are unknown. Percentiles and the hit ratio fall back to everything since the
 * replica started when the window saw no API request (or no cache lookup).
 */
export function summarizeLive(previous: LiveStats | null, current: LiveStats): LiveSummary {
  const at = Date.parse(current.now);
  const comparable =
    previous !== null &&
    previous.replica === current.replica &&
    previous.started_at === current.started_at &&
    Date.parse(previous.now) < at;
  const window = comparable ? (at - Date.parse(previous.now)) / 1000 : null;
  const before = new Map((comparable ? previous.routes : []).map((r) => [r.route, r]));
  const windowed = (route: RouteStats) => {
    const prior = before.get(route.route);
    return prior ? subtractBuckets(route.buckets, prior.buckets) : route.buckets;
  };

  const routes: RouteSummary[] = current.routes.map((route) => {
    const prior = before.get(route.route);
    const requests = requestCount(route) - requestCount(prior);
    let buckets = windowed(route);
    if (total(buckets) === 0) buckets = route.buckets;
    return {
      route: route.route,
      total: requestCount(route),
      requests,
      rate: window ? requests / window : null,
      errors: errorCount(route) - errorCount(prior),
      p50: histogramQuantile(0.5, buckets),
      p95: histogramQuantile(0.95, buckets),
      p99: histogramQuantile(0.99, buckets),
    };
  });
  const api = current.routes.filter((r) => isApiRoute(r.route));
  let apiBuckets = sumBuckets(api.map(windowed));
  let latencyScope: LiveSummary['latencyScope'] = 'window';
  if (total(apiBuckets) === 0 || window === null) {
    apiBuckets = sumBuckets(api.map((r) => r.buckets));
    latencyScope = 'since start';
  }
  const apiRoutes = routes.filter((r) => isApiRoute(r.route));
  const requests = apiRoutes.reduce((a, r) => a + r.requests, 0);
  let hits = (current.cache.hit ?? 0) - (comparable ? (previous.cache.hit ?? 0) : 0);
  let misses = (current.cache.miss ?? 0) - (comparable ? (previous.cache.miss ?? 0) : 0);
  let cacheScope: LiveSummary['cacheScope'] = window === null ? 'since start' : 'window';
  if (hits + misses === 0) {
    hits = current.cache.hit ?? 0;
    misses = current.cache.miss ?? 0;
    cacheScope = 'since start';
  }
  return {
    replica: current.replica,
    at,
    window,
    requestRate: window ? requests / window : null,
    requests,
    errors: apiRoutes.reduce((a, r) => a + r.errors, 0),
    p50: histogramQuantile(0.5, apiBuckets),
    p95: histogramQuantile(0.95, apiBuckets),
    p99: histogramQuantile(0.99, apiBuckets),
    latencyScope,
    cacheScope,
    cacheHitRatio: hits + misses > 0 ? hits / (hits + misses) : null,
    cacheLookups: hits + misses,
    routes: routes.sort(
      (a, b) => b.requests - a.requests || b.total - a.total || a.route.localeCompare(b.route),
    ),
  };
}
