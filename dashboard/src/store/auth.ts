// The signed-in session: a short-lived viewer token from the API's OAuth2 token endpoint.
// Kept in sessionStorage (this tab only, gone when it closes) so a reload does not sign out.

import { createAsyncThunk, createSlice, type PayloadAction } from '@reduxjs/toolkit';

import { type ApiProblem, type GrantType, requestToken, signInMessage } from '../api';

export interface Session {
  token: string;
  subject: string;
  roles: string[];
  expiresAt: number; // epoch milliseconds
}

export interface AuthState {
  session: Session | null;
  status: 'idle' | 'signing-in';
  error: string | null;
  // Why the user was signed out (shown on the sign-in form).
  notice: string | null;
}

const STORAGE_KEY = 'churn-dashboard-session';

function storage(): Storage | null {
  try {
    return typeof sessionStorage === 'undefined' ? null : sessionStorage;
  } catch {
    return null; // storage disabled by the browser
  }
}

/** The stored session, if there is one that has not expired. */
export function loadSession(now: number = Date.now()): Session | null {
  const raw = storage()?.getItem(STORAGE_KEY);
  if (!raw) return null;
  try {
    const session = JSON.parse(raw) as Session;
    return typeof session.token === 'string' && session.expiresAt > now ? session : null;
  } catch {
    return null;
  }
}

export function saveSession(session: Session | null): void {
  const store = storage();
  if (!store) return;
  if (session) store.setItem(STORAGE_KEY, JSON.stringify(session));
  else store.removeItem(STORAGE_KEY);
}

export interface SignInForm {
  grant: GrantType;
  name: string;
  secret: string;
}

export const signIn = createAsyncThunk<Session, SignInForm, { rejectValue: string }>(
  'auth/signIn',
  async (form, { rejectWithValue }) => {
    try {
      const answer = await requestToken(form.grant, form.name, form.secret);
      return {
        token: answer.access_token,
        subject: form.name,
        roles: answer.scope.split(' ').filter(Boolean),
        // A little early, so no request goes out with a token about to expire.
        expiresAt: Date.now() + Math.max(answer.expires_in - 10, 1) * 1000,
      };
    } catch (error) {
      return rejectWithValue(signInMessage(error as ApiProblem));
    }
  },
);

export function initialAuth(session: Session | null = null): AuthState {
  return { session, status: 'idle', error: null, notice: null };
}

const auth = createSlice({
  name: 'auth',
  initialState: initialAuth(),
  reducers: {
    signedOut(state) {
      state.session = null;
      state.notice = null;
      state.error = null;
    },
    // A 401 from the API: the token expired or its key was rotated away.
    sessionExpired(state, action: PayloadAction<string | undefined>) {
      state.session = null;
      state.notice = action.payload ?? 'Your session has ended: please sign in again.';
    },
  },
  extraReducers: (builder) => {
    builder
      .addCase(signIn.pending, (state) => {
        state.status = 'signing-in';
        state.error = null;
      })
      .addCase(signIn.fulfilled, (state, action) => {
        state.status = 'idle';
        state.session = action.payload;
        state.notice = null;
      })
      .addCase(signIn.rejected, (state, action) => {
        state.status = 'idle';
        state.error = action.payload ?? action.error.message ?? 'Sign-in failed.';
      });
  },
});

export const { signedOut, sessionExpired } = auth.actions;
export default auth.reducer;
