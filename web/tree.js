// The JSON tree of a document: nested lists with a toggle per object and array.
//
// Large documents stay responsive because only what is open is in the page: subtrees
// deeper than a few levels start closed, and children are rendered CHUNK at a time
// ("show more"). A change re-renders only the subtrees its patch touched, and then
// highlights them in the colour of the agent that made it. Nesting past MAX_DEPTH levels
// is not rendered (a document may nest 160 levels): the row says so instead.

import { h, childPointer, parentPointer, ancestors, pointerTokens, valueAt, preview } from './util.js';
import { agentColor } from './colors.js';

/** How many children of one object or array are rendered before "show more". */
export const CHUNK = 100;
/** Strings longer than this are cut until asked for. */
const LONG_STRING = 400;
/** Containers this deep are shown closed, as a summary, and cannot be opened here. */
export const MAX_DEPTH = 24;
/** How long a change stays highlighted, ms (matches the CSS animation). */
const FLASH_MS = 2600;

function isContainer(v) {
  return v !== null && typeof v === 'object';
}

function size(v) {
  return Array.isArray(v) ? v.length : Object.keys(v).length;
}

function depthOf(pointer) {
  return pointerTokens(pointer).length;
}

export class JsonTree {
  /** @param {string} label accessible name of the tree */
  constructor(label) {
    this.el = h('div', { class: 'tree', 'aria-label': label, role: 'region' });
    this.value = undefined;
    /** pointer -> conflicting values [{value, agent, change, shown}] */
    this.conflicts = new Map();
    /** pointers that hold a conflict somewhere below */
    this.conflictAbove = new Set();
    /** pointer -> open/closed, as the user chose */
    this.open = new Map();
    /** pointer -> how many children are shown */
    this.limit = new Map();
    /** pointer -> strings shown whole */
    this.whole = new Set();
    /** pointer -> {agent, until} of recent changes, re-applied if a row is re-rendered */
    this.flashes = new Map();
    /** The row the keyboard is on: the tree's one Tab stop (arrows move within). */
    this.active = '';
    this.el.addEventListener('click', (e) => this.onClick(e));
    this.el.addEventListener('keydown', (e) => this.onKey(e));
    this.el.addEventListener('focusin', (e) => {
      const li = e.target.closest?.('li[data-ptr]');
      if (li && e.target.classList.contains('row')) this.setActive(li.dataset.ptr, false);
    });
  }

  /** Makes the row at `pointer` the tree's Tab stop, and focuses it if asked. */
  setActive(pointer, focus = true) {
    const li = this.find(pointer) || this.find('');
    if (!li) return;
    for (const r of this.el.querySelectorAll('.row[tabindex="0"]')) r.tabIndex = -1;
    const row = li.querySelector(':scope > .row');
    row.tabIndex = 0;
    this.active = li.dataset.ptr;
    if (focus) row.focus();
  }

  /** Arrow keys move between visible rows, Right/Left open and close, Enter toggles. */
  onKey(e) {
    const row = e.target.closest('.row');
    if (!row || e.target !== row || e.altKey || e.ctrlKey || e.metaKey) return;
    const li = row.parentElement;
    const ptr = li.dataset.ptr;
    const rows = [...this.el.querySelectorAll('li[data-ptr] > .row')];
    const i = rows.indexOf(row);
    const toggle = row.querySelector('.tog');
    const open = toggle?.getAttribute('aria-expanded') === 'true';
    const go = (r) => r && this.setActive(r.parentElement.dataset.ptr);
    switch (e.key) {
      case 'ArrowDown':
        go(rows[i + 1]);
        break;
      case 'ArrowUp':
        go(rows[i - 1]);
        break;
      case 'Home':
        go(rows[0]);
        break;
      case 'End':
        go(rows[rows.length - 1]);
        break;
      case 'ArrowRight':
        if (toggle && !open) this.toggle(ptr);
        else if (toggle) go(rows[i + 1]);
        break;
      case 'ArrowLeft':
        if (toggle && open) this.toggle(ptr);
        else if (ptr !== '') this.setActive(parentPointer(ptr));
        break;
      case 'Enter':
      case ' ':
        if (toggle) this.toggle(ptr);
        break;
      default:
        return;
    }
    e.preventDefault();
  }

  toggle(ptr) {
    const li = this.find(ptr);
    const open = li?.querySelector(':scope > .row > .tog')?.getAttribute('aria-expanded') === 'true';
    this.open.set(ptr, !open);
    this.rerender([ptr]);
    this.setActive(ptr);
  }

