// One customer, the model catalog and reports, and drift: read-only resources of the API.

import { createSlice } from '@reduxjs/toolkit';

import type { CustomerDetail, DriftHistory, ModelCatalog, ModelReport } from '../types';
import { fetchThunk, idle, type Remote } from './remote';

export const fetchCustomer = fetchThunk<CustomerDetail, string>(
  'customer/fetch',
  (id) => `/v1/dashboard/customers/${encodeURIComponent(id)}`,
);

export const fetchModels = fetchThunk<ModelCatalog, void>('models/fetch', () => '/v1/dashboard/models');

export const fetchReport = fetchThunk<ModelReport, number>(
  'report/fetch',
  (version) => `/v1/dashboard/models/${version}/report`,
);

export const fetchDrift = fetchThunk<DriftHistory, number>(
  'drift/fetch',
  (runs) => `/v1/dashboard/drift?runs=${runs}`,
);

export interface CustomerState extends Remote<CustomerDetail> {
  id: string | null;
}

const customer = createSlice({
  name: 'customer',
  initialState: { ...idle<CustomerDetail>(), id: null } as CustomerState,
  reducers: {},
  extraReducers: (builder) => {
    builder
      .addCase(fetchCustomer.pending, (state, action) => {
        state.status = 'loading';
        state.id = action.meta.arg;
        state.error = null;
      })
      .addCase(fetchCustomer.fulfilled, (state, action) => {
        if (action.meta.arg !== state.id) return;
        state.status = 'ready';
        state.data = action.payload;
      })
      .addCase(fetchCustomer.rejected, (state, action) => {
        if (action.meta.arg !== state.id) return;
        state.status = 'error';
        state.data = null;
        state.error = action.payload ?? null;
      });
  },
});

export interface ModelsState {
  catalog: Remote<ModelCatalog>;
  // The version whose report the page shows (null: the serving one once the catalog is in).
  selected: number | null;
  // Reports by version: immutable, so fetched once.
  reports: Record<number, Remote<ModelReport>>;
}

const models = createSlice({
  name: 'models',
  initialState: { catalog: idle<ModelCatalog>(), selected: null, reports: {} } as ModelsState,
  reducers: {
    versionSelected(state, action: { payload: number }) {
      state.selected = action.payload;
    },
  },
  extraReducers: (builder) => {
    builder
      .addCase(fetchModels.pending, (state) => {
        state.catalog.status = 'loading';
      })
      .addCase(fetchModels.fulfilled, (state, action) => {
        state.catalog = { status: 'ready', data: action.payload, error: null };
        state.selected ??= action.payload.serving_version;
      })
      .addCase(fetchModels.rejected, (state, action) => {
        state.catalog = { status: 'error', data: null, error: action.payload ?? null };
      })
      .addCase(fetchReport.pending, (state, action) => {
        state.reports[action.meta.arg] = { status: 'loading', data: null, error: null };
      })
      .addCase(fetchReport.fulfilled, (state, action) => {
        state.reports[action.meta.arg] = { status: 'ready', data: action.payload, error: null };
      })
      .addCase(fetchReport.rejected, (state, action) => {
        state.reports[action.meta.arg] = {
          status: 'error',
          data: null,
          error: action.payload ?? null,
        };
      });
  },
});

const drift = createSlice({
  name: 'drift',
  initialState: idle<DriftHistory>(),
  reducers: {},
  extraReducers: (builder) => {
    builder
      .addCase(fetchDrift.pending, (state) => {
        state.status = 'loading';
      })
      .addCase(fetchDrift.fulfilled, (_state, action) => ({
        status: 'ready' as const,
        data: action.payload,
        error: null,
      }))
      .addCase(fetchDrift.rejected, (state, action) => {
        state.status = 'error';
        state.error = action.payload ?? null;
      });
  },
});

export const { versionSelected } = models.actions;
export const customerReducer = customer.reducer;
export const modelsReducer = models.reducer;
export const driftReducer = drift.reducer;

/** The versions' rows of the model table, newest first, with the metrics the page shows. */
export function versionRows(catalog: ModelCatalog | null) {
  if (!catalog) return [];
  return catalog.versions.map((v) => ({
    version: v.version,
    created: v.created_at,
    aliases: v.aliases,
    serving: v.version === catalog.serving_version,
    rocAuc: v.metrics.roc_auc ?? null,
    prAuc: v.metrics.pr_auc ?? null,
    brier: v.metrics.brier ?? null,
    ece: v.metrics.ece ?? null,
    threshold: v.threshold,
    hasReport: v.has_report,
  }));
}
