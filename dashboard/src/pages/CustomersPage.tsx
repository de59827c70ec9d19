import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Chip from '@mui/material/Chip';
import FormControlLabel from '@mui/material/FormControlLabel';
import Link from '@mui/material/Link';
import Paper from '@mui/material/Paper';
import Switch from '@mui/material/Switch';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableHead from '@mui/material/TableHead';
import TablePagination from '@mui/material/TablePagination';
import TableRow from '@mui/material/TableRow';
import TableSortLabel from '@mui/material/TableSortLabel';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { useEffect, useState } from 'react';

import { percent } from '../charts/geometry';
import { Heading, Loading, Problem, Stat, Stats, ScrollRegion } from '../components/Common';
import { useAppDispatch, useAppSelector, useDebounced, useNavigate } from '../hooks';
import { routePath } from '../store/nav';
import { atRiskShare, fetchScores, filtered, pageIndex, paged, pageSized, sortedBy, type SortKey } from '../store/scores';
import type { Reason } from '../types';

const hideOnPhone = { display: { xs: 'none', md: 'table-cell' } };

export function ReasonList({ reasons, limit = 3 }: { reasons: Reason[]; limit?: number }) {
  if (reasons.length === 0) return <Typography variant="body2">–</Typography>;
  return (
    <Box component="ul" sx={{ display: 'flex', flexWrap: 'wrap', gap: 0.5, listStyle: 'none', p: 0, m: 0 }}>
      {reasons.slice(0, limit).map((r) => (
        <li key={r.feature}>
          <Chip
            size="small"
            variant="outlined"
            label={`${r.feature} ${r.contribution >= 0 ? '+' : '−'}${Math.abs(r.contribution).toFixed(2)}`}
          />
        </li>
      ))}
    </Box>
  );
}

function RiskBar({ value, churn }: { value: number; churn: boolean }) {
  return (
    <Box aria-hidden="true" sx={{ height: 4, bgcolor: 'grey.300', borderRadius: 2, mt: 0.5, width: 80 }}>
      <Box sx={{ height: 4, width: `${Math.round(value * 100)}%`, bgcolor: churn ? 'error.main' : 'primary.main', borderRadius: 2 }} />
    </Box>
  );
}

