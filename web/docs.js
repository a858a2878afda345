// The documents page: every document (strategy, version, last change and agent), kept up
// to date by the global event feed (`GET /v1/events`), and a form to create one.

import { api, ApiError } from './api.js';
import { withToken } from './auth.js';
import { h, clear, shortVersion, ago, fullTime, debounce, toast } from './util.js';
import { agentColor, strategyColor, STRATEGIES, STRATEGY_HELP } from './colors.js';

/** Rows rendered at a time ("show more" adds as many). */
const ROWS = 200;
/** When the feed is unavailable, how often the list is read again, ms. */
const POLL_MS = 5000;

const EXAMPLE = `{
  "title": "Launch plan",
  "status": "draft",
  "tasks": [
    {"name": "write the brief", "done": true},
    {"name": "review", "done": false}
  ],
  "notes": "",
  "votes": 0
}`;

export function mount(main) {
  const page = new DocsPage(main);
  page.start();
  return () => page.stop();
}

class DocsPage {
  constructor(main) {
    this.main = main;
    this.docs = new Map(); // id -> {id, strategy, version, changes, updated_at, last_agent}
    this.shown = ROWS;
    this.filter = '';
    this.stopped = false;
    this.render = debounce(() => this.renderRows(), 50);
    this.build();
  }

  build() {
    const e = (this.el = {});
    e.feed = h('span', { class: 'pill', 'data-state': 'connecting', role: 'status' }, 'connecting…');
    e.body = h('tbody', {});
    e.more = h('div', { class: 'table-more' });
    e.count = h('span', { class: 'muted' }, '');
    e.filter = h('input', {
      type: 'search', id: 'doc-filter', placeholder: 'id, strategy or agent', autocomplete: 'off',
      oninput: (ev) => {
        this.filter = ev.target.value.trim().toLowerCase();
        this.render();
      },
    });
    e.value = h('textarea', {
      id: 'new-value', rows: '11', spellcheck: 'false', 'aria-describedby': 'new-value-help',
    });
    e.value.value = EXAMPLE;
    e.valueHelp = h('p', { id: 'new-value-help', class: 'help' }, 'A JSON value; objects are the usual root.');
    e.strategy = h(
      'select',
      { id: 'new-strategy', 'aria-describedby': 'new-strategy-help' },
      ['crdt', ...STRATEGIES.filter((s) => s !== 'crdt')].map((s) => h('option', { value: s }, s)),
    );
    e.strategyHelp = h('p', { id: 'new-strategy-help', class: 'help' }, STRATEGY_HELP.crdt);
    e.strategy.addEventListener('change', () => {
      e.strategyHelp.textContent = STRATEGY_HELP[e.strategy.value] || '';
    });
    e.text = h('input', { id: 'new-text', placeholder: '/notes, /tasks/*/name', autocomplete: 'off', 'aria-describedby': 'new-text-help' });
    e.counters = h('input', { id: 'new-counters', placeholder: '/votes', autocomplete: 'off', 'aria-describedby': 'new-counters-help' });
    e.id = h('input', { id: 'new-id', placeholder: 'optional UUID', autocomplete: 'off', spellcheck: 'false' });
    e.formError = h('p', { class: 'form-error', role: 'alert', hidden: true });
    e.submit = h('button', { type: 'submit', class: 'primary', id: 'create' }, 'Create document');
    e.value.addEventListener('input', () => this.checkValue());

    const form = h(
      'form',
      { class: 'create', 'aria-labelledby': 'create-h', novalidate: true, onsubmit: (ev) => this.create(ev) },
      h('h2', { id: 'create-h' }, 'New document'),
      h('label', { for: 'new-value' }, 'Value (JSON)'),
      e.value,
      e.valueHelp,
      h('label', { for: 'new-strategy' }, 'Write strategy'),
      e.strategy,
      e.strategyHelp,
      h('label', { for: 'new-text' }, 'Collaborative text at'),
      e.text,
      h('p', { id: 'new-text-help', class: 'help' }, 'JSON Pointer patterns, comma separated (* matches one segment): strings there merge character by character.'),
      h('label', { for: 'new-counters' }, 'Counters at'),
      e.counters,
      h('p', { id: 'new-counters-help', class: 'help' }, 'Numbers there are counters: concurrent increments add up.'),
      h('label', { for: 'new-id' }, 'Id'),
      e.id,
      e.formError,
      e.submit,
    );

    clear(this.main).append(
      h(
        'div',
        { class: 'docs-grid' },
        h(
          'section',
          { 'aria-labelledby': 'docs-h' },
          h('div', { class: 'section-head' }, h('h1', { id: 'docs-h' }, 'Documents'), e.count, e.feed),
          h('div', { class: 'filter' }, h('label', { for: 'doc-filter' }, 'Filter'), e.filter),
          h(
            'div',
            { class: 'table-wrap' },
            h(
              'table',
              { class: 'docs', id: 'docs-table' },
              h('caption', { class: 'visually-hidden' }, 'Documents, most recently changed first'),
              h(
                'thead',
                {},
                h(
                  'tr',
                  {},
                  ['Document', 'Strategy', 'Version', 'Changes', 'Last change', 'By'].map((t) => h('th', { scope: 'col' }, t)),
                ),
              ),
              e.body,
            ),
          ),
          e.more,
        ),
        form,
      ),
    );
    document.title = 'Concord · documents';
  }

