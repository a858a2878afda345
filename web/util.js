// Small helpers shared by every page: building elements, formatting, JSON Pointers.

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Appends children (nodes, strings, arrays, null) to an element. */
function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') {
      for (const [p, pv] of Object.entries(v)) el.style.setProperty(p, pv);
    } else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  return el;
}

/** An HTML element: h('div', {class: 'x', onclick: f}, 'text', child). */
export function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

/** Removes every child of an element. */
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** A version (heads joined by '.') shortened for display: 7 hex digits per head. */
export function shortVersion(version) {
  if (!version) return '—';
  return String(version)
    .split('.')
    .filter(Boolean)
    .map((head) => head.slice(0, 7))
    .join('+');
}

/** The largest time a Date can hold, ms either side of 1970. */
const MAX_DATE_MS = 8.64e15;

/** `ms` as a number a Date can hold, or null (not a number, infinite, out of range). */
export function validMs(ms) {
  const n = typeof ms === 'number' ? ms : Number(ms);
  return ms !== null && ms !== '' && Number.isFinite(n) && Math.abs(n) <= MAX_DATE_MS ? n : null;
}

/** An ISO 8601 timestamp (for a datetime attribute), or null for a time no Date holds. */
export function isoTime(ms) {
  const n = validMs(ms);
  return n === null ? null : new Date(n).toISOString();
}

/** "12:03:04" today, or "3 Mar 12:03" on another day. */
export function clock(ms) {
  if (!ms) return '—';
  const n = validMs(ms);
  if (n === null) return 'invalid time';
  const d = new Date(n);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.toLocaleDateString([], { day: 'numeric', month: 'short' })} ${time}`;
}

/** "5 s ago", "3 min ago"… */
export function ago(ms, now = Date.now()) {
  if (!ms) return '—';
  const n = validMs(ms);
  if (n === null) return 'invalid time';
  if (n - now > 60_000) return 'in the future';
  const s = Math.max(0, Math.round((now - n) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A full, unambiguous timestamp for a title attribute. */
export function fullTime(ms) {
  if (!ms) return '';
  const iso = isoTime(ms);
  if (iso === null) return `not a valid time (${String(ms).slice(0, 40)} ms since 1970)`;
  return iso.replace('T', ' ').replace('Z', ' UTC');
}

/** Calls f at most once per `ms`, with the latest arguments, after the calls stop. */
export function debounce(f, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      f(...args);
    }, ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** The pointer of a child: parent pointer + escaped token. */
export function childPointer(parent, key) {
  return `${parent}/${String(key).replace(/~/g, '~0').replace(/\//g, '~1')}`;
}

/** The tokens of a JSON Pointer. */
export function pointerTokens(pointer) {
  if (!pointer) return [];
  return pointer
    .slice(1)
    .split('/')
    .map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** The parent pointer ('' for the root's children). */
export function parentPointer(pointer) {
  const i = pointer.lastIndexOf('/');
  return i <= 0 ? '' : pointer.slice(0, i);
}

/** Every ancestor of a pointer, nearest last, the root ('') first. */
export function ancestors(pointer) {
  const out = [''];
  const tokens = pointer ? pointer.slice(1).split('/') : [];
  let p = '';
  for (let i = 0; i < tokens.length - 1; i += 1) {
    p += `/${tokens[i]}`;
    out.push(p);
  }
  return out;
}

/** The value at a pointer, or undefined. */
export function valueAt(value, pointer) {
  let v = value;
  for (const t of pointerTokens(pointer)) {
    if (v === null || typeof v !== 'object') return undefined;
    v = Array.isArray(v) ? v[Number(t)] : v[t];
  }
  return v;
}

/** A short, one-line rendering of a JSON value. */
export function preview(value, max = 60) {
  let text;
  if (value === undefined) text = '(nothing)';
  else if (Array.isArray(value)) text = `[${value.length} item${value.length === 1 ? '' : 's'}]`;
  else if (value !== null && typeof value === 'object') {
    const n = Object.keys(value).length;
    text = `{${n} key${n === 1 ? '' : 's'}}`;
  } else text = JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * A compact one-line rendering of a JSON value, at most `max` characters and `depth`
 * levels deep: "{"id": 2, "t": "b"}", "[1, 2, …]". It stops reading as soon as it is full,
 * so a huge or very deep value costs no more than a small one.
 */
export function compact(value, max = 160, depth = 6) {
  let out = '';
  let full = false;
  const put = (text) => {
    if (full) return;
    if (out.length + text.length > max) {
      out += text.slice(0, Math.max(0, max - out.length));
      full = true;
    } else out += text;
  };
  const scalar = (v) => {
    if (typeof v === 'string') return JSON.stringify(v.length > max ? v.slice(0, max) : v);
    if (v === undefined) return '(nothing)';
    return JSON.stringify(v) ?? String(v);
  };
  const walk = (v, level) => {
    if (full) return;
    if (v === null || typeof v !== 'object') {
      put(scalar(v));
      return;
    }
    const list = Array.isArray(v);
    if (level >= depth) {
      put(list ? `[${v.length ? '…' : ''}]` : '{…}');
      return;
    }
    put(list ? '[' : '{');
    let i = 0;
    if (list) {
      for (; i < v.length && !full; i += 1) {
        if (i) put(', ');
        walk(v[i], level + 1);
      }
    } else {
      for (const k in v) {
        if (full) break;
        if (!Object.prototype.hasOwnProperty.call(v, k)) continue;
        if (i) put(', ');
        put(`${scalar(k)}: `);
        walk(v[k], level + 1);
        i += 1;
      }
    }
    put(list ? ']' : '}');
  };
  walk(value, 0);
  return full ? `${out}…` : out;
}

/** Shows a short message in the status area (read by screen readers). */
export function toast(message, kind = 'info') {
  const el = document.getElementById('toast');
  if (!el) return;
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add('shown');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove('shown'), 4000);
}

/** Formats a number for a table cell. */
export function num(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}
