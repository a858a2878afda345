// The comparison page: run one seeded workload through every write strategy (with live
// progress), read what each lost and what each cost (table and bar charts), watch the
// lesson's timeline per strategy as swimlanes, and plot a sweep (cost against conflict
// rate). Every run happens on a separate in-process server, never on your documents.

import { api, postEvents, ApiError } from './api.js';
import { h, clear, num } from './util.js';
import { STRATEGIES, strategyColor, STRATEGY_HELP } from './colors.js';
import { barChart, lineChart, swimlanes } from './charts.js';

const WORKLOADS = [
  ['list', 'every write appends a unique item to one shared list'],
  ['counter', 'every write adds one to a shared counter'],
  ['fields', 'each agent updates its own field, and names itself in one shared field'],
  ['text', 'every write inserts a unique word into one collaborative text'],
  ['mix', 'each write is one of list, counter, fields and text, chosen by the seed'],
  ['board', 'agents work on a list of tasks: insert, delete, set a title or done, vote, add a word to a body, move; an edit of a task deleted meanwhile is lost, silently or surfaced among the document\'s lost edits'],
];

const METRICS = [
  ['lost', 'lost writes', (v) => num(v)],
  ['retries', 'retries', (v) => num(v)],
  ['p50_ms', 'latency p50 (ms)', (v) => num(v, 1)],
  ['p99_ms', 'latency p99 (ms)', (v) => num(v, 1)],
  ['writes_per_sec', 'writes per second', (v) => num(v, 0)],
];

// The scenario is deterministic: play it once per page load. The last run and sweep are
// kept for the browser tab, so that leaving the page and coming back keeps them.
let scenario = null;
const KEPT = 'concord.compare.last';

function kept() {
  try {
    return JSON.parse(sessionStorage.getItem(KEPT) || '{}');
  } catch {
    return {};
  }
}

function keep(part) {
  try {
    sessionStorage.setItem(KEPT, JSON.stringify({ ...kept(), ...part }));
  } catch {
    // Not kept then.
  }
}

export function mount(main) {
  const page = new ComparePage(main);
  page.start();
  return () => page.stop();
}

function numberField(id, label, value, min, max, help) {
  return [
    h('label', { for: id }, label),
    h('input', { id, type: 'number', value: String(value), min: String(min), max: String(max), step: '1', required: true, inputmode: 'numeric', 'aria-describedby': help ? `${id}-help` : null }),
    help ? h('p', { class: 'help', id: `${id}-help` }, help) : null,
  ];
}

class ComparePage {
  constructor(main) {
    this.main = main;
    this.stopped = false;
    this.runs = new Set(); // AbortControllers of requests in flight
    this.build();
  }