  async start() {
    await this.load();
    this.listen();
    this.tick = setInterval(() => this.refreshTimes(), 10000);
  }

  stop() {
    this.stopped = true;
    this.render.cancel();
    clearInterval(this.tick);
    clearInterval(this.poll);
    this.source?.close();
  }

  async load() {
    try {
      const list = await api('/v1/docs');
      if (this.stopped) return;
      const fresh = new Map();
      for (const d of list.docs || []) fresh.set(d.id, d);
      this.docs = fresh;
      this.renderRows();
    } catch (e) {
      if (!this.stopped) toast(`Could not list documents: ${e.message}`, 'error');
    }
  }

  setFeed(state, text) {
    this.el.feed.dataset.state = state;
    this.el.feed.textContent = text;
  }

  /** The global feed; if the server has none, read the list every few seconds. */
  listen() {
    if (this.stopped) return;
    const source = new EventSource(withToken('/v1/events'));
    this.source = source;
    let opened = false;
    source.addEventListener('open', () => {
      if (opened) this.load(); // Catch up with what happened while disconnected.
      opened = true;
      this.setFeed('live', 'live');
    });
    const on = (name, f) =>
      source.addEventListener(name, (ev) => {
        try {
          f(JSON.parse(ev.data));
        } catch {
          // A malformed event: ignore it.
        }
      });
    on('created', (d) => this.upsert(d, true));
    on('changed', (d) => this.upsert(d, false));
    // The feed dropped events for this (slow) viewer: read the whole list again.
    on('lagged', () => this.load());
    on('deleted', (d) => {
      this.docs.delete(d.id);
      this.render();
    });
    source.addEventListener('error', () => {
      if (source.readyState === EventSource.CLOSED) {
        // Not a feed (or refused): fall back to reading the list.
        this.setFeed('offline', 'polling');
        this.poll = setInterval(() => this.load(), POLL_MS);
      } else {
        this.setFeed('connecting', 'reconnecting…');
      }
    });
  }

  upsert(event, created) {
    const before = this.docs.get(event.id) || {};
    this.docs.set(event.id, {
      ...before,
      id: event.id,
      strategy: event.strategy ?? before.strategy,
      version: event.version ?? before.version,
      changes: event.changes ?? before.changes,
      updated_at: event.time_ms ?? before.updated_at,
      created_at: before.created_at ?? (created ? event.time_ms : undefined),
      last_agent: event.agent ?? before.last_agent,
    });
    (this.flashIds ||= new Set()).add(event.id);
    this.render();
  }

  matches(d) {
    if (!this.filter) return true;
    return [d.id, d.strategy, d.last_agent].some((x) => String(x || '').toLowerCase().includes(this.filter));
  }