export default function CustomersPage() {
  const dispatch = useAppDispatch();
  const navigate = useNavigate();
  const { query, data, status, error } = useAppSelector((s) => s.scores);

  const [search, setSearch] = useState(query.search);
  const [minimum, setMinimum] = useState(query.minProbability === null ? '' : String(query.minProbability));
  const settledSearch = useDebounced(search, 300);
  const settledMinimum = useDebounced(minimum, 300);

  useEffect(() => {
    // Only the characters customer ids are made of: anything else could never match.
    const clean = settledSearch.replace(/[^A-Za-z0-9_.:-]/g, '').slice(0, 64);
    if (clean !== query.search) dispatch(filtered({ search: clean }));
  }, [settledSearch, query.search, dispatch]);

  useEffect(() => {
    const parsed = settledMinimum === '' ? null : Number(settledMinimum);
    const value = parsed === null || !Number.isFinite(parsed) ? null : Math.min(1, Math.max(0, parsed));
    if (value !== query.minProbability) dispatch(filtered({ minProbability: value }));
  }, [settledMinimum, query.minProbability, dispatch]);

  useEffect(() => {
    const request = dispatch(fetchScores(query));
    return () => request.abort();
  }, [query, dispatch]);

  const header = (key: SortKey, label: string) => (
    <TableSortLabel
      active={query.sort === key}
      direction={query.sort === key ? query.order : key === 'probability' ? 'desc' : 'asc'}
      onClick={() => dispatch(sortedBy(key))}
    >
      {label}
    </TableSortLabel>
  );

  const share = atRiskShare(data);
  return (
    <>
      <Heading sub="The latest batch scores (churn score), highest risk first. Filters and sorting run on the server.">
        Customers at risk
      </Heading>
      {data && data.snapshot_date && (
        <Stats>
          <Stat label="Snapshot" value={data.snapshot_date} />
          <Stat label="Model version" value={`v${data.model_version}`} />
          <Stat label="Customers scored" value={data.customers.toLocaleString('en')} testId="stat-customers" />
          <Stat label="Labelled churn" value={`${data.at_risk.toLocaleString('en')} (${percent(share)})`} testId="stat-at-risk" />
        </Stats>
      )}
      <Paper component="form" role="search" aria-label="Filter customers" onSubmit={(e) => e.preventDefault()} sx={{ p: 2, mb: 2, display: 'flex', flexWrap: 'wrap', gap: 2, alignItems: 'center' }}>
        <TextField
          id="filter-search"
          label="Customer id contains"
          size="small"
          value={search}
          onChange={(e) => setSearch(e.target.value)}
          sx={{ flex: '1 1 180px' }}
        />
        <TextField
          id="filter-min-probability"
          label="Minimum probability"
          size="small"
          type="number"
          value={minimum}
          onChange={(e) => setMinimum(e.target.value)}
          slotProps={{ htmlInput: { min: 0, max: 1, step: 0.05 } }}
          sx={{ flex: '1 1 150px' }}
        />
        <TextField
          id="filter-reason"
          select
          label="Among top reasons"
          size="small"
          value={query.reason}
          onChange={(e) => dispatch(filtered({ reason: e.target.value }))}
          slotProps={{ select: { native: true }, inputLabel: { shrink: true } }}
          sx={{ flex: '1 1 180px' }}
        >
          <option value="">any feature</option>
          {(data?.features ?? []).map((f) => (
            <option key={f} value={f}>
              {f}
            </option>
          ))}
        </TextField>
        <FormControlLabel
          control={<Switch checked={query.churnOnly} onChange={(e) => dispatch(filtered({ churnOnly: e.target.checked }))} />}
          label="Labelled churn only"
        />
      </Paper>
      {status === 'loading' && <Loading label="Loading scores" />}
      <Problem error={error} what="The scores" />
      {data && !data.snapshot_date && (
        <Alert severity="info">Nothing has been scored yet: run the batch scoring job (churn score).</Alert>
      )}
      {data && data.snapshot_date && (
        <Paper>
          <ScrollRegion label="Customers table">
            <Table
              size="small"
              aria-label="Customers by churn risk"
              data-testid="customers-table"
              sx={{ '& td, & th': { px: { xs: 1, sm: 2 } } }}
            >
              <TableHead>
                <TableRow>
                  <TableCell sortDirection={query.sort === 'customer_id' ? query.order : false}>{header('customer_id', 'Customer')}</TableCell>
                  <TableCell sortDirection={query.sort === 'probability' ? query.order : false}>{header('probability', 'Churn probability')}</TableCell>
                  <TableCell sx={hideOnPhone}>Label</TableCell>
                  <TableCell>Top reasons</TableCell>
                </TableRow>
              </TableHead>
              <TableBody>
                {data.items.map((item) => (
                  <TableRow key={item.customer_id} hover data-testid="customer-row">
                    <TableCell>
                      <Link
                        href={routePath({ page: 'customer', id: item.customer_id })}
                        onClick={(e: React.MouseEvent) => {
                          e.preventDefault();
                          navigate({ page: 'customer', id: item.customer_id });
                        }}
                      >
                        {item.customer_id}
                      </Link>
                    </TableCell>
                    <TableCell data-testid="probability">
                      {percent(item.probability)}
                      <RiskBar value={item.probability} churn={item.churn} />
                    </TableCell>
                    <TableCell sx={hideOnPhone}>
                      {item.churn ? <Chip size="small" color="error" label="churn" /> : <Chip size="small" variant="outlined" label="stays" />}
                    </TableCell>
                    <TableCell>
                      <Box sx={{ display: { xs: 'none', sm: 'block' } }}>
                        <ReasonList reasons={item.reasons} />
                      </Box>
                      <Box sx={{ display: { xs: 'block', sm: 'none' } }}>
                        <ReasonList reasons={item.reasons} limit={1} />
                      </Box>
                    </TableCell>
                  </TableRow>
                ))}
                {data.items.length === 0 && (
                  <TableRow>
                    <TableCell colSpan={4}>No customer matches these filters.</TableCell>
                  </TableRow>
                )}
              </TableBody>
            </Table>
          </ScrollRegion>
          <TablePagination
            component="div"
            count={data.matching}
            page={pageIndex(query)}
            rowsPerPage={query.limit}
            rowsPerPageOptions={[10, 25, 50, 100]}
            onPageChange={(_e, page) => dispatch(paged(page))}
            onRowsPerPageChange={(e) => dispatch(pageSized(Number(e.target.value)))}
            sx={{ '& .MuiTablePagination-toolbar': { flexWrap: 'wrap', pl: 1 } }}
          />
        </Paper>
      )}
    </>
  );
}