  /** Replaces the whole value (a snapshot, or a version in time travel). */
  set(value, conflicts = []) {
    this.value = value;
    this.setConflictList(conflicts);
    this.renderAll();
  }

  /** Sets the conflicts (from `?conflicts=true`) and re-renders what they touch. */
  setConflicts(conflicts = []) {
    const json = JSON.stringify(conflicts);
    if (json === this.conflictsJson) return;
    const before = new Set([...this.conflicts.keys(), ...this.conflictAbove]);
    this.setConflictList(conflicts);
    const after = new Set([...this.conflicts.keys(), ...this.conflictAbove]);
    const touched = [...new Set([...before, ...after])].filter(
      (p) => before.has(p) !== after.has(p) || this.conflicts.has(p),
    );
    if (touched.length) this.rerender(touched);
  }

  setConflictList(conflicts) {
    this.conflictsJson = JSON.stringify(conflicts);
    this.conflicts = new Map(conflicts.map((c) => [c.path, c.values]));
    this.conflictAbove = new Set();
    for (const path of this.conflicts.keys()) for (const a of ancestors(path)) this.conflictAbove.add(a);
  }

  /**
   * Takes the value after a change and the RFC 6902 operations that made it; re-renders
   * the touched subtrees and highlights them in the agent's colour.
   */
  applyChange(value, ops, agent) {
    this.value = value;
    const rerender = [];
    const flash = [];
    for (const op of ops || []) {
      const path = op.path ?? '';
      switch (op.op) {
        case 'replace':
        case 'test':
          rerender.push(path);
          flash.push(path);
          break;
        case 'add':
        case 'copy':
          rerender.push(parentPointer(path));
          flash.push(path);
          break;
        case 'remove':
          rerender.push(parentPointer(path));
          flash.push(parentPointer(path));
          break;
        case 'move':
          rerender.push(parentPointer(op.from || ''), parentPointer(path));
          flash.push(path);
          break;
        default:
          rerender.push('');
      }
      if (path === '') rerender.push('');
    }
    const start = performance.now();
    for (const p of flash) this.flashes.set(p, { agent, start });
    this.rerender(rerender);
    for (const p of flash) this.flash(p, agent);
  }

  /** Opens every ancestor of a pointer, then scrolls to it and focuses its row. */
  reveal(pointer) {
    for (const a of ancestors(pointer)) this.open.set(a, true);
    // Make sure the child is within the rendered chunk of its parent.
    const tokens = pointerTokens(pointer);
    let p = '';
    let v = this.value;
    for (const t of tokens) {
      if (!isContainer(v)) break;
      const keys = Array.isArray(v) ? null : Object.keys(v);
      const index = keys ? keys.indexOf(t) : Number(t);
      if (index >= (this.limit.get(p) || CHUNK)) this.limit.set(p, index + 1);
      p = childPointer(p, t);
      v = Array.isArray(v) ? v[Number(t)] : v[t];
    }
    this.renderAll();
    // Past MAX_DEPTH the nearest rendered ancestor stands for it.
    const li = this.find(pointer) || this.nearest(pointer);
    if (li) {
      li.querySelector(':scope > .row').scrollIntoView({ block: 'center', inline: 'nearest' });
      this.setActive(li.dataset.ptr);
    }
  }

  find(pointer) {
    return this.el.querySelector(`li[data-ptr="${CSS.escape(pointer)}"]`);
  }

  /** The nearest rendered node at or above a pointer. */
  nearest(pointer) {
    let p = pointer;
    for (;;) {
      const li = this.find(p);
      if (li || p === '') return li;
      p = parentPointer(p);
    }
  }

  renderAll() {
    const focus = this.focusKey();
    this.el.replaceChildren(h('ul', { class: 'root' }, this.node('', this.value)));
    this.restoreFocus(focus);
    this.ensureTabStop();
  }

  ensureTabStop() {
    if (this.el.querySelector('.row[tabindex="0"]')) return;
    const li = this.nearest(this.active);
    this.setActive(li ? li.dataset.ptr : '', false);
  }

