import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Chip from '@mui/material/Chip';
import Link from '@mui/material/Link';
import List from '@mui/material/List';
import ListItem from '@mui/material/ListItem';
import ListItemText from '@mui/material/ListItemText';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import TextField from '@mui/material/TextField';
import { useEffect } from 'react';

import { LiftChart, LineChart } from '../charts/Charts';
import { fixed, percent, zipCurve } from '../charts/geometry';
import { Grid2, Heading, Loading, Problem, Section, Stat, Stats, ScrollRegion } from '../components/Common';
import { useAppDispatch, useAppSelector } from '../hooks';
import { fetchModels, fetchReport, versionRows, versionSelected } from '../store/data';
import type { ModelReport } from '../types';

const hideOnPhone = { display: { xs: 'none', md: 'table-cell' } };

function aliasColor(alias: string): 'primary' | 'secondary' | 'default' {
  if (alias === 'champion') return 'primary';
  if (alias === 'challenger') return 'secondary';
  return 'default';
}

/** Loads the model catalog and the selected version's report; shared with the importance page. */
export function useSelectedReport() {
  const dispatch = useAppDispatch();
  const { catalog, selected, reports } = useAppSelector((s) => s.models);
  useEffect(() => {
    if (catalog.status === 'idle') void dispatch(fetchModels());
  }, [catalog.status, dispatch]);
  const version = catalog.data?.versions.find((v) => v.version === selected);
  const report = selected === null ? undefined : reports[selected];
  useEffect(() => {
    if (version?.has_report && !report) void dispatch(fetchReport(version.version));
  }, [version, report, dispatch]);
  return { catalog, selected, version, report };
}

export function VersionPicker() {
  const dispatch = useAppDispatch();
  const { catalog, selected } = useAppSelector((s) => s.models);
  if (!catalog.data) return null;
  return (
    <TextField
      id="version-picker"
      select
      label="Model version"
      size="small"
      value={selected ?? ''}
      onChange={(e) => dispatch(versionSelected(Number(e.target.value)))}
      slotProps={{ select: { native: true }, inputLabel: { shrink: true } }}
      sx={{ minWidth: 200, mb: 2 }}
    >
      {catalog.data.versions.map((v) => (
        <option key={v.version} value={v.version}>
          v{v.version}
          {v.aliases.length ? ` (${v.aliases.join(', ')})` : ''}
        </option>
      ))}
    </TextField>
  );
}

function ReportCharts({ report }: { report: ModelReport }) {
  const m = report.metrics;
  const roc = report.roc ? zipCurve(report.roc.x, report.roc.y) : [];
  const calibration = report.calibration.map((b) => ({ x: b.mean_score, y: b.observed_rate }));
  const top = Math.min(1, Math.max(0.05, ...report.calibration.flatMap((b) => [b.mean_score, b.observed_rate])) * 1.05);
  const t = report.at_threshold;
  return (
    <>
      <Stats>
        <Stat label="ROC-AUC" value={fixed(m.roc_auc)} testId="metric-roc-auc" />
        <Stat label="PR-AUC" value={fixed(m.pr_auc)} />
        <Stat label="Log loss" value={fixed(m.log_loss)} />
        <Stat label="Brier" value={fixed(m.brier, 4)} />
        <Stat label="Calibration error (ECE)" value={fixed(m.ece, 4)} />
        <Stat label="Top-decile lift" value={fixed(m.top_decile_lift, 2)} />
      </Stats>
      <Grid2>
        <Section title="ROC curve" testId="roc-section">
          {roc.length > 0 ? (
            <LineChart
              title={`ROC, AUC ${fixed(m.roc_auc)}`}
              description={`True against false positive rate on ${report.n} test rows (${report.positives} churners); the dashed diagonal is a random ranking.`}
              testId="roc-chart"
              series={[{ name: 'ROC', points: roc, className: 'roc' }]}
              xDomain={[0, 1]}
              yDomain={[0, 1]}
              diagonal
              xLabel="false positive rate"
              yLabel="true positive rate"
            />
          ) : (
            <Alert severity="info">Undefined: the test split has one class.</Alert>
          )}
        </Section>
        <Section title="Calibration" testId="calibration-section">
          <LineChart
            title={`Reliability, ECE ${fixed(m.ece, 4)}`}
            description={`Observed churn rate against the mean score in ${report.calibration.length} equal-frequency bins; on the dashed diagonal the scores are calibrated.`}
            testId="calibration-chart"
            series={[{ name: 'observed rate', points: calibration, markers: true, className: 'calibration' }]}
            xDomain={[0, top]}
            yDomain={[0, top]}
            diagonal
            xLabel="mean score"
            yLabel="observed churn rate"
          />
        </Section>
        <Section title="Lift and capture" testId="lift-section">
          <LiftChart
            title={`Lift by decile, top ${fixed(m.top_decile_lift, 2)}`}
            description={`Churn rate of each score decile over the base rate ${percent(report.base_rate)}, and the share of all churners found down to it.`}
            testId="lift-chart"
            deciles={report.lift.map((b) => ({ decile: b.decile, lift: b.lift, capture: b.cumulative_capture }))}
          />
        </Section>
        <Section title="At the threshold">
          {t ? (
            <ScrollRegion label="Confusion matrix table">
              <Table size="small" aria-label={`Confusion matrix at threshold ${fixed(t.threshold)}`}>
                <TableHead>
                  <TableRow>
                    <TableCell>Threshold {fixed(t.threshold)}</TableCell>
                    <TableCell>Predicted churn</TableCell>
                    <TableCell>Predicted stay</TableCell>
                  </TableRow>
                </TableHead>
                <TableBody>
                  <TableRow>
                    <TableCell component="th" scope="row">
                      Churned
                    </TableCell>
                    <TableCell>{t.tp}</TableCell>
                    <TableCell>{t.fn}</TableCell>
                  </TableRow>
                  <TableRow>
                    <TableCell component="th" scope="row">
                      Stayed
                    </TableCell>
                    <TableCell>{t.fp}</TableCell>
                    <TableCell>{t.tn}</TableCell>
                  </TableRow>
                </TableBody>
              </Table>
              <Box sx={{ mt: 1 }}>
                Precision {percent(t.precision)}, recall {percent(t.recall)}, F1 {fixed(t.f1)}.
              </Box>
            </ScrollRegion>
          ) : (
            '–'
          )}
        </Section>
      </Grid2>
    </>
  );
}