  build() {
    const e = (this.el = {});
    e.workloadHelp = h('p', { class: 'help', id: 'cmp-workload-help' }, WORKLOADS[0][1]);
    e.workload = h(
      'select',
      {
        id: 'cmp-workload',
        'aria-describedby': 'cmp-workload-help',
        onchange: () => {
          e.workloadHelp.textContent = WORKLOADS.find(([v]) => v === e.workload.value)?.[1] || '';
        },
      },
      WORKLOADS.map(([v]) => h('option', { value: v }, v)),
    );
    e.strategies = h(
      'fieldset',
      { class: 'strategies' },
      h('legend', {}, 'Strategies'),
      STRATEGIES.map((st) =>
        h(
          'label',
          { class: 'check', title: STRATEGY_HELP[st] },
          h('input', { type: 'checkbox', name: 'strategy', value: st, checked: true }),
          h('span', { class: 'badge', style: { '--c': strategyColor(st) } }, st),
        ),
      ),
    );
    e.run = h('button', { type: 'submit', class: 'primary', id: 'run-compare' }, 'Run comparison');
    e.cancel = h('button', { type: 'button', hidden: true, onclick: () => this.cancel('compare') }, 'Cancel');
    e.progress = h('div', { class: 'progress-box', hidden: true, 'aria-live': 'polite' });
    e.error = h('p', { class: 'form-error', role: 'alert', hidden: true });
    e.results = h('div', { class: 'results', id: 'results' });
    e.scenario = h('div', { class: 'scenario', id: 'scenario' }, h('p', { class: 'muted' }, 'Playing the timeline through every strategy…'));
    e.sweepRun = h('button', { type: 'submit', class: 'primary', id: 'run-sweep' }, 'Run sweep');
    e.sweepCancel = h('button', { type: 'button', hidden: true, onclick: () => this.cancel('sweep') }, 'Cancel');
    e.sweepProgress = h('div', { class: 'progress-box', hidden: true, 'aria-live': 'polite' });
    e.sweepError = h('p', { class: 'form-error', role: 'alert', hidden: true });
    e.sweepMetric = h(
      'select',
      { id: 'sweep-metric', onchange: () => this.drawSweep() },
      METRICS.map(([k, label]) => h('option', { value: k, selected: k === 'lost' }, label)),
    );
    e.sweepPlot = h('div', { class: 'sweep-plot', id: 'sweep-plot' });

    const form = h(
      'form',
      { class: 'compare-form', 'aria-labelledby': 'run-h', novalidate: true, onsubmit: (ev) => this.runCompare(ev) },
      h('h2', { id: 'run-h' }, 'Run the comparison'),
      h(
        'div',
        { class: 'fields' },
        h('div', { class: 'wide' }, h('label', { for: 'cmp-workload' }, 'Workload'), e.workload, e.workloadHelp),
        h('div', {}, numberField('cmp-agents', 'Agents', 4, 1, 64)),
        h('div', {}, numberField('cmp-writes', 'Writes per agent', 10, 1, 200)),
        h('div', {}, numberField('cmp-think-min', 'Think min (ms)', 10, 0, 10000)),
        h('div', {}, numberField('cmp-think-max', 'Think max (ms)', 50, 0, 10000)),
        h('div', {}, numberField('cmp-seed', 'Seed', 42, 0, Number.MAX_SAFE_INTEGER)),
      ),
      e.strategies,
      h('p', { class: 'help' }, 'Each agent reads the document, thinks for a seeded time (standing in for model latency), then writes. The same plan runs through every strategy on a separate, temporary server.'),
      h('div', { class: 'actions' }, e.run, e.cancel),
      e.error,
      e.progress,
    );

    const sweepForm = h(
      'form',
      { class: 'sweep-form', 'aria-labelledby': 'sweep-h', novalidate: true, onsubmit: (ev) => this.runSweep(ev) },
      h('h2', { id: 'sweep-h' }, 'Sweep: cost against conflict rate'),
      h('p', { class: 'help' }, 'Runs the workload above at every pair of agent count and think time (up to 5 of each; at most 16 agents, 20 writes, 200 ms). More agents and shorter thinking mean more overlapping writes.'),
      h(
        'div',
        { class: 'fields' },
        h('div', {}, h('label', { for: 'sweep-agents' }, 'Agent counts'), h('input', { id: 'sweep-agents', value: '2, 4, 8', autocomplete: 'off' })),
        h('div', {}, h('label', { for: 'sweep-think' }, 'Think ranges (ms)'), h('input', { id: 'sweep-think', value: '0-5, 10-30, 40-80', autocomplete: 'off' })),
        h('div', {}, numberField('sweep-writes', 'Writes per agent', 5, 1, 20)),
        h('div', {}, h('label', { for: 'sweep-metric' }, 'Plot'), e.sweepMetric),
      ),
      h('div', { class: 'actions' }, e.sweepRun, e.sweepCancel),
      e.sweepError,
      e.sweepProgress,
    );

    clear(this.main).append(
      h('h1', {}, 'The lost-update comparison'),
      h(
        'p',
        { class: 'lede' },
        'Agent A reads at T=1 and thinks; agent B reads at T=2 and writes at T=4; A writes at T=5 from its stale copy. Which strategy keeps B\'s work, and what does each cost?',
      ),
      form,
      h('section', { 'aria-labelledby': 'results-h', class: 'results-pane' }, h('h2', { id: 'results-h' }, 'Results'), e.results),
      h('section', { 'aria-labelledby': 'scenario-h' }, h('h2', { id: 'scenario-h' }, 'The timeline, per strategy'), e.scenario),
      h('section', { 'aria-labelledby': 'sweep-h', class: 'sweep' }, sweepForm, e.sweepPlot),
    );
    e.results.append(h('p', { class: 'muted' }, 'Run the comparison to see what each strategy lost and what it cost.'));
    document.title = 'Concord · comparison';
  }

