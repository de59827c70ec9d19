import Alert from '@mui/material/Alert';
import Button from '@mui/material/Button';
import Chip from '@mui/material/Chip';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import Typography from '@mui/material/Typography';
import { useEffect } from 'react';

import { DivergingBarChart, LineChart } from '../charts/Charts';
import { percent } from '../charts/geometry';
import { Grid2, Heading, Loading, Problem, Section, Stat, Stats, ScrollRegion } from '../components/Common';
import { useAppDispatch, useAppSelector, useNavigate } from '../hooks';
import { fetchCustomer } from '../store/data';
import type { CustomerDetail } from '../types';
import { ReasonList } from './CustomersPage';

function formatValue(value: number | boolean | string | null): string {
  if (value === null) return 'missing';
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : value.toFixed(3);
  return String(value);
}

/** Every feature's push on one customer's score, as a chart (shared with the importance page). */
export function CustomerExplanation({ detail }: { detail: CustomerDetail }) {
  if (detail.contributions.length === 0) {
    return <Alert severity="info">The features this score was computed from are no longer in the gold table.</Alert>;
  }
  const top = detail.contributions[0];
  return (
    <>
      <DivergingBarChart
        title={`Why ${detail.customer_id}: each feature's push (SHAP, log-odds)`}
        description={`Exact SHAP contributions of all ${detail.contributions.length} features for customer ${detail.customer_id}, explained by model version ${detail.explained_by}. The largest is ${top?.feature} at ${top?.contribution.toFixed(3)}.`}
        reasons={detail.contributions}
        testId="contributions-chart"
      />
      <Typography variant="caption" color="text.secondary" component="p" sx={{ mt: 1 }}>
        Explained by v{detail.explained_by}: base {detail.base_value?.toFixed(3)} log-odds, probability{' '}
        {percent(detail.explained_probability)}.
      </Typography>
    </>
  );
}

export default function CustomerPage({ id }: { id: string }) {
  const dispatch = useAppDispatch();
  const navigate = useNavigate();
  const { data, status, error, id: loaded } = useAppSelector((s) => s.customer);

  useEffect(() => {
    const request = dispatch(fetchCustomer(id));
    return () => request.abort();
  }, [id, dispatch]);

  const detail = loaded === id ? data : null;
  const score = detail?.score;
  return (
    <>
      <Button size="small" sx={{ mb: 1 }} onClick={() => navigate({ page: 'customers' })}>
        ← Back to customers
      </Button>
      <Heading sub={score ? `Snapshot ${score.snapshot_date}, model v${score.model_version}` : undefined}>Customer {id}</Heading>
      {status === 'loading' && <Loading label="Loading the customer" />}
      {loaded === id && <Problem error={error} what="This customer" />}
      {detail && score && (
        <>
          <Stats>
            <Stat label="Churn probability" value={percent(score.probability)} testId="customer-probability" />
            <Stat
              label="Label"
              value={score.churn ? <Chip color="error" label="churn" /> : <Chip variant="outlined" label="stays" />}
            />
            <Stat label="Threshold" value={score.threshold === null ? '–' : percent(score.threshold)} />
            <Stat label="Scored" value={score.scored_at ? new Date(score.scored_at).toLocaleString('en') : '–'} />
          </Stats>
          <Section title="Top reasons">
            <ReasonList reasons={score.reasons} limit={10} />
          </Section>
          <Grid2>
            <Section title="Feature importance for this customer" testId="customer-importance">
              <CustomerExplanation detail={detail} />
            </Section>
            <Section title="Score history">
              <LineChart
                title="Churn probability by snapshot"
                description={`The customer's batch scores over ${detail.history.length} snapshots.`}
                testId="history-chart"
                series={[
                  {
                    name: 'probability',
                    markers: true,
                    points: detail.history.map((h) => ({ x: Date.parse(h.snapshot_date), y: h.probability })),
                  },
                ]}
                time
                flatX={86_400_000}
                xTicks={Math.max(1, Math.min(6, detail.history.length))}
                xLabel="snapshot"
                yLabel="probability"
                yDomain={[0, 1]}
                xFormat={(v) => new Date(v).toISOString().slice(0, 10)}
                yFormat={(v) => `${Math.round(v * 100)}%`}
              />
            </Section>
          </Grid2>
          <Section title="Features at the snapshot">
            <ScrollRegion label="Feature values table">
              <Table size="small" aria-label="Feature values">
                <TableHead>
                  <TableRow>
                    <TableCell>Feature</TableCell>
                    <TableCell>Value</TableCell>
                  </TableRow>
                </TableHead>
                <TableBody>
                  {Object.entries(detail.features).map(([name, value]) => (
                    <TableRow key={name}>
                      <TableCell>{name}</TableCell>
                      <TableCell>{formatValue(value)}</TableCell>
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
