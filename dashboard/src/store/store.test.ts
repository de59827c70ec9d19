import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import type { LiveStats, ModelCatalog, ScoresPage } from '../types';
import { makeStore } from '.';
import authReducer, { initialAuth, loadSession, saveSession, sessionExpired, signedOut, signIn } from './auth';
import { fetchCustomer, fetchModels, versionRows, versionSelected } from './data';
import { fetchLive, HISTORY_POINTS } from './live';
import { parseRoute, routePath } from './nav';
import scoresReducer, { atRiskShare, DEFAULT_QUERY, fetchScores, filtered, pageIndex, paged, pageSized, sortedBy } from './scores';

/** A sessionStorage stand-in (the tests run in Node). */
function memoryStorage(): Storage {
  const items = new Map<string, string>();
  return {
    get length() {
      return items.size;
    },
    clear: () => items.clear(),
    getItem: (k) => items.get(k) ?? null,
    key: (i) => [...items.keys()][i] ?? null,
    removeItem: (k) => void items.delete(k),
    setItem: (k, v) => void items.set(k, v),
  };
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

// What a user typed as their secret (a fixture, not a credential of anything).
const TYPED = 'typed-in-the-form';
const SESSION = { token: 't0k', subject: 'analyst', roles: ['viewer'], expiresAt: Date.now() + 60_000 };

beforeEach(() => {
  vi.stubGlobal('sessionStorage', memoryStorage());
});

afterEach(() => {
  vi.unstubAllGlobals();
});

describe('navigation routes', () => {
  it('round-trips every page through its path', () => {
    for (const route of [
      { page: 'customers' },
      { page: 'customer', id: 'C000123' },
      { page: 'model' },
      { page: 'importance' },
      { page: 'drift' },
      { page: 'live' },
    ] as const) {
      expect(parseRoute(routePath(route))).toEqual(route);
    }
  });

  it('sends unknown paths and malformed ids to the customers page', () => {
    expect(parseRoute('/ui/nowhere')).toEqual({ page: 'customers' });
    expect(parseRoute('/ui/customers/a%27b')).toEqual({ page: 'customers' });
    expect(parseRoute('/')).toEqual({ page: 'customers' });
    expect(parseRoute('/prefix/ui/drift')).toEqual({ page: 'drift' });
  });
});

describe('auth', () => {
  it('signs in with a viewer-scoped password grant and keeps the session for the tab', async () => {
    const fetch = vi.fn(async () => json({ access_token: 'abc', token_type: 'bearer', expires_in: 900, scope: 'viewer' }));
    vi.stubGlobal('fetch', fetch);
    const store = makeStore();
    await store.dispatch(signIn({ grant: 'password', name: 'analyst', secret: TYPED }));
    const session = store.getState().auth.session;
    expect(session).toMatchObject({ token: 'abc', subject: 'analyst', roles: ['viewer'] });
    const [url, init] = fetch.mock.calls[0] as unknown as [string, RequestInit];
    expect(url).toBe('/v1/oauth/token');
    const form = new URLSearchParams(init.body as URLSearchParams);
    expect(Object.fromEntries(form)).toEqual({ grant_type: 'password', scope: 'viewer', username: 'analyst', password: TYPED });
    expect(loadSession()?.token).toBe('abc');
    store.dispatch(signedOut());
    expect(loadSession()).toBeNull();
  });

  it('sends client credentials for an API client and explains refusals', async () => {
    const fetch = vi.fn(async () => json({ error: 'invalid_client', detail: [{ field: 'x', message: 'no' }] }, 401));
    vi.stubGlobal('fetch', fetch);
    const store = makeStore();
    await store.dispatch(signIn({ grant: 'client_credentials', name: 'svc', secret: TYPED }));
    const form = new URLSearchParams((fetch.mock.calls[0] as unknown as [string, RequestInit])[1].body as URLSearchParams);
    expect(form.get('client_id')).toBe('svc');
    expect(form.get('client_secret')).toBe(TYPED);
    expect(store.getState().auth).toMatchObject({ session: null, error: 'Wrong name or password.', status: 'idle' });
  });

  it('says so when the account lacks the viewer role', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => json({ error: 'invalid_scope', detail: [] }, 400)));
    const store = makeStore();
    await store.dispatch(signIn({ grant: 'password', name: 'p', secret: TYPED }));
    expect(store.getState().auth.error).toMatch(/viewer role/);
  });

  it('forgets expired or unreadable stored sessions', () => {
    saveSession({ ...SESSION, expiresAt: Date.now() - 1 });
    expect(loadSession()).toBeNull();
    sessionStorage.setItem('churn-dashboard-session', '{not json');
    expect(loadSession()).toBeNull();
    saveSession(SESSION);
    expect(loadSession()).toEqual(SESSION);
  });

  it('signs out with a notice when the API answers 401', async () => {
    saveSession(SESSION);
    vi.stubGlobal('fetch', vi.fn(async () => json({ error: 'token_expired', detail: [{ field: 'authorization', message: 'expired' }] }, 401)));
    const store = makeStore();
    expect(store.getState().auth.session?.token).toBe('t0k');
    await store.dispatch(fetchModels());
    expect(store.getState().auth.session).toBeNull();
    expect(store.getState().auth.notice).toMatch(/sign in again/);
    const state = authReducer(initialAuth(SESSION), sessionExpired('gone'));
    expect(state).toMatchObject({ session: null, notice: 'gone' });
  });
});