  start() {
    const { report, sweep } = kept();
    if (report) this.showReport(report);
    if (sweep) {
      this.sweep = sweep;
      this.drawSweep();
    }
    this.loadScenario();
  }

  stop() {
    this.stopped = true;
    for (const c of this.runs) c.abort();
  }

  value(id) {
    return Number(document.getElementById(id)?.value);
  }

  cancel(which) {
    for (const c of this.runs) if (c.which === which) c.abort();
  }

  // ------------------------------------------------------------ the run

  async runCompare(ev) {
    ev.preventDefault();
    const e = this.el;
    const strategies = [...e.strategies.querySelectorAll('input:checked')].map((i) => i.value);
    const body = {
      workload: e.workload.value,
      agents: this.value('cmp-agents'),
      writes: this.value('cmp-writes'),
      think_ms: [this.value('cmp-think-min'), this.value('cmp-think-max')],
      seed: this.value('cmp-seed'),
      strategies,
    };
    const problem = [
      !Number.isInteger(body.agents) || body.agents < 1 || body.agents > 64 ? 'Agents must be 1 to 64.' : null,
      !Number.isInteger(body.writes) || body.writes < 1 || body.writes > 200 ? 'Writes per agent must be 1 to 200.' : null,
      !(body.think_ms[0] >= 0 && body.think_ms[0] <= body.think_ms[1] && body.think_ms[1] <= 10000) ? 'Think time must be min ≤ max ≤ 10000 ms.' : null,
      !Number.isInteger(body.seed) || body.seed < 0 ? 'The seed is a whole number.' : null,
      strategies.length ? null : 'Pick at least one strategy.',
    ].filter(Boolean);
    e.error.hidden = !problem.length;
    e.error.textContent = problem.join(' ');
    if (problem.length) return;

    const controller = new AbortController();
    controller.which = 'compare';
    this.runs.add(controller);
    e.run.disabled = true;
    e.cancel.hidden = false;
    const bar = h('progress', { max: '1', value: '0', id: 'compare-progress', 'aria-label': 'Comparison progress' });
    const text = h('span', { class: 'progress-text' }, 'starting…');
    const chips = new Map(strategies.map((st) => [st, h('span', { class: 'badge step', 'data-state': 'waiting', style: { '--c': strategyColor(st) } }, st)]));
    e.progress.hidden = false;
    e.progress.replaceChildren(bar, text, h('div', { class: 'steps' }, [...chips.values()]));
    const started = performance.now();
    try {
      await postEvents('/v1/compare', body, (name, data) => {
        if (name === 'progress') {
          bar.max = String(Math.max(1, data.total));
          bar.value = String(data.done);
          text.textContent = `${data.strategy}: ${num(data.done)} of ${num(data.total)} writes`;
          let before = true;
          for (const [st, chip] of chips) {
            if (st === data.strategy) {
              chip.dataset.state = 'running';
              before = false;
            } else chip.dataset.state = before ? 'done' : 'waiting';
          }
        } else if (name === 'result') {
          bar.value = bar.max;
          for (const chip of chips.values()) chip.dataset.state = 'done';
          text.textContent = `done in ${num((performance.now() - started) / 1000, 1)} s`;
          this.showReport(data);
          keep({ report: data });
        } else if (name === 'error') {
          throw new ApiError(data.status || 500, data);
        }
      }, controller.signal);
    } catch (err) {
      if (err.name === 'AbortError') {
        text.textContent = 'cancelled';
      } else {
        e.error.hidden = false;
        e.error.textContent = `The comparison failed: ${err.message}`;
        e.progress.hidden = true;
      }
    } finally {
      this.runs.delete(controller);
      if (!this.stopped) {
        e.run.disabled = false;
        e.cancel.hidden = true;
      }
    }
  }

