// The state of one remote resource, and the thunk factory every page's data goes through.

import { createAsyncThunk } from '@reduxjs/toolkit';

import { type ApiProblem, getJson, isApiProblem } from '../api';
import type { AuthState } from './auth';

export type Status = 'idle' | 'loading' | 'ready' | 'error';

export interface Remote<T> {
  status: Status;
  data: T | null;
  error: ApiProblem | null;
}

export function idle<T>(): Remote<T> {
  return { status: 'idle', data: null, error: null };
}

export function problem(error: unknown): ApiProblem {
  if (isApiProblem(error)) return error;
  return { status: 0, code: 'client_error', message: String(error) };
}

/** A thunk that GETs ``path(arg)`` with the session's token; failures reject with an ApiProblem. */
export function fetchThunk<T, A>(type: string, path: (arg: A) => string) {
  return createAsyncThunk<T, A, { state: { auth: AuthState }; rejectValue: ApiProblem }>(
    type,
    async (arg, { getState, rejectWithValue, signal }) => {
      const session = getState().auth.session;
      if (!session) {
        return rejectWithValue({ status: 401, code: 'signed_out', message: 'Not signed in.' });
      }
      try {
        return await getJson<T>(path(arg), session.token, signal);
      } catch (error) {
        return rejectWithValue(problem(error));
      }
    },
  );
}
