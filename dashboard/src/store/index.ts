// The Redux store: auth, navigation and one slice per API resource.

import { configureStore, isRejected, type Middleware } from '@reduxjs/toolkit';

import { isApiProblem } from '../api';
import authReducer, { initialAuth, loadSession, saveSession, sessionExpired } from './auth';
import { customerReducer, driftReducer, modelsReducer } from './data';
import liveReducer from './live';
import navReducer, { parseRoute } from './nav';
import scoresReducer from './scores';

// Any request answered 401 means the token is no longer good: back to the sign-in form.
const signOutOn401: Middleware = (api) => (next) => (action) => {
  const result = next(action);
  if (isRejected(action) && isApiProblem(action.payload) && action.payload.status === 401) {
    if ((api.getState() as { auth: { session: unknown } }).auth.session) {
      api.dispatch(sessionExpired());
    }
  }
  return result;
};

export function makeStore(pathname: string = '/ui/') {
  const store = configureStore({
    reducer: {
      auth: authReducer,
      nav: navReducer,
      scores: scoresReducer,
      customer: customerReducer,
      models: modelsReducer,
      drift: driftReducer,
      live: liveReducer,
    },
    preloadedState: {
      auth: initialAuth(loadSession()),
      nav: { route: parseRoute(pathname) },
    },
    middleware: (getDefault) => getDefault().concat(signOutOn401),
  });
  let saved = store.getState().auth.session;
  store.subscribe(() => {
    const session = store.getState().auth.session;
    if (session !== saved) {
      saved = session;
      saveSession(session);
    }
  });
  return store;
}

export type AppStore = ReturnType<typeof makeStore>;
export type RootState = ReturnType<AppStore['getState']>;
export type AppDispatch = AppStore['dispatch'];