  showReport(report) {
    const rows = report.rows || [];
    const cols = [
      ['strategy', 'Strategy'],
      ['acknowledged', 'Acknowledged'],
      ['lost', 'Lost silently'],
      ['lost_surfaced', 'Lost, surfaced'],
      ['retries', 'Retries'],
      ['lock_wait_ms', 'Lock wait (ms)'],
      ['conflicts_kept', 'Conflicts kept'],
      ['p50_ms', 'p50 (ms)'],
      ['p99_ms', 'p99 (ms)'],
      ['wall_ms', 'Wall (ms)'],
      ['writes_per_sec', 'Writes/s'],
    ];
    const table = h(
      'table',
      { class: 'report', id: 'report-table' },
      h('caption', {}, `${report.workload} workload · ${report.agents} agents × ${report.writes} writes · think ${report.think_ms?.[0]}–${report.think_ms?.[1]} ms · seed ${report.seed}`),
      h('thead', {}, h('tr', {}, cols.map(([, t]) => h('th', { scope: 'col' }, t)), h('th', { scope: 'col' }, 'Trade-off'))),
      h(
        'tbody',
        {},
        rows.map((r) =>
          h(
            'tr',
            { 'data-strategy': r.strategy, class: r.lost > 0 ? 'lossy' : '' },
            cols.map(([k]) => {
              if (k === 'strategy') {
                return h('th', { scope: 'row' }, h('span', { class: 'badge', style: { '--c': strategyColor(r.strategy) } }, r.strategy));
              }
              const digits = k.endsWith('_ms') && k !== 'lock_wait_ms' && k !== 'wall_ms' ? 1 : 0;
              return h('td', { class: `num ${k}`, 'data-value': String(r[k]) }, num(r[k], digits));
            }),
            h('td', { class: 'tradeoff' }, r.tradeoff || ''),
          ),
        ),
      ),
    );
    const categories = rows.map((r) => ({ label: r.strategy, color: strategyColor(r.strategy) }));
    const lost = barChart({
      title: 'Lost writes (acknowledged, then gone)',
      categories,
      series: [
        { name: 'silently', values: rows.map((r) => r.lost) },
        { name: 'surfaced', values: rows.map((r) => r.lost_surfaced || 0), opacity: 0.45 },
      ],
      format: (v) => num(v, 0),
    });
    const latency = barChart({
      title: 'Time to effect (ms)',
      categories,
      series: [
        { name: 'p50', values: rows.map((r) => r.p50_ms) },
        { name: 'p99', values: rows.map((r) => r.p99_ms), opacity: 0.45 },
      ],
      format: (v) => num(v, v < 10 ? 1 : 0),
    });
    const lossy = rows.filter((r) => r.lost > 0).map((r) => `${r.strategy} (${r.lost})`);
    const surfaced = rows.filter((r) => r.lost_surfaced > 0).map((r) => `${r.strategy} (${r.lost_surfaced})`);
    const surfacedNote = surfaced.length
      ? ` Lost but surfaced among the document's lost edits, for someone to restore: ${surfaced.join(', ')}.`
      : '';
    clear(this.el.results).append(
      h(
        'p',
        { class: 'verdict' },
        (lossy.length
          ? `Lost acknowledged writes silently: ${lossy.join(', ')}. Every other strategy kept every acknowledged write or surfaced it, at the costs below.`
          : 'No strategy lost an acknowledged write silently in this run; compare their costs below.') + surfacedNote,
      ),
      h('div', { class: 'table-wrap' }, table),
      h('div', { class: 'charts' }, h('figure', { id: 'chart-lost' }, lost), h('figure', { id: 'chart-latency' }, latency)),
    );
  }

