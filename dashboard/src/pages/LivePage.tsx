import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import Typography from '@mui/material/Typography';
import { useEffect } from 'react';

import { LineChart } from '../charts/Charts';
import { fixed, millis, percent } from '../charts/geometry';
import { Grid2, Heading, Loading, Problem, Section, Stat, Stats, ScrollRegion } from '../components/Common';
import { useAppDispatch, useAppSelector } from '../hooks';
import { fetchLive } from '../store/live';

export const POLL_MS = 2000;

function uptime(startedAt: string, now: string): string {
  const seconds = Math.max(0, (Date.parse(now) - Date.parse(startedAt)) / 1000);
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export default function LivePage() {
  const dispatch = useAppDispatch();
  const { summary, history, status, error, samples } = useAppSelector((s) => s.live);

  // Poll while the page is open; a slow answer is abandoned when the next poll starts.
  useEffect(() => {
    let request = dispatch(fetchLive());
    const timer = window.setInterval(() => {
      request.abort();
      request = dispatch(fetchLive());
    }, POLL_MS);
    return () => {
      window.clearInterval(timer);
      request.abort();
    };
  }, [dispatch]);

  const sample = summary ? samples[summary.replica] : undefined;
  const rate = history.map((p) => ({ x: p.at, y: p.rate }));
  const latency = history.filter((p) => p.p95 !== null).map((p) => ({ x: p.at, y: (p.p95 ?? 0) * 1000 }));
  return (
    <>
      <Heading sub={`Polled every ${POLL_MS / 1000} s. Each answer is one replica's own counters; API traffic leaves out the dashboard's own calls and probes.`}>
        Live serving
      </Heading>
      {status === 'loading' && <Loading label="Loading serving statistics" />}
      <Problem error={error} what="The serving statistics" />
      {summary && sample && (
        <>
          <Stats>
            <Stat label="Request rate" value={summary.requestRate === null ? 'measuring…' : `${fixed(summary.requestRate, 2)} req/s`} testId="stat-rate" />
            <Stat label={`Latency p50 (${summary.latencyScope})`} value={millis(summary.p50)} testId="stat-p50" />
            <Stat label={`Latency p95 (${summary.latencyScope})`} value={millis(summary.p95)} testId="stat-p95" />
            <Stat label={`Latency p99 (${summary.latencyScope})`} value={millis(summary.p99)} />
            <Stat
              label={`Cache hit ratio (${summary.cacheScope})`}
              value={`${percent(summary.cacheHitRatio)} of ${summary.cacheLookups.toLocaleString('en')}`}
              testId="stat-cache"
            />
            <Stat label="Model version" value={`v${sample.model_version}`} />
          </Stats>
          <Typography variant="body2" color="text.secondary" sx={{ mb: 2 }} data-testid="live-scope">
            Replica {summary.replica}, up {uptime(sample.started_at, sample.now)};{' '}
            {summary.window === null
              ? 'figures since the replica started (a rate needs a second sample of the same replica).'
              : `figures over the last ${summary.window.toFixed(1)} s.`}
          </Typography>
          <Grid2>
            <Section title="Request rate" testId="rate-section">
              <LineChart
                title="API requests per second"
                description={`API requests per second over the last ${rate.length} polls.`}
                testId="rate-chart"
                series={[{ name: 'requests/s', points: rate, markers: rate.length < 2, className: 'rate' }]}
                time
                xLabel="time"
                yLabel="requests/s"
                yDomain={[0, Math.max(1, ...rate.map((p) => p.y)) * 1.1]}
                xFormat={(v) => new Date(v).toLocaleTimeString('en', { hour12: false })}
              />
            </Section>
            <Section title="Latency p95" testId="latency-section">
              {latency.length === 0 && (
                <Typography variant="body2" sx={{ mb: 1 }}>
                  No API request between polls yet.
                </Typography>
              )}
              <LineChart
                title="95th percentile latency (ms)"
                description={`95th percentile API latency in milliseconds over the last ${latency.length} polls.`}
                testId="latency-chart"
                series={[{ name: 'p95 ms', points: latency, markers: latency.length < 2, color: '#c62828', className: 'latency' }]}
                time
                xLabel="time"
                yLabel="ms"
                yDomain={[0, Math.max(5, ...latency.map((p) => p.y)) * 1.1]}
                xFormat={(v) => new Date(v).toLocaleTimeString('en', { hour12: false })}
              />
            </Section>
          </Grid2>
          <Section title="By route">
            <ScrollRegion label="Routes table">
              <Table size="small" aria-label="Requests and latency by route" data-testid="routes-table">
                <TableHead>
                  <TableRow>
                    <TableCell>Route</TableCell>
                    <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>Since start</TableCell>
                    <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>In window</TableCell>
                    <TableCell>Rate (/s)</TableCell>
                    <TableCell>p50</TableCell>
                    <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>p95</TableCell>
                    <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>p99</TableCell>
                    <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>5xx</TableCell>
                  </TableRow>
                </TableHead>
                <TableBody>
                  {summary.routes.filter((r) => r.total > 0).map((r) => (
                    <TableRow key={r.route}>
                      <TableCell sx={{ overflowWrap: 'anywhere' }}>{r.route}</TableCell>
                      <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>{r.total}</TableCell>
                      <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>{r.requests}</TableCell>
                      <TableCell>{r.rate === null ? '–' : fixed(r.rate, 2)}</TableCell>
                      <TableCell>{millis(r.p50)}</TableCell>
                      <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>{millis(r.p95)}</TableCell>
                      <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>{millis(r.p99)}</TableCell>
                      <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>{r.errors}</TableCell>
                    </TableRow>
                  ))}
                </TableBody>
              </Table>
            </ScrollRegion>
          </Section>
        </>
      )}
    </>
  );
}
