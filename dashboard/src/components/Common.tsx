import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import LinearProgress from '@mui/material/LinearProgress';
import Paper from '@mui/material/Paper';
import TableContainer from '@mui/material/TableContainer';
import Typography from '@mui/material/Typography';
import type { ReactNode } from 'react';

import type { ApiProblem } from '../api';

export function Heading({ children, sub }: { children: ReactNode; sub?: ReactNode }) {
  return (
    <Box sx={{ mb: 2 }}>
      <Typography variant="h1">{children}</Typography>
      {sub && (
        <Typography variant="body2" color="text.secondary" sx={{ mt: 0.5 }}>
          {sub}
        </Typography>
      )}
    </Box>
  );
}

export function Section({ title, children, testId }: { title: string; children: ReactNode; testId?: string }) {
  const id = `section-${title.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return (
    <Paper component="section" aria-labelledby={id} sx={{ p: 2, mb: 2, minWidth: 0 }} data-testid={testId}>
      <Typography variant="h2" id={id} gutterBottom>
        {title}
      </Typography>
      {children}
    </Paper>
  );
}

/** A labelled figure in a row of key numbers. */
export function Stat({ label, value, testId }: { label: string; value: ReactNode; testId?: string }) {
  return (
    <Paper variant="outlined" sx={{ p: 1.5, minWidth: 130, flex: '1 1 130px' }} data-testid={testId}>
      <Typography variant="caption" color="text.secondary" component="p">
        {label}
      </Typography>
      <Typography variant="h6" component="p" sx={{ lineHeight: 1.3 }}>
        {value}
      </Typography>
    </Paper>
  );
}

export function Stats({ children }: { children: ReactNode }) {
  return <Box sx={{ display: 'flex', flexWrap: 'wrap', gap: 1.5, mb: 2 }}>{children}</Box>;
}

export function Loading({ label }: { label: string }) {
  return <LinearProgress aria-label={label} sx={{ my: 1 }} />;
}

export function Problem({ error, what }: { error: ApiProblem | null; what: string }) {
  if (!error) return null;
  return (
    <Alert severity="error" sx={{ my: 1 }}>
      {what} could not be loaded: {error.message} ({error.code})
    </Alert>
  );
}

/** Two columns on wide screens, one on phones. */
export function Grid2({ children }: { children: ReactNode }) {
  return (
    <Box sx={{ display: 'grid', gridTemplateColumns: { xs: 'minmax(0, 1fr)', md: 'minmax(0, 1fr) minmax(0, 1fr)' }, gap: 3 }}>{children}</Box>
  );
}

/**
 * A table's scroll container that keyboard users can reach: on a phone a wide table scrolls
 * sideways, and a region that scrolls must take focus to be scrolled without a mouse.
 */
export function ScrollRegion({ label, children }: { label: string; children: ReactNode }) {
  return (
    <TableContainer tabIndex={0} role="region" aria-label={label} sx={{ '&:focus-visible': { outline: '2px solid', outlineColor: 'primary.main' } }}>
      {children}
    </TableContainer>
  );
}