  /** Re-renders the nodes at these pointers (or their nearest rendered ancestors). */
  rerender(pointers) {
    if (!this.el.firstChild) return this.renderAll();
    const targets = new Map();
    for (const p of pointers) {
      const li = this.nearest(p);
      if (!li) return this.renderAll();
      targets.set(li.dataset.ptr, li);
    }
    // Drop targets inside other targets: the outer render covers them.
    const keys = [...targets.keys()];
    const outer = keys.filter((k) => !keys.some((o) => o !== k && (o === '' || k.startsWith(`${o}/`))));
    const focus = this.focusKey();
    for (const k of outer) {
      const li = targets.get(k);
      const v = valueAt(this.value, k);
      if (v === undefined && k !== '') {
        li.remove();
        continue;
      }
      const key = k === '' ? null : pointerTokens(k).pop();
      const parent = k === '' ? undefined : valueAt(this.value, parentPointer(k));
      li.replaceWith(this.node(k, v, key, isContainer(parent) ? size(parent) : 0));
    }
    this.restoreFocus(focus);
    this.ensureTabStop();
  }

  focusKey() {
    const active = document.activeElement;
    if (!active || !this.el.contains(active)) return null;
    const li = active.closest('li[data-ptr]');
    return li ? { ptr: li.dataset.ptr, cls: active.className } : null;
  }

  restoreFocus(key) {
    if (!key) return;
    const li = this.find(key.ptr);
    if (!li) return;
    const cls = key.cls ? `.${key.cls.split(' ').filter(Boolean).map((c) => CSS.escape(c)).join('.')}` : '';
    const target = (cls && li.querySelector(`:scope > .row ${cls}, :scope > .row${cls}`)) || li.querySelector(':scope > .row');
    if (target) target.focus({ preventScroll: true });
  }

  /** Open if the user opened it; else the top levels of small containers, where a
   * container's children start closed once it has more than a screenful of them. */
  isOpen(pointer, value, siblings = 0) {
    const depth = depthOf(pointer);
    if (depth >= MAX_DEPTH) return false;
    if (this.open.has(pointer)) return this.open.get(pointer);
    if (depth === 0) return true;
    return depth < 3 && size(value) <= 50 && siblings <= 20;
  }

  /** One node: its row, its conflict values, and (if open) its children. */
  node(pointer, value, key = null, siblings = 0) {
    const depth = depthOf(pointer);
    const li = h('li', { class: 'node', 'data-ptr': pointer });
    const row = h('div', { class: 'row', tabindex: pointer === this.active ? '0' : '-1' });
    li.appendChild(row);
    const container = isContainer(value);
    const open = container && this.isOpen(pointer, value, siblings);
    const tooDeep = container && depth >= MAX_DEPTH;
    if (container && !tooDeep) {
      const label = `${open ? 'Collapse' : 'Expand'} ${pointer || 'the document'}`;
      row.appendChild(
        h('button', { class: 'tog', type: 'button', tabindex: '-1', 'aria-expanded': String(open), 'aria-label': label, title: label }, open ? '▾' : '▸'),
      );
    } else {
      row.appendChild(h('span', { class: 'tog-space', 'aria-hidden': 'true' }));
    }
    if (depth === 0) row.appendChild(h('span', { class: 'key root-key' }, 'document'));
    else if (typeof key === 'string' && /^\d+$/.test(key) && Array.isArray(valueAt(this.value, parentPointer(pointer)))) {
      row.appendChild(h('span', { class: 'key index' }, key));
    } else row.appendChild(h('span', { class: 'key' }, key));
    row.appendChild(h('span', { class: 'colon', 'aria-hidden': 'true' }, ':'));
    if (container) {
      row.appendChild(h('span', { class: 'summary' }, preview(value)));
      if (tooDeep) {
        row.appendChild(
          h('span', { class: 'too-deep', title: `Nested ${depth} levels deep; read it with GET …?path=${pointer}` }, 'too deep to show here'),
        );
      }
    } else {
      row.appendChild(this.scalar(pointer, value));
    }
    const values = this.conflicts.get(pointer);
    if (values) {
      li.classList.add('has-conflict');
      row.appendChild(
        h('span', { class: 'conflict-mark', title: 'Concurrent writes: every value is kept' }, `conflict · ${values.length} values`),
      );
      li.appendChild(
        h(
          'ul',
          { class: 'conflict-values', 'aria-label': `Conflicting values at ${pointer || 'the document'}` },
          values.map((c) =>
            h(
              'li',
              { class: c.shown ? 'shown' : '', 'data-agent': c.agent || '' },
              h('span', { class: 'swatch', style: { '--agent': agentColor(c.agent) }, 'aria-hidden': 'true' }),
              h('span', { class: 'agent' }, c.agent || 'unknown agent'),
              h('code', { class: 'cv' }, preview(c.value, 120)),
              c.shown ? h('span', { class: 'shown-tag' }, 'shown') : null,
              c.change ? h('span', { class: 'hash', title: `change ${c.change}` }, c.change.slice(0, 7)) : null,
            ),
          ),
        ),
      );
    } else if (container && !open && this.conflictAbove.has(pointer)) {
      row.appendChild(
        h('button', { class: 'conflict-inside', type: 'button', title: 'A conflict is inside; open it' }, 'conflict inside'),
      );
    }
    const recent = this.flashes.get(pointer);
    if (recent) {
      const elapsed = performance.now() - recent.start;
      // A row re-rendered while highlighted carries on where it was, not from the start.
      if (elapsed < FLASH_MS) this.paintFlash(row, recent.agent, elapsed);
      else this.flashes.delete(pointer);
    }
    if (open) li.appendChild(this.children(pointer, value));
    return li;
  }