export default function ModelPage() {
  const dispatch = useAppDispatch();
  const { catalog, selected, version, report } = useSelectedReport();
  const rows = versionRows(catalog.data);
  return (
    <>
      <Heading sub={catalog.data ? `${catalog.data.model_name}: serving v${catalog.data.serving_version} (${catalog.data.serving_alias})` : undefined}>
        Model
      </Heading>
      {catalog.status === 'loading' && <Loading label="Loading the model registry" />}
      <Problem error={catalog.error} what="The model registry" />
      {catalog.data && (
        <Section title="Versions">
          <ScrollRegion label="Versions table">
            <Table size="small" aria-label="Registered versions" data-testid="versions-table">
              <TableHead>
                <TableRow>
                  <TableCell>Version</TableCell>
                  <TableCell>Aliases</TableCell>
                  <TableCell>ROC-AUC</TableCell>
                  <TableCell sx={hideOnPhone}>PR-AUC</TableCell>
                  <TableCell sx={hideOnPhone}>Brier</TableCell>
                  <TableCell sx={hideOnPhone}>ECE</TableCell>
                  <TableCell sx={hideOnPhone}>Threshold</TableCell>
                  <TableCell sx={hideOnPhone}>Registered</TableCell>
                </TableRow>
              </TableHead>
              <TableBody>
                {rows.map((row) => (
                  <TableRow key={row.version} selected={row.version === selected}>
                    <TableCell>
                      <Link
                        component="button"
                        type="button"
                        onClick={() => dispatch(versionSelected(row.version))}
                        aria-pressed={row.version === selected}
                      >
                        v{row.version}
                      </Link>
                    </TableCell>
                    <TableCell>
                      <Box sx={{ display: 'flex', gap: 0.5, flexWrap: 'wrap' }}>
                        {row.aliases.map((a) => (
                          <Chip key={a} size="small" label={a} color={aliasColor(a)} />
                        ))}
                      </Box>
                    </TableCell>
                    <TableCell>{fixed(row.rocAuc)}</TableCell>
                    <TableCell sx={hideOnPhone}>{fixed(row.prAuc)}</TableCell>
                    <TableCell sx={hideOnPhone}>{fixed(row.brier, 4)}</TableCell>
                    <TableCell sx={hideOnPhone}>{fixed(row.ece, 4)}</TableCell>
                    <TableCell sx={hideOnPhone}>{fixed(row.threshold)}</TableCell>
                    <TableCell sx={hideOnPhone}>{new Date(row.created).toLocaleString('en')}</TableCell>
                  </TableRow>
                ))}
              </TableBody>
            </Table>
          </ScrollRegion>
        </Section>
      )}
      {version && !version.has_report && <Alert severity="info">Version {version.version} was registered without an evaluation report.</Alert>}
      {report?.status === 'loading' && <Loading label="Loading the evaluation report" />}
      {report && <Problem error={report.error} what="The evaluation report" />}
      {report?.data && <ReportCharts report={report.data} />}
      {catalog.data && catalog.data.alias_history.length > 0 && (
        <Section title="Alias history">
          <List dense>
            {catalog.data.alias_history.slice(0, 10).map((move) => (
              <ListItem key={`${move.alias}-${move.at}`} disableGutters>
                <ListItemText
                  primary={`${move.alias}: ${move.from_version === null ? '–' : `v${move.from_version}`} → v${move.to_version} (${move.action}${move.forced ? ', forced' : ''})`}
                  secondary={`${new Date(move.at).toLocaleString('en')} by ${move.actor}${move.reason ? `: ${move.reason}` : ''}`}
                />
              </ListItem>
            ))}
          </List>
        </Section>
      )}
    </>
  );
}