  // ------------------------------------------------------------ the scenario

  async loadScenario() {
    let report = scenario;
    try {
      report ||= await api('/v1/compare/scenario');
      scenario = report;
    } catch (err) {
      if (!this.stopped) {
        this.el.scenario.replaceChildren(
          h('p', { class: 'form-error' }, `Could not play the scenario: ${err.message} `),
          h('button', { type: 'button', class: 'small', onclick: () => this.loadScenario() }, 'Try again'),
        );
      }
      return;
    }
    if (this.stopped) return;
    const lanes = [
      { key: 'A', label: 'agent A' },
      { key: 'B', label: 'agent B' },
      { key: 'doc', label: 'document' },
    ];
    const cards = (report.strategies || []).map((run) => {
      const events = run.timeline.map((m) => {
        const lane = m.actor === 'A' || m.actor === 'B' ? m.actor : 'doc';
        const d = `${m.action} ${m.detail}`.toLowerCase();
        let kind = 'ok';
        if (m.actor === 'B' && (m.action === 'write' || m.action === 'intent') && run.lost > 0) kind = 'lost';
        else if (/\b(412|409|423|428)\b|refus|reject/.test(d)) kind = 'refused';
        else if (/wait/.test(d)) kind = 'wait';
        else if (m.action === 'read' || m.action === 'look' || m.action === 'final') kind = 'info';
        const action = kind === 'lost' ? `${m.action} · lost` : m.action;
        return { t: m.t, lane, action: m.actor === 'A+B' ? `${m.action} (A+B)` : action, detail: m.detail, kind };
      });
      const bWrite = run.timeline.find((m) => m.actor === 'B' && (m.action === 'write' || m.action === 'intent'));
      return h(
        'article',
        { class: `scenario-card ${run.lost > 0 ? 'lossy' : 'kept'}`, 'data-strategy': run.strategy, 'aria-labelledby': `sc-${run.strategy}` },
        h(
          'h3',
          { id: `sc-${run.strategy}` },
          h('span', { class: 'badge', style: { '--c': strategyColor(run.strategy) } }, run.strategy),
          ' ',
          h('span', { class: run.lost > 0 ? 'fate bad' : 'fate good' }, run.lost > 0 ? `B's write lost (${run.lost})` : "B's write kept"),
        ),
        h('p', { class: 'outcome' }, run.outcome),
        swimlanes({ title: `${run.strategy}: the timeline`, lanes, events }),
        h(
          'details',
          {},
          h('summary', {}, 'Every step'),
          h(
            'table',
            { class: 'steps-table' },
            h('thead', {}, h('tr', {}, ['T', 'who', 'did', 'what came of it'].map((t) => h('th', { scope: 'col' }, t)))),
            h(
              'tbody',
              {},
              run.timeline.map((m) =>
                h('tr', { class: m === bWrite ? 'b-write' : '' }, h('td', {}, m.t), h('td', {}, m.actor), h('td', {}, m.action), h('td', {}, m.detail)),
              ),
            ),
          ),
        ),
      );
    });
    this.el.scenario.replaceChildren(
      h('p', { class: 'legend-line' },
        h('span', { class: 'key-ok' }, '● done'), ' ',
        h('span', { class: 'key-info' }, '● read / look'), ' ',
        h('span', { class: 'key-wait' }, '● waited'), ' ',
        h('span', { class: 'key-refused' }, '✕ refused'), ' ',
        h('span', { class: 'key-lost' }, "✕ B's write, later lost")),
      h('div', { class: 'scenario-grid' }, cards),
    );
  }

  // ------------------------------------------------------------ the sweep

