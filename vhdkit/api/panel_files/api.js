// The one way the panel talks to the server: same-origin fetch, the session
// cookie sent by the browser, the CSRF header on every request that may
// change state, and the API's own error message on failure.

const state = { csrfHeader: 'X-Vhdkit-CSRF', csrf: null };

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export function setCsrf(header, token) {
  if (header) state.csrfHeader = header;
  if (token !== undefined) state.csrf = token;
}

export async function api(method, path, { json, body, contentType, signin } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers[state.csrfHeader] = signin ? 'sign-in' : (state.csrf || '');
  if (json !== undefined) {
    headers['Content-Type'] = contentType || 'application/json';
    body = JSON.stringify(json);
  }
  const resp = await fetch(path, { method, headers, body, credentials: 'same-origin', cache: 'no-store' });
  if (resp.status === 204) return null;
  let data = null;
  const text = await resp.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!resp.ok) {
    const message = (data && data.error && data.error.message) || `${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, message);
  }
  return data;
}

export const seg = (s) => encodeURIComponent(s);