describe('scores query', () => {
  it('flips the order of the sorted column and starts another in its natural order', () => {
    let state = scoresReducer(undefined, paged(3));
    expect(state.query.offset).toBe(3 * DEFAULT_QUERY.limit);
    state = scoresReducer(state, sortedBy('probability'));
    expect(state.query).toMatchObject({ sort: 'probability', order: 'asc', offset: 0 });
    state = scoresReducer(state, sortedBy('customer_id'));
    expect(state.query).toMatchObject({ sort: 'customer_id', order: 'asc' });
    state = scoresReducer(state, sortedBy('probability'));
    expect(state.query).toMatchObject({ sort: 'probability', order: 'desc' });
  });

  it('goes back to the first page when filters or the page size change', () => {
    let state = scoresReducer(undefined, paged(2));
    state = scoresReducer(state, filtered({ search: 'C00', churnOnly: true }));
    expect(state.query).toMatchObject({ search: 'C00', churnOnly: true, offset: 0 });
    state = scoresReducer(scoresReducer(state, paged(1)), pageSized(50));
    expect(state.query).toMatchObject({ limit: 50, offset: 0 });
    expect(pageIndex({ ...state.query, offset: 100 })).toBe(2);
  });

  it('keeps only the answer of the latest request', async () => {
    saveSession(SESSION);
    const page = (id: string): ScoresPage => ({
      snapshot_date: '2026-02-01',
      model_version: 1,
      scored_at: null,
      threshold: 0.5,
      customers: 10,
      at_risk: 4,
      matching: 1,
      offset: 0,
      limit: 25,
      sort: 'probability',
      order: 'desc',
      items: [{ customer_id: id, probability: 0.9, churn: true, threshold: 0.5, reasons: [], snapshot_date: '2026-02-01', model_version: 1, scored_at: null }],
      features: [],
    });
    const answers: ((r: Response) => void)[] = [];
    const fetch = vi.fn(() => new Promise<Response>((done) => answers.push(done)));
    vi.stubGlobal('fetch', fetch);
    const store = makeStore();
    const older = store.dispatch(fetchScores({ ...DEFAULT_QUERY, search: 'old' }));
    const newer = store.dispatch(fetchScores({ ...DEFAULT_QUERY, search: 'new' }));
    expect((fetch.mock.calls[1] as unknown as [string])[0]).toContain('search=new');
    answers[1]?.(json(page('NEW')));
    await newer;
    answers[0]?.(json(page('OLD')));
    await older;
    const state = store.getState().scores;
    expect(state.status).toBe('ready');
    expect(state.data?.items[0]?.customer_id).toBe('NEW');
    expect(atRiskShare(state.data)).toBe(0.4);
    expect(atRiskShare(null)).toBeNull();
  });
});

