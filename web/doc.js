// The document page: the live JSON tree (over the WebSocket), who changed what (agent
// colours, legend, history timeline), time travel through earlier versions (read-only,
// `?at=`), the conflicts the document holds (`?conflicts=true`), and its lost edits: edits
// that vanished because a concurrent write deleted the object holding them, each of which
// can be restored or dismissed (servers that do not record them send no `lost`: nothing
// is shown then).

import { api, docPath, agentName, ApiError } from './api.js';
import { withToken } from './auth.js';
import { h, clear, shortVersion, clock, fullTime, isoTime, ago, debounce, preview, compact, valueAt, toast } from './util.js';
import { agentColor, strategyColor, STRATEGY_HELP } from './colors.js';
import { JsonTree } from './tree.js';

/** History entries rendered at a time ("show older" adds as many). */
const HISTORY_CHUNK = 100;
/** Values of earlier versions kept for summaries and time travel. */
const VALUE_CACHE = 40;
/** Lost edits listed at a time; the rest are counted. */
const LOST_SHOWN = 50;
/** Nesting the diff of two versions follows; deeper, a subtree is compared whole. */
const DIFF_DEPTH = 64;
/**
 * A document holding a list longer than this is "heavy": reading one of its earlier
 * versions costs the server far more than reading the present (it grows with the square
 * of the list's length), so the history's summaries are made only when asked.
 */
const HEAVY_LIST = 2000;
/** A summary read slower than this (ms) makes the document heavy too. */
const SLOW_READ_MS = 1000;

/** True if a value holds a list longer than HEAVY_LIST, or is too big to look through. */
function hasLongList(value, budget = 200_000) {
  const stack = [value];
  let seen = 0;
  while (stack.length) {
    const v = stack.pop();
    if (v === null || typeof v !== 'object') continue;
    const children = Array.isArray(v) ? v : Object.values(v);
    if (Array.isArray(v) && v.length > HEAVY_LIST) return true;
    seen += children.length;
    if (seen > budget) return true;
    for (const c of children) if (c !== null && typeof c === 'object') stack.push(c);
  }
  return false;
}

// ---------------------------------------------------------------- JSON Patch and diffs

