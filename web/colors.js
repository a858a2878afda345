// Colours: one per agent (from a hash of its name, so usually the same on every visit) and
// one per strategy.

// Tableau 10 without its grey: told apart at a glance, on white and on the dark theme.
const PALETTE = [
  '#1f77b4', // blue
  '#d62728', // red
  '#2ca02c', // green
  '#ff7f0e', // orange
  '#9467bd', // purple
  '#8c564b', // brown
  '#e377c2', // pink
  '#17becf', // cyan
  '#bcbd22', // olive
];

const assigned = new Map();

function hash(text) {
  // FNV-1a: small, stable, good enough to spread names.
  let x = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) {
    x ^= text.charCodeAt(i);
    x = Math.imul(x, 0x01000193) >>> 0;
  }
  return x;
}

/**
 * The colour of an agent. Names hash to a palette slot; when two agents seen on this
 * page would share a slot, the later one takes the next free slot, so a legend never
 * shows two agents in one colour (until the palette runs out).
 */
export function agentColor(agent) {
  const name = agent || 'anonymous';
  if (assigned.has(name)) return assigned.get(name);
  const used = new Set(assigned.values());
  const start = hash(name) % PALETTE.length;
  let color = PALETTE[start];
  for (let i = 0; i < PALETTE.length; i += 1) {
    const candidate = PALETTE[(start + i) % PALETTE.length];
    if (!used.has(candidate)) {
      color = candidate;
      break;
    }
  }
  assigned.set(name, color);
  return color;
}

/** Strategies in the order the comparison reports them, with their colours. */
export const STRATEGIES = ['lww', 'optimistic', 'lock', 'queue', 'branches', 'crdt'];

const STRATEGY_COLORS = {
  lww: '#c92a2a',
  optimistic: '#d9480f',
  lock: '#a66e00',
  queue: '#5f3dc4',
  branches: '#0b7285',
  crdt: '#2b8a3e',
};

export function strategyColor(strategy) {
  return STRATEGY_COLORS[strategy] || '#495057';
}

/** What each strategy means, in one line (for tooltips and the create form). */
export const STRATEGY_HELP = {
  crdt: 'edits made against the version the writer read are merged into the present (default)',
  lww: 'last writer wins: a write replaces the document, silently losing concurrent work',
  optimistic: 'a write from a stale version is refused (412); the writer re-reads and retries',
  lock: 'writers take an exclusive lease and write with its fencing token',
  queue: 'only intents (patches) are accepted, applied in arrival order by one writer',
  branches: 'each agent edits its own fork; forks are merged at the end',
};