  scalar(pointer, value) {
    const type = value === null ? 'null' : typeof value;
    if (type === 'string' && value.length > LONG_STRING && !this.whole.has(pointer)) {
      return h(
        'span',
        { class: 'v t-string' },
        JSON.stringify(value.slice(0, LONG_STRING)).slice(0, -1),
        '…"',
        h('button', { class: 'more-text', type: 'button' }, `show all ${value.length.toLocaleString()} characters`),
      );
    }
    return h('span', { class: `v t-${type}` }, JSON.stringify(value));
  }

  children(pointer, value) {
    const ul = h('ul', { class: 'kids' });
    const keys = Array.isArray(value) ? null : Object.keys(value);
    const total = keys ? keys.length : value.length;
    const shown = Math.min(total, this.limit.get(pointer) || CHUNK);
    for (let i = 0; i < shown; i += 1) {
      const key = keys ? keys[i] : String(i);
      ul.appendChild(this.node(childPointer(pointer, key), keys ? value[key] : value[i], key, total));
    }
    if (shown < total) {
      const rest = total - shown;
      ul.appendChild(
        h(
          'li',
          { class: 'more' },
          h('button', { class: 'show-more', type: 'button', 'data-for': pointer }, `Show ${Math.min(CHUNK, rest)} more`),
          ` ${shown.toLocaleString()} of ${total.toLocaleString()} shown`,
          rest > CHUNK && total <= 5000
            ? h('button', { class: 'show-all', type: 'button', 'data-for': pointer }, 'Show all')
            : null,
        ),
      );
    }
    return ul;
  }

  onClick(e) {
    const button = e.target.closest('button');
    if (!button || !this.el.contains(button)) return;
    const li = button.closest('li[data-ptr]') || button.closest('li.more')?.closest('li[data-ptr]');
    if (button.classList.contains('tog')) {
      this.toggle(li.dataset.ptr);
    } else if (button.classList.contains('show-more') || button.classList.contains('show-all')) {
      const ptr = button.dataset.for;
      const v = valueAt(this.value, ptr);
      const total = size(v);
      const current = this.limit.get(ptr) || CHUNK;
      this.limit.set(ptr, button.classList.contains('show-all') ? total : current + CHUNK);
      this.rerender([ptr]);
      // Keep the keyboard where it was: on the first newly shown row.
      const parent = this.find(ptr);
      const rows = parent?.querySelectorAll(':scope > ul.kids > li.node > .row');
      rows?.[current]?.focus();
    } else if (button.classList.contains('more-text')) {
      this.whole.add(li.dataset.ptr);
      this.rerender([li.dataset.ptr]);
    } else if (button.classList.contains('conflict-inside')) {
      const ptr = li.dataset.ptr;
      const inside = [...this.conflicts.keys()].find((p) => p.startsWith(`${ptr}/`) || ptr === '');
      if (inside) this.reveal(inside);
    }
  }

  flash(pointer, agent) {
    const li = this.nearest(pointer);
    if (!li) return;
    const row = li.querySelector(':scope > .row');
    // Restart the animation if it is running.
    row.classList.remove('flash');
    void row.offsetWidth;
    this.paintFlash(row, agent);
  }

  paintFlash(row, agent, elapsed = 0) {
    row.style.setProperty('--agent', agentColor(agent));
    row.style.animationDelay = `${-Math.round(elapsed)}ms`;
    row.dataset.changedBy = agent || 'anonymous';
    row.title = `changed by ${agent || 'anonymous'}`;
    row.classList.add('flash');
    row.addEventListener('animationend', () => row.classList.remove('flash'), { once: true });
  }
}