describe('models and customers', () => {
  const catalog: ModelCatalog = {
    model_name: 'churn-saas',
    serving_alias: 'champion',
    serving_version: 2,
    aliases: { champion: 2, challenger: 3 },
    versions: [
      { version: 3, created_at: '2026-02-01T00:00:00Z', aliases: ['challenger'], metrics: { roc_auc: 0.81 }, threshold: 0.4, registered_by: 'ci', has_report: true, lineage: {} },
      { version: 2, created_at: '2026-01-01T00:00:00Z', aliases: ['champion'], metrics: { roc_auc: 0.83, brier: 0.1 }, threshold: 0.5, registered_by: 'ci', has_report: true, lineage: {} },
    ],
    alias_history: [],
  };

  it('selects the serving version once the catalog arrives, then keeps the choice', async () => {
    saveSession(SESSION);
    vi.stubGlobal('fetch', vi.fn(async () => json(catalog)));
    const store = makeStore();
    await store.dispatch(fetchModels());
    expect(store.getState().models.selected).toBe(2);
    store.dispatch(versionSelected(3));
    await store.dispatch(fetchModels());
    expect(store.getState().models.selected).toBe(3);
    const rows = versionRows(store.getState().models.catalog.data);
    expect(rows.map((r) => [r.version, r.serving, r.rocAuc, r.brier])).toEqual([
      [3, false, 0.81, null],
      [2, true, 0.83, 0.1],
    ]);
    expect(versionRows(null)).toEqual([]);
  });

  it('records a refused customer as an error without its old data', async () => {
    saveSession(SESSION);
    vi.stubGlobal('fetch', vi.fn(async () => json({ error: 'customer_out_of_scope', detail: [{ field: 'authorization', message: 'outside scope' }] }, 403)));
    const store = makeStore();
    await store.dispatch(fetchCustomer('X1'));
    expect(store.getState().customer).toMatchObject({
      id: 'X1',
      status: 'error',
      data: null,
      error: { status: 403, code: 'customer_out_of_scope', message: 'outside scope' },
    });
    expect(store.getState().auth.session).not.toBeNull(); // 403 is not a sign-out
  });
});

describe('live', () => {
  function stats(seconds: number, predictions: number): LiveStats {
    return {
      replica: 'r1',
      started_at: '2026-11-28T00:00:00Z',
      now: new Date(Date.UTC(2026, 10, 28, 0, 0, seconds)).toISOString(),
      model_version: 1,
      routes: [
        {
          route: '/v1/predict',
          requests: { '200': predictions },
          latency_count: predictions,
          latency_sum: 0,
          buckets: [{ le: 0.01, count: predictions }, { le: null, count: predictions }],
        },
      ],
      cache: { hit: 0, miss: predictions },
      predictions: {},
      rate_limited: 0,
    };
  }

  it('turns successive samples of a replica into a capped rate history', async () => {
    saveSession(SESSION);
    let n = 0;
    vi.stubGlobal('fetch', vi.fn(async () => json(stats(n * 2, n++ * 10))));
    const store = makeStore();
    await store.dispatch(fetchLive());
    expect(store.getState().live.summary?.requestRate).toBeNull();
    expect(store.getState().live.history).toHaveLength(0);
    await store.dispatch(fetchLive());
    expect(store.getState().live.summary?.requestRate).toBeCloseTo(5);
    expect(store.getState().live.history[0]).toMatchObject({ rate: 5, replica: 'r1' });
    for (let i = 0; i < HISTORY_POINTS + 5; i += 1) await store.dispatch(fetchLive());
    expect(store.getState().live.history).toHaveLength(HISTORY_POINTS);
    expect(store.getState().live.polls).toBe(HISTORY_POINTS + 7);
  });
});
