// Which page is shown. The URL is the source of truth (bookmarkable, back button): paths under
// /ui/ map to routes and back; the API serves index.html for every such path.

import { createSlice, type PayloadAction } from '@reduxjs/toolkit';

export type Route =
  | { page: 'customers' }
  | { page: 'customer'; id: string }
  | { page: 'model' }
  | { page: 'importance' }
  | { page: 'drift' }
  | { page: 'live' };

export type PageName = Route['page'];

export const BASE = '/ui/';

// Customer ids are opaque keys of this alphabet (serve_apps/schemas.py CUSTOMER_ID_PATTERN).
const CUSTOMER_ID = /^[A-Za-z0-9_.:-]{1,64}$/;

/** The route a location path names; anything unknown is the customers page. */
export function parseRoute(pathname: string): Route {
  const index = pathname.indexOf(BASE);
  const rest = index >= 0 ? pathname.slice(index + BASE.length) : '';
  const parts = rest.split('/').filter(Boolean).map(decodeURIComponent);
  const [first, second] = parts;
  if (first === 'customers' && second !== undefined && CUSTOMER_ID.test(second)) {
    return { page: 'customer', id: second };
  }
  if (first === 'model' || first === 'importance' || first === 'drift' || first === 'live') {
    return { page: first };
  }
  return { page: 'customers' };
}

/** The location path of a route. */
export function routePath(route: Route): string {
  switch (route.page) {
    case 'customers':
      return BASE;
    case 'customer':
      return `${BASE}customers/${encodeURIComponent(route.id)}`;
    default:
      return `${BASE}${route.page}`;
  }
}

export const PAGE_TITLES: Record<PageName, string> = {
  customers: 'Customers at risk',
  customer: 'Customer',
  model: 'Model',
  importance: 'Feature importance',
  drift: 'Drift',
  live: 'Live serving',
};

interface NavState {
  route: Route;
}

const initialState: NavState = { route: { page: 'customers' } };

const nav = createSlice({
  name: 'nav',
  initialState,
  reducers: {
    // The app pushes the path to the browser history after dispatching this.
    navigated(state, action: PayloadAction<Route>) {
      state.route = action.payload;
    },
  },
});

export const { navigated } = nav.actions;
export default nav.reducer;
