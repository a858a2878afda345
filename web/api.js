// The HTTP API of the server that served this page: JSON requests, problem+json errors,
// and Server-Sent Events read from a fetch response (EventSource cannot POST).

import { authHeaders } from './auth.js';

const AGENT_KEY = 'concord.agent';

/** The name this browser writes as (Concord-Agent), kept across visits. */
export function agentName() {
  let name = '';
  try {
    name = localStorage.getItem(AGENT_KEY) || '';
  } catch {
    // Storage may be disabled; fall back to the default name.
  }
  return name.trim() || 'viewer';
}

export function setAgentName(name) {
  try {
    localStorage.setItem(AGENT_KEY, name.trim());
  } catch {
    // Not kept across visits then; the name still applies to this page.
  }
}

/** An error answered by the server (RFC 9457 problem details) or by the network. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function problemOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body === 'object') return body;
  } catch {
    // Not JSON: use the text.
  }
  return { title: response.statusText, status: response.status, detail: text.slice(0, 300) };
}

/**
 * Sends a request; answers the JSON body (with `etag`), or throws an ApiError.
 * options: method, body (JSON value), type (Content-Type), headers, signal.
 */
export async function api(path, options = {}) {
  const headers = authHeaders({ Accept: 'application/json', ...(options.headers || {}) });
  let body;
  if (options.body !== undefined) {
    headers['Content-Type'] = options.type || 'application/json';
    body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
  }
  if (options.method && options.method !== 'GET') headers['Concord-Agent'] = agentName();
  let response;
  try {
    response = await fetch(path, { method: options.method || 'GET', headers, body, signal: options.signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { title: 'Network error', detail: `cannot reach the server: ${e.message}` });
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  if (response.status === 204) return null;
  const json = await response.json();
  const etag = response.headers.get('ETag');
  if (etag && json && typeof json === 'object') {
    Object.defineProperty(json, 'etag', { value: etag.replace(/^W\//, '').replace(/"/g, ''), enumerable: false });
  }
  return json;
}

/**
 * POSTs JSON and reads the answer as Server-Sent Events, calling onEvent(name, data) for
 * each (data parsed as JSON when it is JSON). Resolves when the stream ends.
 */
export async function postEvents(path, body, onEvent, signal) {
  let response;
  try {
    response = await fetch(path, {
      method: 'POST',
      headers: authHeaders({ 'Content-Type': 'application/json', Accept: 'text/event-stream', 'Concord-Agent': agentName() }),
      body: JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { title: 'Network error', detail: `cannot reach the server: ${e.message}` });
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  const type = response.headers.get('Content-Type') || '';
  if (!type.startsWith('text/event-stream')) {
    // A plain JSON answer is taken as the result.
    onEvent('result', await response.json());
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      dispatch(block, onEvent);
    }
  }
  if (buffer.trim()) dispatch(buffer, onEvent);
}

function dispatch(block, onEvent) {
  let name = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length) return;
  const text = data.join('\n');
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Keep the text.
  }
  onEvent(name, parsed);
}

/** Path of a document. */
export function docPath(id, suffix = '') {
  return `/v1/docs/${encodeURIComponent(id)}${suffix}`;
}