  async runSweep(ev) {
    ev.preventDefault();
    const e = this.el;
    const agents = document.getElementById('sweep-agents').value.split(/[\s,]+/).filter(Boolean).map(Number);
    const think = document.getElementById('sweep-think').value.split(',').map((x) => x.trim()).filter(Boolean).map((r) => {
      const [a, b] = r.split(/\s*(?:-|–|\.\.)\s*/).map(Number);
      return [a, Number.isFinite(b) ? b : a];
    });
    const writes = this.value('sweep-writes');
    const problem = [
      agents.length && agents.length <= 5 && agents.every((a) => Number.isInteger(a) && a >= 1 && a <= 16) ? null : 'Agent counts: 1 to 5 whole numbers from 1 to 16.',
      think.length && think.length <= 5 && think.every(([a, b]) => a >= 0 && a <= b && b <= 200) ? null : 'Think ranges: 1 to 5 ranges such as 10-30, within 0–200 ms.',
      Number.isInteger(writes) && writes >= 1 && writes <= 20 ? null : 'Writes per agent: 1 to 20.',
    ].filter(Boolean);
    const strategies = [...e.strategies.querySelectorAll('input:checked')].map((i) => i.value);
    if (!strategies.length) problem.push('Pick at least one strategy above.');
    e.sweepError.hidden = !problem.length;
    e.sweepError.textContent = problem.join(' ');
    if (problem.length) return;
    const body = { workload: e.workload.value, writes, seed: this.value('cmp-seed') || 42, strategies, agents, think_ms: think };
    const controller = new AbortController();
    controller.which = 'sweep';
    this.runs.add(controller);
    e.sweepRun.disabled = true;
    e.sweepCancel.hidden = false;
    const bar = h('progress', { max: '1', value: '0', id: 'sweep-progress', 'aria-label': 'Sweep progress' });
    const text = h('span', { class: 'progress-text' }, 'starting…');
    e.sweepProgress.hidden = false;
    e.sweepProgress.replaceChildren(bar, text);
    try {
      await postEvents('/v1/compare/sweep', body, (name, data) => {
        if (name === 'progress') {
          bar.max = String(Math.max(1, data.total));
          bar.value = String(data.done);
          text.textContent = `${data.strategy}: ${num(data.done)} of ${num(data.total)} writes`;
        } else if (name === 'result') {
          bar.value = bar.max;
          text.textContent = `${(data.points || []).length} points`;
          this.sweep = data.points || [];
          this.drawSweep();
          keep({ sweep: this.sweep });
        } else if (name === 'error') {
          throw new ApiError(data.status || 500, data);
        }
      }, controller.signal);
    } catch (err) {
      if (err.name === 'AbortError') text.textContent = 'cancelled';
      else {
        e.sweepError.hidden = false;
        e.sweepError.textContent = `The sweep failed: ${err.message}`;
      }
    } finally {
      this.runs.delete(controller);
      if (!this.stopped) {
        e.sweepRun.disabled = false;
        e.sweepCancel.hidden = true;
      }
    }
  }

  drawSweep() {
    if (!this.sweep) return;
    const [key, label, format] = METRICS.find(([k]) => k === this.el.sweepMetric.value) || METRICS[0];
    const byStrategy = new Map();
    for (const p of this.sweep) {
      if (!byStrategy.has(p.strategy)) byStrategy.set(p.strategy, []);
      byStrategy.get(p.strategy).push({ x: p.conflict_rate, y: p[key], label: `${p.agents} agents, think ${p.think_ms[0]}–${p.think_ms[1]} ms` });
    }
    const series = [...byStrategy.entries()].map(([name, points]) => ({ name, color: strategyColor(name), points }));
    const chart = lineChart({
      title: `${label} against conflict rate`,
      series,
      xLabel: 'conflict rate',
      yLabel: label,
      xFormat: (v) => `${Math.round(v * 100)}%`,
      yFormat: format,
    });
    clear(this.el.sweepPlot).append(
      h('figure', { id: 'chart-sweep' }, chart,
        h('figcaption', { class: 'series-legend' },
          series.map((sr) => h('span', { class: 'badge', style: { '--c': sr.color } }, sr.name)),
          h('span', { class: 'muted' }, ' Conflict rate: the share of writes whose read→write window another agent\'s write fell into.'))),
    );
  }
}