  renderRows() {
    const all = [...this.docs.values()].sort((a, b) => (b.updated_at || 0) - (a.updated_at || 0));
    const docs = all.filter((d) => this.matches(d));
    const rows = docs.slice(0, this.shown);
    const flash = this.flashIds || new Set();
    this.flashIds = new Set();
    this.el.count.textContent = `${all.length} document${all.length === 1 ? '' : 's'}`;
    if (!all.length) {
      this.el.body.replaceChildren(
        h('tr', {}, h('td', { colspan: '6', class: 'empty' }, 'No documents yet. Create one with the form, or POST /v1/docs.')),
      );
    } else {
      this.el.body.replaceChildren(...rows.map((d) => this.row(d, flash.has(d.id))));
    }
    this.el.more.replaceChildren(
      docs.length > rows.length
        ? h(
          'button',
          { type: 'button', class: 'small', onclick: () => { this.shown += ROWS; this.renderRows(); } },
          `Show more (${(docs.length - rows.length).toLocaleString()} hidden)`,
        )
        : '',
    );
  }

  row(d, flash) {
    const agent = d.last_agent || '';
    const tr = h(
      'tr',
      { 'data-id': d.id, class: flash ? 'flash' : '' },
      h('td', {}, h('a', { href: `#/doc/${d.id}`, class: 'doc-link' }, h('code', {}, d.id))),
      h('td', {}, h('span', { class: 'badge', style: { '--c': strategyColor(d.strategy) }, title: STRATEGY_HELP[d.strategy] || '' }, d.strategy || '?')),
      h('td', {}, h('code', { class: 'version', title: d.version || '' }, shortVersion(d.version))),
      h('td', { class: 'num' }, d.changes ?? '—'),
      h('td', {}, h('time', { 'data-ms': String(d.updated_at || ''), title: fullTime(d.updated_at) }, ago(d.updated_at))),
      h(
        'td',
        { class: 'by' },
        agent ? h('span', { class: 'swatch', style: { '--agent': agentColor(agent) }, 'aria-hidden': 'true' }) : null,
        agent || '—',
      ),
    );
    if (flash) {
      tr.style.setProperty('--agent', agentColor(agent));
      tr.addEventListener('animationend', () => tr.classList.remove('flash'), { once: true });
    }
    return tr;
  }

  refreshTimes() {
    for (const t of this.el.body.querySelectorAll('time[data-ms]')) {
      const ms = Number(t.dataset.ms);
      if (ms) t.textContent = ago(ms);
    }
  }

  checkValue() {
    const e = this.el;
    try {
      JSON.parse(e.value.value);
      e.value.removeAttribute('aria-invalid');
      e.valueHelp.textContent = 'A JSON value; objects are the usual root.';
      e.valueHelp.classList.remove('bad');
      return true;
    } catch (err) {
      e.value.setAttribute('aria-invalid', 'true');
      e.valueHelp.textContent = `Not JSON: ${err.message}`;
      e.valueHelp.classList.add('bad');
      return false;
    }
  }

  async create(ev) {
    ev.preventDefault();
    const e = this.el;
    e.formError.hidden = true;
    if (!this.checkValue()) {
      e.value.focus();
      return;
    }
    const list = (input) => input.value.split(',').map((x) => x.trim()).filter(Boolean);
    const body = { value: JSON.parse(e.value.value), strategy: e.strategy.value };
    const text = list(e.text);
    const counters = list(e.counters);
    if (text.length) body.text = text;
    if (counters.length) body.counters = counters;
    if (e.id.value.trim()) body.id = e.id.value.trim();
    e.submit.disabled = true;
    try {
      const doc = await api('/v1/docs', { method: 'POST', body });
      location.hash = `#/doc/${doc.id}`;
    } catch (err) {
      e.formError.hidden = false;
      e.formError.textContent = err instanceof ApiError ? `${err.problem.title || 'Refused'}: ${err.message}` : String(err);
    } finally {
      e.submit.disabled = false;
    }
  }
}
