// The access token of a server with authentication on (`concord serve --auth FILE`).
//
// Open the viewer once as /?token=<token>: the token is kept in sessionStorage (this tab
// only, gone when it closes) and taken out of the address bar and history. Then:
//   fetch(path, { headers: authHeaders({...}) })   for requests (Authorization: Bearer)
//   new EventSource(withToken('/v1/events'))        and WebSocket URLs (?access_token=),
// because browsers cannot set headers on those. Without a token all three change nothing,
// which is what a server with authentication off expects.

const KEY = 'concord.token';

function adoptTokenFromAddress() {
  let url;
  try {
    url = new URL(location.href);
  } catch {
    return;
  }
  const token = url.searchParams.get('token');
  if (token === null) return;
  try {
    if (token.trim()) sessionStorage.setItem(KEY, token.trim());
    else sessionStorage.removeItem(KEY); // `?token=` with nothing: forget it
  } catch {
    // Storage disabled: the token cannot be kept.
  }
  url.searchParams.delete('token');
  history.replaceState(history.state, '', url.pathname + url.search + url.hash);
}

adoptTokenFromAddress();

/** The token this tab sends, or '' if none. */
export function token() {
  try {
    return sessionStorage.getItem(KEY) || '';
  } catch {
    return '';
  }
}

/** Forgets the token (for a "sign out" control, or after a 401). */
export function forgetToken() {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // Nothing kept.
  }
}

/** `headers` plus `Authorization: Bearer <token>` when there is a token. */
export function authHeaders(headers = {}) {
  const t = token();
  return t ? { ...headers, Authorization: `Bearer ${t}` } : headers;
}

/** A same-origin URL (path or ws:// / http:// URL) with `access_token` added when there is a token. */
export function withToken(url) {
  const t = token();
  if (!t) return url;
  const u = new URL(url, location.href);
  u.searchParams.set('access_token', t);
  return /^[a-z]+:/i.test(url) ? u.toString() : u.pathname + u.search + u.hash;
}
