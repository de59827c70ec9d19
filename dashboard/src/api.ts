// Talks to the churn API on the same origin. Every error becomes an ApiProblem carrying the
// HTTP status and the API's machine-readable code ({"error": ..., "detail": [...]}).

import type { TokenAnswer } from './types';

export interface ApiProblem {
  status: number;
  code: string;
  message: string;
}

export type GrantType = 'password' | 'client_credentials';

export function isApiProblem(value: unknown): value is ApiProblem {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as ApiProblem).status === 'number' &&
    typeof (value as ApiProblem).code === 'string'
  );
}

/** The API's error body (or a transport failure) as one ApiProblem. */
export async function problemOf(response: Response): Promise<ApiProblem> {
  let code = 'http_error';
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = (await response.json()) as {
      error?: string;
      detail?: { field?: string; message?: string }[];
    };
    if (body.error) code = body.error;
    const first = body.detail?.[0];
    if (first?.message) message = first.message;
  } catch {
    // Not JSON (a proxy's page): keep the status line.
  }
  return { status: response.status, code, message };
}

function networkProblem(error: unknown): ApiProblem {
  return { status: 0, code: 'network_error', message: `The API cannot be reached (${String(error)})` };
}

/** A GET of the API with the bearer token; resolves to the parsed JSON body. */
export async function getJson<T>(path: string, token: string, signal?: AbortSignal): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
      signal,
    });
  } catch (error) {
    throw networkProblem(error);
  }
  if (!response.ok) throw await problemOf(response);
  return (await response.json()) as T;
}

/** The OAuth2 token endpoint: a viewer-scoped token for a person (password) or a client. */
export async function requestToken(
  grant: GrantType,
  name: string,
  secret: string,
): Promise<TokenAnswer> {
  const form = new URLSearchParams({ grant_type: grant, scope: 'viewer' });
  if (grant === 'password') {
    form.set('username', name);
    form.set('password', secret);
  } else {
    form.set('client_id', name);
    form.set('client_secret', secret);
  }
  let response: Response;
  try {
    response = await fetch('/v1/oauth/token', {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: form,
    });
  } catch (error) {
    throw networkProblem(error);
  }
  if (!response.ok) throw await problemOf(response);
  return (await response.json()) as TokenAnswer;
}

/** A user-facing sentence for a failed sign-in. */
export function signInMessage(problem: ApiProblem): string {
  switch (problem.code) {
    case 'invalid_grant':
    case 'invalid_client':
      return 'Wrong name or password.';
    case 'invalid_scope':
      return 'This account has no viewer role: the dashboard needs it.';
    case 'rate_limited':
      return 'Too many attempts: wait a moment and try again.';
    case 'auth_disabled':
      return 'Sign-in is switched off on this API.';
    default:
      return problem.message;
  }
}

/** The query string of a scores request (only the parameters that differ from the defaults). */
export function scoresQuery(query: {
  limit: number;
  offset: number;
  sort: string;
  order: string;
  search: string;
  minProbability: number | null;
  churnOnly: boolean;
  reason: string;
}): string {
  const params = new URLSearchParams({
    limit: String(query.limit),
    offset: String(query.offset),
    sort: query.sort,
    order: query.order,
  });
  const search = query.search.trim();
  if (search) params.set('search', search);
  if (query.minProbability !== null) params.set('min_probability', String(query.minProbability));
  if (query.churnOnly) params.set('churn_only', 'true');
  if (query.reason) params.set('reason', query.reason);
  return params.toString();
}
