// The customers-at-risk table: the query (sort, filters, page) and the page of scores the API
// answered for it. Sorting, filtering and paging happen on the server (the slice can hold
// millions of customers).

import { createSlice, type PayloadAction } from '@reduxjs/toolkit';

import { scoresQuery } from '../api';
import type { ScoresPage } from '../types';
import { fetchThunk, idle, type Remote } from './remote';

export type SortKey = 'probability' | 'customer_id';
export type SortOrder = 'asc' | 'desc';

export interface ScoresQuery {
  limit: number;
  offset: number;
  sort: SortKey;
  order: SortOrder;
  search: string;
  minProbability: number | null;
  churnOnly: boolean;
  reason: string;
}

export interface ScoresState extends Remote<ScoresPage> {
  query: ScoresQuery;
  // The request whose answer may land (an older one finishing late must not win).
  requestId: string | null;
}

export const DEFAULT_QUERY: ScoresQuery = {
  limit: 25,
  offset: 0,
  sort: 'probability',
  order: 'desc',
  search: '',
  minProbability: null,
  churnOnly: false,
  reason: '',
};

export const fetchScores = fetchThunk<ScoresPage, ScoresQuery>(
  'scores/fetch',
  (query) => `/v1/dashboard/scores?${scoresQuery(query)}`,
);

export type Filters = Pick<ScoresQuery, 'search' | 'minProbability' | 'churnOnly' | 'reason'>;

const initialState: ScoresState = { ...idle<ScoresPage>(), query: DEFAULT_QUERY, requestId: null };

const scores = createSlice({
  name: 'scores',
  initialState,
  reducers: {
    // Clicking the sorted column flips its order; another column starts in its natural order
    // (risk: highest first; ids: A to Z). Either way back to the first page.
    sortedBy(state, action: PayloadAction<SortKey>) {
      const key = action.payload;
      if (state.query.sort === key) {
        state.query.order = state.query.order === 'asc' ? 'desc' : 'asc';
      } else {
        state.query.sort = key;
        state.query.order = key === 'probability' ? 'desc' : 'asc';
      }
      state.query.offset = 0;
    },
    filtered(state, action: PayloadAction<Partial<Filters>>) {
      state.query = { ...state.query, ...action.payload, offset: 0 };
    },
    paged(state, action: PayloadAction<number>) {
      state.query.offset = Math.max(0, action.payload) * state.query.limit;
    },
    pageSized(state, action: PayloadAction<number>) {
      state.query.limit = action.payload;
      state.query.offset = 0;
    },
  },
  extraReducers: (builder) => {
    builder
      .addCase(fetchScores.pending, (state, action) => {
        state.status = 'loading';
        state.requestId = action.meta.requestId;
      })
      .addCase(fetchScores.fulfilled, (state, action) => {
        if (action.meta.requestId !== state.requestId) return;
        state.status = 'ready';
        state.data = action.payload;
        state.error = null;
      })
      .addCase(fetchScores.rejected, (state, action) => {
        if (action.meta.requestId !== state.requestId || action.meta.aborted) return;
        state.status = 'error';
        state.error = action.payload ?? null;
      });
  },
});

export const { sortedBy, filtered, paged, pageSized } = scores.actions;
export default scores.reducer;

/** The share of the slice's customers labelled churn (null before anything is scored). */
export function atRiskShare(page: ScoresPage | null): number | null {
  if (!page || page.customers === 0) return null;
  return page.at_risk / page.customers;
}

/** The zero-based page index of the current query. */
export function pageIndex(query: ScoresQuery): number {
  return Math.floor(query.offset / query.limit);
}
