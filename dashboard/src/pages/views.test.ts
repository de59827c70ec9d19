import { describe, expect, it } from 'vitest';

import type { DriftHistory, DriftPoint } from '../types';
import { driftSeries, latestRows } from './DriftPage';
import { defaultMeasure } from './ImportancePage';

function point(run: number, status: string, psi: number | null): DriftPoint {
  return {
    run_id: `r${run}`,
    run_at: `2026-11-2${run}T00:00:00Z`,
    model_version: 1,
    n_reference: 100,
    n_current: 100,
    psi,
    js_distance: psi === null ? null : psi / 2,
    ks_pvalue: null,
    chi2_pvalue: null,
    status,
  };
}

const HISTORY: DriftHistory = {
  runs: [
    { run_id: 'r2', run_at: '2026-11-22T00:00:00Z', model_version: 1, window_start: '', window_end: '', n_current: 100, drifted: ['fee'], insufficient: 0 },
    { run_id: 'r1', run_at: '2026-11-21T00:00:00Z', model_version: 1, window_start: '', window_end: '', n_current: 100, drifted: [], insufficient: 0 },
  ],
  features: [
    { feature: 'age', kind: 'numeric', points: [point(1, 'ok', 0.01), point(2, 'ok', 0.02)] },
    { feature: 'fee', kind: 'numeric', points: [point(1, 'ok', 0.05), point(2, 'drift', 0.4)] },
    { feature: 'plan', kind: 'categorical', points: [point(1, 'ok', null), point(2, 'insufficient_data', null)] },
  ],
  alerts: [],
};

describe('drift views', () => {
  it('plots a feature statistic over runs, skipping runs without a value', () => {
    expect(driftSeries(HISTORY, 'fee', 'psi')).toEqual([
      { x: Date.parse('2026-11-21T00:00:00Z'), y: 0.05 },
      { x: Date.parse('2026-11-22T00:00:00Z'), y: 0.4 },
    ]);
    expect(driftSeries(HISTORY, 'fee', 'js_distance').map((p) => p.y)).toEqual([0.025, 0.2]);
    expect(driftSeries(HISTORY, 'plan', 'psi')).toEqual([]);
    expect(driftSeries(null, 'fee', 'psi')).toEqual([]);
  });

  it('lists the latest run drifted features first', () => {
    expect(latestRows(HISTORY).map((r) => [r.feature, r.point.status])).toEqual([
      ['fee', 'drift'],
      ['plan', 'insufficient_data'],
      ['age', 'ok'],
    ]);
    expect(latestRows({ runs: [], features: [], alerts: [] })).toEqual([]);
  });
});

describe('importance views', () => {
  it('starts with mean |SHAP| when the report has it', () => {
    expect(defaultMeasure(['gain', 'shap', 'cover'])).toBe('shap');
    expect(defaultMeasure(['cover', 'gain'])).toBe('cover');
    expect(defaultMeasure([])).toBe('gain');
  });
});
