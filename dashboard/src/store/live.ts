// Live serving: the page polls the API's /v1/dashboard/live; each answer is one replica's
// cumulative counters, turned into rates against that replica's previous sample.

import { createSlice } from '@reduxjs/toolkit';

import { type LiveSummary, summarizeLive } from '../charts/stats';
import type { LiveStats } from '../types';
import type { ApiProblem } from '../api';
import { fetchThunk, type Status } from './remote';

export const HISTORY_POINTS = 90;

export interface LivePoint {
  at: number;
  rate: number;
  p95: number | null;
  replica: string;
}

export interface LiveState {
  status: Status;
  error: ApiProblem | null;
  // The last sample of each replica seen (HAProxy spreads polls over replicas).
  samples: Record<string, LiveStats>;
  summary: LiveSummary | null;
  history: LivePoint[];
  polls: number;
}

export const fetchLive = fetchThunk<LiveStats, void>('live/fetch', () => '/v1/dashboard/live');

export const initialLive: LiveState = {
  status: 'idle',
  error: null,
  samples: {},
  summary: null,
  history: [],
  polls: 0,
};

const live = createSlice({
  name: 'live',
  initialState: initialLive,
  reducers: {},
  extraReducers: (builder) => {
    builder
      .addCase(fetchLive.pending, (state) => {
        if (state.status !== 'ready') state.status = 'loading';
      })
      .addCase(fetchLive.fulfilled, (state, action) => {
        const current = action.payload;
        const summary = summarizeLive(state.samples[current.replica] ?? null, current);
        state.samples[current.replica] = current;
        state.summary = summary;
        state.status = 'ready';
        state.error = null;
        state.polls += 1;
        if (summary.requestRate !== null) {
          state.history.push({
            at: summary.at,
            rate: summary.requestRate,
            p95: summary.latencyScope === 'window' ? summary.p95 : null,
            replica: summary.replica,
          });
          if (state.history.length > HISTORY_POINTS) {
            state.history.splice(0, state.history.length - HISTORY_POINTS);
          }
        }
      })
      .addCase(fetchLive.rejected, (state, action) => {
        if (action.meta.aborted) return;
        state.status = 'error';
        state.error = action.payload ?? null;
      });
  },
});

export default live.reducer;