function tokens(path) {
  return path === '' ? [] : path.slice(1).split('/').map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** Applies RFC 6902 operations to `doc` (in place where it can); answers the new value. */
export function applyPatch(doc, ops) {
  let root = doc;
  const parentOf = (path) => {
    const ts = tokens(path);
    const last = ts.pop();
    let p = root;
    for (const t of ts) {
      p = Array.isArray(p) ? p[Number(t)] : p[t];
      if (p === null || typeof p !== 'object') throw new Error(`no container at ${path}`);
    }
    return [p, last];
  };
  const get = (path) => valueAt(root, path);
  const add = (path, value) => {
    if (path === '') {
      root = value;
      return;
    }
    const [p, k] = parentOf(path);
    if (Array.isArray(p)) p.splice(k === '-' ? p.length : Number(k), 0, value);
    else p[k] = value;
  };
  const remove = (path) => {
    if (path === '') {
      root = null;
      return undefined;
    }
    const [p, k] = parentOf(path);
    if (Array.isArray(p)) return p.splice(Number(k), 1)[0];
    const old = p[k];
    delete p[k];
    return old;
  };
  for (const op of ops) {
    switch (op.op) {
      case 'add':
        add(op.path, op.value);
        break;
      case 'remove':
        remove(op.path);
        break;
      case 'replace':
        if (op.path === '') root = op.value;
        else {
          const [p, k] = parentOf(op.path);
          if (Array.isArray(p)) p[Number(k)] = op.value;
          else p[k] = op.value;
        }
        break;
      case 'move':
        add(op.path, remove(op.from));
        break;
      case 'copy':
        add(op.path, structuredClone(get(op.from)));
        break;
      case 'test':
        break;
      default:
        throw new Error(`unknown patch op ${op.op}`);
    }
  }
  return root;
}

/** The operations that turn `a` into `b`: replace/add/remove, by pointer. */
function diff(a, b, path = '', out = [], depth = 0) {
  if (out.length > 200) return out;
  const objA = a !== null && typeof a === 'object';
  const objB = b !== null && typeof b === 'object';
  if (objA && objB && Array.isArray(a) === Array.isArray(b) && depth < DIFF_DEPTH) {
    if (Array.isArray(a)) {
      const common = Math.min(a.length, b.length);
      for (let i = 0; i < common; i += 1) diff(a[i], b[i], `${path}/${i}`, out, depth + 1);
      for (let i = common; i < b.length; i += 1) out.push({ op: 'add', path: `${path}/${i}`, value: b[i] });
      for (let i = a.length - 1; i >= common; i -= 1) out.push({ op: 'remove', path: `${path}/${i}` });
    } else {
      const esc = (k) => k.replace(/~/g, '~0').replace(/\//g, '~1');
      for (const k of Object.keys(b)) {
        if (!(k in a)) out.push({ op: 'add', path: `${path}/${esc(k)}`, value: b[k] });
        else diff(a[k], b[k], `${path}/${esc(k)}`, out, depth + 1);
      }
      for (const k of Object.keys(a)) if (!(k in b)) out.push({ op: 'remove', path: `${path}/${esc(k)}` });
    }
  } else if (JSON.stringify(a) !== JSON.stringify(b)) {
    out.push({ op: 'replace', path, value: b });
  }
  return out;
}

/** One line saying what a patch did: "changed /title → "x" · added /tasks/3 · +2 more". */
export function summarize(ops) {
  if (!ops || !ops.length) return 'no visible change';
  const words = { add: 'added', remove: 'removed', replace: 'changed', move: 'moved', copy: 'copied', test: 'tested' };
  const parts = ops.slice(0, 3).map((op) => {
    const where = op.path === '' ? 'the document' : op.path;
    const scalar = op.value === null || typeof op.value !== 'object';
    const what = (op.op === 'replace' || op.op === 'add') && op.value !== undefined
      ? ` → ${preview(op.value, scalar ? 40 : 20)}`
      : '';
    return `${words[op.op] || op.op} ${where}${what}`;
  });
  if (ops.length > 3) parts.push(`+${ops.length - 3} more`);
  return parts.join(' · ');
}

/** The version after each change of a causally ordered history: its heads, sorted. */
function versionsOf(changes) {
  const heads = new Set();
  return changes.map((c) => {
    for (const d of c.deps || []) heads.delete(d);
    heads.add(c.hash);
    return [...heads].sort().join('.');
  });
}

// ---------------------------------------------------------------- the page

export function mount(main, { id }) {
  const page = new DocPage(main, id);
  page.start();
  return () => page.stop();
}

class DocPage {
  constructor(main, id) {
    this.main = main;
    this.id = id;
    this.stopped = false;
    this.live = { value: undefined, version: null, conflicts: [] };
    this.lostSeq = 0; // reads of the lost edits: only the newest is shown
    this.strategy = null;
    this.changes = [];
    this.versions = [];
    this.mode = 'live'; // or the 1-based index of the version shown
    this.summaries = new Map(); // version -> summary line
    this.values = new Map(); // version -> value (small LRU)
    this.historyShown = HISTORY_CHUNK;
    this.missed = 0; // live changes while travelling
    this.ws = null;
    this.retry = 0;
    this.travelSeq = 0;
    this.summaryQueue = [];
    this.summaryBusy = 0;
    // History and conflicts are read again after changes, no more often than a few times
    // what the last read took (a large document is expensive to read), never two at once.
    this.refreshDelay = 300;
    this.refreshTimer = null;
    this.refreshing = false;
    this.dirty = false;
    // A large document: summaries of old changes (two reads each) only when asked.
    this.heavy = false;
    this.slide = debounce((k) => this.travel(k), 120);
    this.tree = new JsonTree('Document value');
    this.tree.el.append(h('p', { class: 'muted' }, 'Loading the document…'));
    this.build();
  }

  build() {
    const id = this.id;
    this.el = {};
    const e = this.el;
    e.status = h('span', { class: 'pill', 'data-state': 'connecting', role: 'status' }, 'connecting…');
    e.strategy = h('span', { class: 'badge' }, '…');
    e.version = h('code', { class: 'version' }, '…');
    e.count = h('span', {}, '');
    e.range = h('input', {
      type: 'range', id: 'travel', min: '1', max: '1', value: '1', step: '1', disabled: true,
      'aria-describedby': 'travel-out',
    });
    e.rangeOut = h('output', { id: 'travel-out', for: 'travel', class: 'travel-out' }, '');
    e.earlier = h('button', { type: 'button', class: 'small', 'aria-label': 'Earlier version' }, '◀');
    e.later = h('button', { type: 'button', class: 'small', 'aria-label': 'Later version' }, '▶');
    e.liveBtn = h('button', { type: 'button', class: 'small primary', id: 'go-live' }, 'Live');
    e.banner = h(
      'div',
      { class: 'banner', hidden: true, role: 'note' },
      h('strong', {}, 'Time travel · read-only. '),
      h('span', { class: 'banner-text' }, ''),
      ' ',
      h('button', { type: 'button', class: 'small', onclick: () => this.goLive() }, 'Back to live'),
    );
    e.legend = h('ul', { class: 'legend', 'aria-label': 'Agents' });
    e.conflicts = h('div', { class: 'conflict-list' });
    e.lost = h('div', { class: 'lost-list' });
    e.lostSection = h(
      'section',
      { 'aria-labelledby': 'lost-h', class: 'lost-section', hidden: true },
      h('h2', { id: 'lost-h' }, 'Lost edits'),
      e.lost,
    );
    e.history = h('ol', { class: 'history', 'aria-label': 'Changes, newest first' });
    e.historyMore = h('div', { class: 'history-more' });
    e.problem = h('div', { class: 'problem', role: 'alert', hidden: true });
    e.range.addEventListener('input', () => this.slide(Number(e.range.value)));
    e.earlier.addEventListener('click', () => this.step(-1));
    e.later.addEventListener('click', () => this.step(1));
    e.liveBtn.addEventListener('click', () => this.goLive());
    e.history.addEventListener('click', (ev) => {
      const what = ev.target.closest('button[data-what]');
      if (what) {
        what.remove();
        this.wantSummary(Number(what.dataset.what));
        return;
      }
      const b = ev.target.closest('button[data-k]');
      if (b) this.travel(Number(b.dataset.k));
    });
    e.conflicts.addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-path]');
      if (!b) return;
      if (this.mode !== 'live') this.goLive().then(() => this.tree.reveal(b.dataset.path));
      else this.tree.reveal(b.dataset.path);
    });
    e.lost.addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-action]');
      if (b) this.settleLost(b);
    });

    clear(this.main).append(
      h(
        'div',
        { class: 'doc-head' },
        h('p', { class: 'crumbs' }, h('a', { href: '#/' }, 'Documents'), ' / '),
        h('h1', {}, 'Document ', h('code', { class: 'doc-id', title: id }, id)),
        h('p', { class: 'facts' }, e.strategy, ' version ', e.version, ' · ', e.count, ' ', e.status),
      ),
      e.problem,
      h(
        'div',
        { class: 'doc-grid' },
        h(
          'section',
          { class: 'tree-pane', 'aria-labelledby': 'value-h' },
          h('h2', { id: 'value-h', class: 'visually-hidden' }, 'Value'),
          h(
            'div',
            { class: 'travel' },
            h('label', { for: 'travel' }, 'Version'),
            e.earlier,
            e.range,
            e.later,
            e.liveBtn,
            e.rangeOut,
          ),
          e.banner,
          this.tree.el,
          h('p', { class: 'help tree-help' }, 'Keyboard: Tab into the tree; ↑ ↓ move, → ← open and close, Enter toggles.'),
        ),
        h(
          'aside',
          { class: 'side' },
          h('section', { 'aria-labelledby': 'agents-h' }, h('h2', { id: 'agents-h' }, 'Agents'), e.legend),
          h('section', { 'aria-labelledby': 'conflicts-h' }, h('h2', { id: 'conflicts-h' }, 'Conflicts'), e.conflicts),
          e.lostSection,
          h(
            'section',
            { 'aria-labelledby': 'history-h' },
            h('h2', { id: 'history-h' }, 'History'),
            e.history,
            e.historyMore,
          ),
        ),
      ),
    );
    document.title = `Concord · ${id.slice(0, 8)}`;
    this.observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        this.observer.unobserve(entry.target);
        if (!this.heavy) this.wantSummary(Number(entry.target.dataset.k));
      }
    });
  }

  async start() {
    try {
      const t0 = performance.now();
      const doc = await api(`${docPath(this.id)}?conflicts=true`);
      if (this.stopped) return;
      this.heavy = performance.now() - t0 > SLOW_READ_MS || JSON.stringify(doc.value).length > 1_000_000 || hasLongList(doc.value);
      this.refreshDelay = Math.max(300, Math.min(10_000, 2 * (performance.now() - t0)));
      this.strategy = doc.strategy;
      this.live = { value: doc.value, version: doc.version, conflicts: doc.conflicts || [] };
      this.values.set(doc.version, structuredClone(doc.value));
      this.tree.set(doc.value, this.live.conflicts);
      this.showHeader();
      this.showConflicts(this.live.conflicts);
      this.showLost(doc.lost);
    } catch (e) {
      this.fail(e);
      return;
    }
    this.connect();
    await this.loadHistory();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.refreshTimer);
    this.slide.cancel();
    clearTimeout(this.retryTimer);
    this.observer.disconnect();
    if (this.ws) this.ws.close(1000, 'page closed');
  }

  fail(e) {
    const p = this.el.problem;
    p.hidden = false;
    if (e instanceof ApiError && e.status === 404) {
      p.replaceChildren(h('strong', {}, 'No such document. '), e.message, ' ', h('a', { href: '#/' }, 'All documents'));
    } else {
      p.replaceChildren(h('strong', {}, 'Could not load the document. '), e.message || String(e));
    }
    this.setStatus('error', 'not loaded');
  }

  setStatus(state, text) {
    this.el.status.dataset.state = state;
    this.el.status.textContent = text;
  }

  showHeader() {
    const e = this.el;
    e.strategy.textContent = this.strategy || '?';
    e.strategy.style.setProperty('--c', strategyColor(this.strategy));
    e.strategy.title = STRATEGY_HELP[this.strategy] || '';
    e.version.textContent = shortVersion(this.live.version);
    e.version.title = this.live.version || '';
    const n = this.changes.length;
    e.count.textContent = n ? `${n} change${n === 1 ? '' : 's'}` : '';
  }

  // ------------------------------------------------------------ live updates

  connect() {
    if (this.stopped) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}${docPath(this.id, '/ws')}?agent=${encodeURIComponent(agentName())}`;
    const ws = new WebSocket(withToken(url));
    this.ws = ws;
    this.setStatus('connecting', this.retry ? 'reconnecting…' : 'connecting…');
    ws.addEventListener('open', () => {
      const hello = { type: 'subscribe' };
      if (this.live.version) hello.since = this.live.version;
      ws.send(JSON.stringify(hello));
    });
    ws.addEventListener('message', (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.onMessage(msg);
    });
    ws.addEventListener('close', (ev) => {
      if (this.ws !== ws || this.stopped) return;
      this.ws = null;
      if (ev.code === 4404 || ev.code === 4410) {
        // The document does not exist (any more): nothing to reconnect to.
        this.gone();
        return;
      }
      this.setStatus('offline', 'offline, retrying');
      this.retry += 1;
      const delay = Math.min(10000, 300 * 2 ** Math.min(this.retry, 6));
      this.retryTimer = setTimeout(() => this.checkThenConnect(), delay);
    });
  }

  /** Reconnects, unless the document is gone. */
  async checkThenConnect() {
    try {
      const list = await api('/v1/docs');
      if (!list.docs.some((d) => d.id === this.id)) {
        this.gone();
        return;
      }
    } catch {
      // The server is unreachable: keep trying.
    }
    this.connect();
  }

  gone() {
    this.setStatus('error', 'deleted');
    this.el.problem.hidden = false;
    this.el.problem.replaceChildren(
      h('strong', {}, 'This document was deleted. '),
      'What you see is its last version. ',
      h('a', { href: '#/' }, 'All documents'),
    );
  }

  onMessage(msg) {
    switch (msg.type) {
      case 'snapshot': {
        this.retry = 0;
        const changed = msg.version !== this.live.version;
        this.live.value = msg.value;
        this.live.version = msg.version;
        this.values.set(msg.version, structuredClone(msg.value));
        if (this.mode === 'live' && changed) this.tree.set(this.live.value, this.live.conflicts);
        this.setLive();
        if (changed) this.refresh();
        break;
      }
      case 'change':
        this.retry = 0;
        this.setLive();
        this.onChange(msg);
        break;
      case 'error':
        if (msg.status === 404 || msg.status === 410) this.gone();
        else toast(`Live updates: ${msg.detail || msg.title || 'error'}`, 'error');
        break;
      default:
        // subscribed / ack / ping: nothing to show; any message proves the link is up.
        this.setLive();
    }
  }

  setLive() {
    if (this.mode === 'live') this.setStatus('live', 'live');
    else this.setStatus('past', this.missed ? `time travel · ${this.missed} new` : 'time travel');
  }

  onChange(msg) {
    if (msg.previous && this.live.version && msg.previous !== this.live.version) {
      // We missed something: resubscribe from what we have.
      this.ws?.close();
      return;
    }
    if (msg.version === this.live.version) return;
    const ops = msg.patch || [];
    try {
      this.live.value = applyPatch(this.live.value, ops);
    } catch {
      this.ws?.close();
      return;
    }
    this.live.version = msg.version;
    this.summaries.set(msg.version, summarize(ops));
    if (this.mode === 'live') {
      this.tree.applyChange(this.live.value, ops, msg.agent);
    } else {
      this.missed += 1;
      this.setLive();
    }
    this.showHeader();
    this.refresh();
  }

  /** Reads the history (new entries) and the conflicts again, soon. */
  refresh() {
    this.dirty = true;
    if (this.refreshTimer || this.refreshing || this.stopped) return;
    this.refreshTimer = setTimeout(() => this.refreshMeta(), this.refreshDelay);
  }

  async refreshMeta() {
    this.refreshTimer = null;
    if (this.stopped) return;
    this.dirty = false;
    this.refreshing = true;
    const t0 = performance.now();
    await Promise.all([this.loadHistory(), this.mode === 'live' ? this.loadConflicts() : null]);
    this.refreshDelay = Math.max(300, Math.min(10_000, 2 * (performance.now() - t0)));
    this.refreshing = false;
    if (this.dirty) this.refresh();
  }

  async loadConflicts() {
    const seq = ++this.lostSeq;
    try {
      const doc = await api(`${docPath(this.id)}?conflicts=true`);
      if (this.stopped) return;
      // Lost edits belong to the present, not to the tree's version: the newest read wins.
      if (seq === this.lostSeq) this.showLost(doc.lost);
      // Only take them if nothing newer arrived meanwhile (then another read follows).
      if (doc.version !== this.live.version) {
        this.dirty = true;
        return;
      }
      this.live.conflicts = doc.conflicts || [];
      if (this.mode === 'live') this.tree.setConflicts(this.live.conflicts);
      this.showConflicts(this.live.conflicts);
    } catch (e) {
      toast(`Could not read conflicts: ${e.message}`, 'error');
    }
  }

  showConflicts(conflicts, past = false) {
    const box = this.el.conflicts;
    if (!conflicts.length) {
      box.replaceChildren(h('p', { class: 'muted' }, past ? 'None at this version.' : 'None: every field has one value.'));
      return;
    }
    box.replaceChildren(
      h('p', { class: 'muted' }, `${conflicts.length} field${conflicts.length === 1 ? '' : 's'} kept concurrent values:`),
      h(
        'ul',
        {},
        conflicts.map((c) =>
          h(
            'li',
            {},
            h('button', { type: 'button', class: 'link', 'data-path': c.path }, c.path || '(document)'),
            ' ',
            (c.values || []).map((v) =>
              h('span', { class: 'chip', style: { '--agent': agentColor(v.agent) }, title: compact(v.value, 300) }, v.agent || '?'),
            ),
          ),
        ),
      ),
    );
  }

  // ------------------------------------------------------------ lost edits

  /** Lists the lost edits (`lost` of `?conflicts=true`); without the field, nothing. */
  showLost(lost) {
    const section = this.el.lostSection;
    const box = this.el.lost;
    if (!Array.isArray(lost)) {
      section.hidden = true;
      box.replaceChildren();
      return;
    }
    section.hidden = false;
    const records = lost.filter((r) => r !== null && typeof r === 'object');
    if (!records.length) {
      box.replaceChildren(h('p', { class: 'muted' }, 'None: no edit vanished under a concurrent delete.'));
      return;
    }
    const names = (list) => (Array.isArray(list) ? list : []).map((a) => (a === null || a === undefined ? null : String(a)));
    const chips = (list) => {
      const agents = names(list);
      if (!agents.length) return h('span', { class: 'muted' }, 'unknown');
      return agents.map((a) => h('span', { class: 'chip', style: { '--agent': agentColor(a) }, 'data-agent': a || '' }, a || 'unknown agent'));
    };
    const items = records.slice(0, LOST_SHOWN).map((r) => {
      const id = r.id === null || r.id === undefined ? '' : String(r.id);
      const path = typeof r.path === 'string' ? r.path : String(r.path ?? '');
      const where = path || '(document)';
      const deletedBy = names(r.deleted_by).map((a) => a || 'unknown agent').join(', ') || 'unknown';
      return h(
        'li',
        { class: 'lost-item', 'data-lost-id': id, 'data-path': path },
        h(
          'div',
          { class: 'lost-head' },
          h('code', { class: 'lost-path', title: path }, where),
          h('time', { datetime: isoTime(r.time), title: fullTime(r.time) }, ago(r.time)),
        ),
        h('p', { class: 'lost-who' }, h('span', { class: 'muted' }, 'deleted by '), chips(r.deleted_by)),
        h('p', { class: 'lost-who' }, h('span', { class: 'muted' }, 'edits lost '), chips(r.edited_by)),
        h('code', { class: 'lost-value', title: compact(r.value, 2000, 12) }, compact(r.value, 160)),
        id
          ? h(
            'div',
            { class: 'lost-actions' },
            h('button', { type: 'button', class: 'small primary', 'data-action': 'restore', 'aria-label': `Restore ${where}, deleted by ${deletedBy}` }, 'Restore'),
            h('button', { type: 'button', class: 'small', 'data-action': 'dismiss', 'aria-label': `Dismiss the lost edit at ${where}` }, 'Dismiss'),
          )
          : null,
      );
    });
    const n = records.length;
    box.replaceChildren(
      h('p', { class: 'muted' }, `${n} edit${n === 1 ? '' : 's'} vanished when a concurrent write deleted ${n === 1 ? 'its object' : 'their objects'}:`),
      h('ul', {}, items),
      ...(n > LOST_SHOWN ? [h('p', { class: 'muted' }, `and ${(n - LOST_SHOWN).toLocaleString()} more`)] : []),
    );
  }

  /** Restores or dismisses one lost edit (its button was clicked), then reads them again. */
  async settleLost(button) {
    const item = button.closest('li[data-lost-id]');
    const lostId = item?.dataset.lostId;
    if (!lostId) return;
    const restore = button.dataset.action === 'restore';
    const where = item.dataset.path || 'the document';
    for (const b of item.querySelectorAll('button')) b.disabled = true;
    item.classList.add('busy');
    const path = docPath(this.id, `/lost/${encodeURIComponent(lostId)}${restore ? '/restore' : ''}`);
    try {
      await api(path, { method: restore ? 'POST' : 'DELETE' });
      toast(restore ? `Restored ${where}` : `Dismissed the lost edit at ${where}`);
    } catch (e) {
      if (this.stopped) return;
      const gone = e instanceof ApiError && e.status === 404;
      toast(gone ? `That lost edit is gone already (restored or dismissed elsewhere)` : `Could not ${restore ? 'restore' : 'dismiss'} ${where}: ${e.message}`, 'error');
    }
    if (!this.stopped) await this.loadConflicts();
  }

  // ------------------------------------------------------------ history

  async loadHistory() {
    let history;
    try {
      history = await api(docPath(this.id, '/history'));
    } catch (e) {
      if (!this.stopped) toast(`Could not read the history: ${e.message}`, 'error');
      return;
    }
    if (this.stopped) return;
    this.changes = (Array.isArray(history?.changes) ? history.changes : []).filter((c) => c !== null && typeof c === 'object');
    this.versions = versionsOf(this.changes);
    const n = this.changes.length;
    const r = this.el.range;
    r.max = String(Math.max(1, n));
    r.disabled = n < 2;
    if (this.mode === 'live') r.value = String(n);
    this.showHeader();
    this.showLegend();
    this.showHistory();
    this.showTravel();
  }

  showLegend() {
    const agents = new Map();
    for (const c of this.changes) {
      const a = c.agent || 'anonymous';
      const seen = agents.get(a) || { count: 0, last: 0 };
      seen.count += 1;
      seen.last = Math.max(seen.last, Number(c.time) * 1000 || 0);
      agents.set(a, seen);
    }
    const sorted = [...agents.entries()].sort((x, y) => y[1].last - x[1].last);
    this.el.legend.replaceChildren(
      ...sorted.map(([agent, { count, last }]) =>
        h(
          'li',
          { 'data-agent': agent, title: `last change ${fullTime(last)}` },
          h('span', { class: 'swatch', style: { '--agent': agentColor(agent) }, 'aria-hidden': 'true' }),
          h('span', { class: 'agent' }, agent),
          h('span', { class: 'muted' }, ` ${count} change${count === 1 ? '' : 's'}`),
        ),
      ),
    );
  }

  showHistory() {
    const n = this.changes.length;
    const shown = Math.min(n, this.historyShown);
    const current = this.mode === 'live' ? n : this.mode;
    const items = [];
    for (let k = n; k > n - shown; k -= 1) {
      const c = this.changes[k - 1];
      const agent = c.agent || 'anonymous';
      const version = this.versions[k - 1];
      const summary = this.summaries.get(version);
      const li = h(
        'li',
        { 'data-k': String(k), class: k === current ? 'current' : '' },
        h(
          'button',
          {
            type: 'button',
            'data-k': String(k),
            'aria-current': k === current ? 'step' : null,
            'aria-label': `Version ${k}: ${agent}, ${clock(c.time * 1000)}${summary ? `, ${summary}` : ''}`,
          },
          h('span', { class: 'swatch', style: { '--agent': agentColor(agent) }, 'aria-hidden': 'true' }),
          h(
            'span',
            { class: 'h-main' },
            h(
              'span',
              { class: 'h-top' },
              h('span', { class: 'agent' }, agent),
              h('time', { datetime: isoTime(c.time * 1000), title: fullTime(c.time * 1000) }, clock(c.time * 1000)),
              h('span', { class: 'muted k' }, `#${k}`),
            ),
            h('span', { class: 'h-sum' }, summary || (k === 1 ? 'created' : `${c.ops} op${c.ops === 1 ? '' : 's'}`)),
            c.message ? h('span', { class: 'h-msg' }, c.message) : null,
          ),
        ),
      );
      items.push(li);
    }
    this.el.history.replaceChildren(...items);
    this.observer.disconnect();
    for (const li of items) {
      if (this.summaries.has(this.versions[Number(li.dataset.k) - 1])) continue;
      if (this.heavy) {
        li.append(h('button', { type: 'button', class: 'small what', 'data-what': li.dataset.k }, 'what changed?'));
      } else this.observer.observe(li);
    }
    this.el.historyMore.replaceChildren(
      shown < n
        ? h(
          'button',
          {
            type: 'button',
            class: 'small',
            onclick: () => {
              this.historyShown += HISTORY_CHUNK;
              this.showHistory();
            },
          },
          `Show older (${(n - shown).toLocaleString()} more)`,
        )
        : '',
    );
  }

  /** Works out what change k did, when its entry is on screen (two reads, cached). */
  wantSummary(k) {
    const version = this.versions[k - 1];
    if (!version || this.summaries.has(version)) return;
    this.summaryQueue.push(k);
    this.pumpSummaries();
  }

  async pumpSummaries() {
    while (this.summaryBusy < 2 && this.summaryQueue.length && !this.stopped) {
      const k = this.summaryQueue.shift();
      const version = this.versions[k - 1];
      if (this.summaries.has(version)) continue;
      this.summaryBusy += 1;
      (async () => {
        try {
          const after = await this.valueAt(version);
          let text;
          if (k === 1) text = `created ${preview(after)}`;
          else text = summarize(diff(await this.valueAt(this.versions[k - 2]), after));
          this.summaries.set(version, text);
          const li = this.el.history.querySelector(`li[data-k="${k}"]`);
          const sum = li?.querySelector('.h-sum');
          if (sum) sum.textContent = text;
        } catch {
          // Leave the op count shown.
        } finally {
          this.summaryBusy -= 1;
          this.pumpSummaries();
        }
      })();
    }
  }

  async valueAt(version) {
    if (this.values.has(version)) {
      const v = this.values.get(version);
      this.values.delete(version);
      this.values.set(version, v);
      return v;
    }
    const t0 = performance.now();
    const doc = await api(`${docPath(this.id)}?at=${encodeURIComponent(version)}`);
    if (!this.heavy && performance.now() - t0 > SLOW_READ_MS && !this.stopped) {
      // Earlier versions are slow to read: no more summaries unless asked for.
      this.heavy = true;
      this.summaryQueue = [];
      this.showHistory();
    }
    this.values.set(version, doc.value);
    while (this.values.size > VALUE_CACHE) this.values.delete(this.values.keys().next().value);
    return doc.value;
  }

  // ------------------------------------------------------------ time travel

  step(delta) {
    const n = this.changes.length;
    const current = this.mode === 'live' ? n : this.mode;
    const k = Math.max(1, Math.min(n, current + delta));
    if (k !== current) this.travel(k);
  }

  async travel(k) {
    const n = this.changes.length;
    if (!n) return;
    if (k >= n) {
      await this.goLive();
      return;
    }
    const seq = ++this.travelSeq;
    const version = this.versions[k - 1];
    this.mode = k;
    this.el.range.value = String(k);
    this.showTravel();
    this.markCurrent();
    try {
      const doc = await api(`${docPath(this.id)}?at=${encodeURIComponent(version)}&conflicts=true`);
      if (seq !== this.travelSeq || this.stopped) return;
      this.tree.el.classList.add('past');
      this.tree.set(doc.value, doc.conflicts || []);
      this.showConflicts(doc.conflicts || [], true);
      this.setLive();
    } catch (e) {
      if (seq === this.travelSeq) toast(`Could not read version ${k}: ${e.message}`, 'error');
    }
  }

  async goLive() {
    this.travelSeq += 1;
    const wasPast = this.mode !== 'live';
    this.mode = 'live';
    this.missed = 0;
    this.el.range.value = String(this.changes.length);
    this.showTravel();
    this.markCurrent();
    this.tree.el.classList.remove('past');
    if (wasPast) {
      this.tree.set(this.live.value, this.live.conflicts);
      this.showConflicts(this.live.conflicts);
      await this.loadConflicts();
    }
    this.setLive();
  }

  markCurrent() {
    const n = this.changes.length;
    const current = this.mode === 'live' ? n : this.mode;
    for (const li of this.el.history.children) {
      const on = Number(li.dataset.k) === current;
      li.classList.toggle('current', on);
      const b = li.querySelector('button');
      if (on) b.setAttribute('aria-current', 'step');
      else b.removeAttribute('aria-current');
    }
  }

  showTravel() {
    const n = this.changes.length;
    const e = this.el;
    const past = this.mode !== 'live';
    const k = past ? this.mode : n;
    const c = this.changes[k - 1];
    e.earlier.disabled = k <= 1;
    e.later.disabled = !past;
    e.liveBtn.disabled = !past;
    e.liveBtn.setAttribute('aria-pressed', String(!past));
    if (!c) {
      e.rangeOut.textContent = '';
      return;
    }
    const who = `${c.agent || 'anonymous'}, ${clock(c.time * 1000)} (${ago(c.time * 1000)})`;
    e.rangeOut.textContent = `${k} of ${n} · ${who}${past ? '' : ' · live'}`;
    e.range.setAttribute('aria-valuetext', `version ${k} of ${n}, ${who}${past ? '' : ', live'}`);
    e.banner.hidden = !past;
    if (past) {
      e.banner.querySelector('.banner-text').textContent =
        `Version ${k} of ${n}, written by ${who}. Newer changes are not shown.`;
    }
  }
}
