import { describe, expect, it } from 'vitest';

import { isApiProblem, problemOf, scoresQuery, signInMessage } from './api';
import { DEFAULT_QUERY } from './store/scores';

describe('scoresQuery', () => {
  it('always sends paging and sorting, filters only when set', () => {
    expect(scoresQuery(DEFAULT_QUERY)).toBe('limit=25&offset=0&sort=probability&order=desc');
    const query = scoresQuery({ ...DEFAULT_QUERY, search: ' C00 ', minProbability: 0.5, churnOnly: true, reason: 'fee' });
    expect(Object.fromEntries(new URLSearchParams(query))).toMatchObject({
      search: 'C00',
      min_probability: '0.5',
      churn_only: 'true',
      reason: 'fee',
    });
  });
});

describe('problemOf', () => {
  it('reads the API error body', async () => {
    const response = new Response(JSON.stringify({ error: 'rate_limited', detail: [{ field: 'authorization', message: 'slow down' }] }), { status: 429 });
    const problem = await problemOf(response);
    expect(problem).toEqual({ status: 429, code: 'rate_limited', message: 'slow down' });
    expect(isApiProblem(problem)).toBe(true);
    expect(signInMessage(problem)).toMatch(/Too many attempts/);
  });

  it('keeps the status line when the body is not JSON', async () => {
    const problem = await problemOf(new Response('<html>bad gateway</html>', { status: 502, statusText: 'Bad Gateway' }));
    expect(problem).toEqual({ status: 502, code: 'http_error', message: '502 Bad Gateway' });
    expect(isApiProblem('nope')).toBe(false);
  });
});
