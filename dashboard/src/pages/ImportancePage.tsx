import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import TextField from '@mui/material/TextField';
import { type FormEvent, useEffect, useState } from 'react';

import { BarChart } from '../charts/Charts';
import { Heading, Loading, Problem, Section } from '../components/Common';
import { useAppDispatch, useAppSelector } from '../hooks';
import { fetchCustomer } from '../store/data';
import { fetchScores } from '../store/scores';
import { CustomerExplanation } from './CustomerPage';
import { useSelectedReport, VersionPicker } from './ModelPage';

const MEASURES: Record<string, string> = {
  shap: 'mean |SHAP| (log-odds)',
  gain: 'gain',
  cover: 'cover',
  weight: 'weight (splits)',
};

/** Picks the measure to show first: SHAP when the report has it (it is per prediction). */
export function defaultMeasure(available: string[]): string {
  return available.includes('shap') ? 'shap' : (available[0] ?? 'gain');
}

const CUSTOMER_ID = /^[A-Za-z0-9_.:-]{1,64}$/;

export default function ImportancePage() {
  const dispatch = useAppDispatch();
  const { catalog, version, report } = useSelectedReport();
  const firstScored = useAppSelector((s) => s.scores.data?.items[0]?.customer_id ?? '');
  const scores = useAppSelector((s) => s.scores);
  const customer = useAppSelector((s) => s.customer);
  const measures = Object.keys(report?.data?.importance ?? {});
  const [measure, setMeasure] = useState('');
  const [typed, setTyped] = useState('');
  const shown = measures.includes(measure) ? measure : defaultMeasure(measures);
  const values = report?.data?.importance[shown] ?? {};

  const explain = (id: string) => {
    if (CUSTOMER_ID.test(id)) void dispatch(fetchCustomer(id));
  };
  // Opened directly: ask for the customers table's first page, to offer its riskiest customer.
  useEffect(() => {
    if (scores.status === 'idle') void dispatch(fetchScores(scores.query));
  }, [scores.status, scores.query, dispatch]);
  // Start with the riskiest customer the table showed, if any.
  useEffect(() => {
    if (!typed && firstScored) {
      setTyped(firstScored);
      if (customer.id === null) explain(firstScored);
    }
  }, [firstScored]);

  const submit = (event: FormEvent) => {
    event.preventDefault();
    explain(typed.trim());
  };

  return (
    <>
      <Heading sub="Global importance of a model version, and every feature's push on one customer's score.">
        Feature importance
      </Heading>
      {catalog.status === 'loading' && <Loading label="Loading the model registry" />}
      <Problem error={catalog.error} what="The model registry" />
      <Section title="Global" testId="global-importance">
        <Box sx={{ display: 'flex', flexWrap: 'wrap', gap: 2 }}>
          <VersionPicker />
          {measures.length > 0 && (
            <TextField
              id="measure-picker"
              select
              label="Measure"
              size="small"
              value={shown}
              onChange={(e) => setMeasure(e.target.value)}
              slotProps={{ select: { native: true }, inputLabel: { shrink: true } }}
              sx={{ minWidth: 200, mb: 2 }}
            >
              {measures.map((m) => (
                <option key={m} value={m}>
                  {MEASURES[m] ?? m}
                </option>
              ))}
            </TextField>
          )}
        </Box>
        {version && !version.has_report && <Alert severity="info">This version has no evaluation report.</Alert>}
        {report?.status === 'loading' && <Loading label="Loading the evaluation report" />}
        {report && <Problem error={report.error} what="The evaluation report" />}
        {Object.keys(values).length > 0 && (
          <BarChart
            title={`Importance of v${version?.version}: ${MEASURES[shown] ?? shown}`}
            description={`The ${Math.min(20, Object.keys(values).length)} most important features of model version ${version?.version} by ${MEASURES[shown] ?? shown}, measured on its test split.`}
            entries={Object.entries(values)}
            testId="importance-chart"
          />
        )}
      </Section>
      <Section title="For one customer" testId="one-customer-importance">
        <Box component="form" onSubmit={submit} sx={{ display: 'flex', gap: 1, flexWrap: 'wrap', mb: 2 }} aria-label="Explain one customer">
          <TextField
            id="explain-customer"
            label="Customer id"
            size="small"
            value={typed}
            onChange={(e) => setTyped(e.target.value)}
            error={typed !== '' && !CUSTOMER_ID.test(typed.trim())}
          />
          <Button type="submit" variant="contained">
            Explain
          </Button>
        </Box>
        {customer.status === 'loading' && <Loading label="Loading the customer" />}
        <Problem error={customer.error} what="This customer" />
        {customer.data && customer.status === 'ready' && <CustomerExplanation detail={customer.data} />}
      </Section>
    </>
  );
}
