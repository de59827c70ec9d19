import Alert from '@mui/material/Alert';
import AlertTitle from '@mui/material/AlertTitle';
import Box from '@mui/material/Box';
import Chip from '@mui/material/Chip';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import TextField from '@mui/material/TextField';
import { useEffect, useState } from 'react';

import { LineChart } from '../charts/Charts';
import { fixed } from '../charts/geometry';
import { Heading, Loading, Problem, Section, Stat, Stats, ScrollRegion } from '../components/Common';
import { useAppDispatch, useAppSelector } from '../hooks';
import { fetchDrift } from '../store/data';
import type { DriftHistory, DriftPoint } from '../types';

export const STATISTICS = {
  psi: 'PSI',
  js_distance: 'Jensen-Shannon distance',
} as const;
export type Statistic = keyof typeof STATISTICS;

/** One feature's statistic over the runs, as chart points (runs without a value are skipped). */
export function driftSeries(history: DriftHistory | null, feature: string, statistic: Statistic) {
  const series = history?.features.find((f) => f.feature === feature);
  return (series?.points ?? [])
    .filter((p): p is DriftPoint & Record<Statistic, number> => p[statistic] !== null)
    .map((p) => ({ x: Date.parse(p.run_at), y: p[statistic] }));
}

/** The latest run's row of every feature, drifted ones first. */
export function latestRows(history: DriftHistory | null) {
  const run = history?.runs[0];
  if (!history || !run) return [];
  const order: Record<string, number> = { drift: 0, insufficient_data: 1, ok: 2 };
  return history.features
    .map((f) => ({ feature: f.feature, kind: f.kind, point: f.points.find((p) => p.run_id === run.run_id) }))
    .filter((r): r is { feature: string; kind: string; point: DriftPoint } => r.point !== undefined)
    .sort((a, b) => (order[a.point.status] ?? 3) - (order[b.point.status] ?? 3) || a.feature.localeCompare(b.feature));
}

function StatusChip({ status }: { status: string }) {
  if (status === 'drift') return <Chip size="small" color="error" label="drift" />;
  if (status === 'insufficient_data') return <Chip size="small" variant="outlined" label="too few rows" />;
  return <Chip size="small" variant="outlined" color="success" label="ok" />;
}

export default function DriftPage() {
  const dispatch = useAppDispatch();
  const { data, status, error } = useAppSelector((s) => s.drift);
  const [feature, setFeature] = useState('');
  const [statistic, setStatistic] = useState<Statistic>('psi');

  useEffect(() => {
    const request = dispatch(fetchDrift(30));
    return () => request.abort();
  }, [dispatch]);

  const rows = latestRows(data);
  const chosen = feature || rows[0]?.feature || '';
  const points = driftSeries(data, chosen, statistic);
  const run = data?.runs[0];
  return (
    <>
      <Heading sub="The serving version's training sample against recent predictions (churn drift), per feature and run.">Drift</Heading>
      {status === 'loading' && <Loading label="Loading drift runs" />}
      <Problem error={error} what="The drift runs" />
      {data && !run && <Alert severity="info">No drift run yet: run the drift job (churn drift).</Alert>}
      {run && (
        <>
          <Stats>
            <Stat label="Latest run" value={new Date(run.run_at).toLocaleString('en')} />
            <Stat label="Runs shown" value={data?.runs.length} />
            <Stat label="Predictions in window" value={run.n_current.toLocaleString('en')} />
            <Stat label="Drifted features" value={run.drifted.length} testId="stat-drifted" />
          </Stats>
          <Section title="Statistics over time" testId="drift-over-time">
            <Box sx={{ display: 'flex', gap: 2, flexWrap: 'wrap' }}>
              <TextField
                id="drift-feature"
                select
                label="Feature"
                size="small"
                value={chosen}
                onChange={(e) => setFeature(e.target.value)}
                slotProps={{ select: { native: true }, inputLabel: { shrink: true } }}
                sx={{ minWidth: 200, mb: 2 }}
              >
                {data?.features.map((f) => (
                  <option key={f.feature} value={f.feature}>
                    {f.feature}
                  </option>
                ))}
              </TextField>
              <TextField
                id="drift-statistic"
                select
                label="Statistic"
                size="small"
                value={statistic}
                onChange={(e) => setStatistic(e.target.value as Statistic)}
                slotProps={{ select: { native: true }, inputLabel: { shrink: true } }}
                sx={{ minWidth: 200, mb: 2 }}
              >
                {Object.entries(STATISTICS).map(([key, label]) => (
                  <option key={key} value={key}>
                    {label}
                  </option>
                ))}
              </TextField>
            </Box>
            <LineChart
              title={`${STATISTICS[statistic]} of ${chosen} by run`}
              description={`${STATISTICS[statistic]} of ${chosen} between the training sample and each run's window, over ${points.length} runs.`}
              testId="drift-chart"
              series={[{ name: STATISTICS[statistic], points, markers: true, className: 'drift' }]}
              time
              xLabel="run"
              yLabel={STATISTICS[statistic]}
              yDomain={[0, Math.max(0.25, ...points.map((p) => p.y)) * 1.1]}
            />
          </Section>
          <Section title="Latest run by feature">
            <ScrollRegion label="Drift by feature table">
              <Table size="small" aria-label="Drift of each feature in the latest run" data-testid="drift-table">
                <TableHead>
                  <TableRow>
                    <TableCell>Feature</TableCell>
                    <TableCell>PSI</TableCell>
                    <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>JS distance</TableCell>
                    <TableCell sx={{ display: { xs: 'none', md: 'table-cell' } }}>p-value</TableCell>
                    <TableCell>Status</TableCell>
                  </TableRow>
                </TableHead>
                <TableBody>
                  {rows.map(({ feature: name, point }) => (
                    <TableRow key={name}>
                      <TableCell sx={{ wordBreak: 'break-word' }}>{name}</TableCell>
                      <TableCell>{fixed(point.psi)}</TableCell>
                      <TableCell sx={{ display: { xs: 'none', sm: 'table-cell' } }}>{fixed(point.js_distance)}</TableCell>
                      <TableCell sx={{ display: { xs: 'none', md: 'table-cell' } }}>
                        {fixed(point.ks_pvalue ?? point.chi2_pvalue, 4)}
                      </TableCell>
                      <TableCell>
                        <StatusChip status={point.status} />
                      </TableCell>
                    </TableRow>
                  ))}
                </TableBody>
              </Table>
            </ScrollRegion>
          </Section>
        </>
      )}
      {data && (
        <Section title="Alerts raised" testId="drift-alerts">
          {data.alerts.length === 0 && <Alert severity="success">No drift alert in these runs.</Alert>}
          {data.alerts.slice(0, 20).map((alert) => (
            <Alert key={`${alert.run_id}-${alert.feature}`} severity="warning" sx={{ mb: 1 }}>
              <AlertTitle>
                {alert.kind === 'score' ? 'Drift on the score' : `Drift on ${alert.feature}`} (v{alert.model_version})
              </AlertTitle>
              {new Date(alert.run_at).toLocaleString('en')}: {alert.reasons.join('; ') || 'drifted'}
            </Alert>
          ))}
        </Section>
      )}
    </>
  );
}
