// The viewer's shell: a hash router over three pages, and the agent name the browser
// writes as.
//
//   #/            documents
//   #/doc/<id>    one document
//   #/compare     the lost-update comparison

import { agentName, setAgentName } from './api.js';
import { h, clear } from './util.js';

const routes = [
  { pattern: /^#?\/?$/, nav: 'docs', load: () => import('./docs.js') },
  { pattern: /^#\/doc\/([0-9a-fA-F-]{36})$/, nav: 'docs', load: () => import('./doc.js'), params: (m) => ({ id: m[1].toLowerCase() }) },
  { pattern: /^#\/compare$/, nav: 'compare', load: () => import('./compare.js') },
];

let unmount = null;
let generation = 0;

async function route() {
  const hash = location.hash || '#/';
  const main = document.getElementById('main');
  const found = routes.map((r) => ({ r, m: hash.match(r.pattern) })).find((x) => x.m);
  const mine = ++generation;
  if (unmount) {
    unmount();
    unmount = null;
  }
  for (const a of document.querySelectorAll('nav a[data-nav]')) {
    if (found && a.dataset.nav === found.r.nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!found) {
    clear(main).append(
      h('h1', {}, 'Not found'),
      h('p', {}, 'No page at ', h('code', {}, hash), '. ', h('a', { href: '#/' }, 'All documents')),
    );
    return;
  }
  const module = await found.r.load();
  if (mine !== generation) return;
  unmount = module.mount(main, found.r.params ? found.r.params(found.m) : {});
}

function start() {
  const input = document.getElementById('agent-name');
  input.value = agentName();
  input.addEventListener('change', () => setAgentName(input.value || 'viewer'));
  document.getElementById('skip').addEventListener('click', (e) => {
    // The hash is the router's: move the focus instead of following the link.
    e.preventDefault();
    document.getElementById('main').focus();
  });
  window.addEventListener('hashchange', () => {
    if (location.hash.startsWith('#/') || location.hash === '') {
      route();
      document.getElementById('main').focus({ preventScroll: true });
      window.scrollTo(0, 0);
    }
  });
  route();
}

start();
