// The browser suite: drives headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core) through the Concord viewer of a running server.
//
//   node run.mjs http://127.0.0.1:PORT
//
// Environment: CHROMIUM (the browser, default /usr/bin/chromium), ARTIFACTS (where
// screenshots go, default ../../target/browser-artifacts), README_IMAGES (if set, a folder
// that receives document.png and compare.png for the README), FAR_FUTURE_DOC (the id of a
// document whose history holds raw changes that claim a date 9e12 s after 1970, one without
// an agent: made by tests/browser.rs; history shows when the server received them).
//
// It fails (exit 1) on any failed check and on any console error or uncaught exception in
// the page. `tests/browser.rs` starts the real server and runs this.

import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:http';

const here = dirname(fileURLToPath(import.meta.url));
const base = (process.argv[2] || process.env.CONCORD_URL || '').replace(/\/$/, '');
if (!base) {
  console.error('usage: node run.mjs <server URL>');
  process.exit(2);
}
const artifacts = resolve(process.env.ARTIFACTS || join(here, '../../target/browser-artifacts'));
const readmeImages = process.env.README_IMAGES ? resolve(process.env.README_IMAGES) : null;
mkdirSync(artifacts, { recursive: true });
if (readmeImages) mkdirSync(readmeImages, { recursive: true });

const TIMEOUT = 15_000;
// A name Chromium is told resolves to 127.0.0.1, as a DNS rebinding attack makes it.
const REBIND_HOST = 'rebind.attacker.test';
const problems = []; // console errors and page exceptions
const checks = [];

// ------------------------------------------------------------------ HTTP, as other agents

async function http(method, path, { agent, body, type = 'application/json', ifMatch } = {}) {
  // (A fetch from Node, not the page: the page's console stays free of these requests.)
  const headers = { 'Content-Type': type };
  if (agent) headers['Concord-Agent'] = agent;
  if (ifMatch) headers['If-Match'] = `"${ifMatch}"`;
  const response = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path} → ${response.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

// Another site on loopback: a second origin whose page attacks the server.
async function attackerSite() {
  const server = createServer((request, response) => {
    response.writeHead(200, { 'Content-Type': 'text/html' });
    response.end('<!doctype html><title>another site</title><p>nothing to see</p>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

const patch = (id, agent, ops, ifMatch) =>
  http('PATCH', `/v1/docs/${id}`, { agent, body: ops, type: 'application/json-patch+json', ifMatch });

// ------------------------------------------------------------------ the run

const profile = mkdtempSync(join(tmpdir(), 'concord-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    `--host-resolver-rules=MAP ${REBIND_HOST} 127.0.0.1`,
  ],
  viewport: { width: 1440, height: 900 },
  deviceScaleFactor: 1,
  colorScheme: 'light',
  reducedMotion: 'no-preference',
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(TIMEOUT);
page.on('console', (msg) => {
  if (msg.type() === 'error') problems.push(`console error: ${msg.text()} (${msg.location().url || 'page'})`);
});
page.on('pageerror', (e) => problems.push(`uncaught in page: ${e.message}`));

let current = 'start';
async function step(name, f) {
  current = name;
  const t0 = Date.now();
  await f();
  checks.push(name);
  console.log(`ok   ${name} (${Date.now() - t0} ms)`);
}

async function shot(name, { fullPage = false, readme = null } = {}) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage });
  if (readme && readmeImages) await page.screenshot({ path: join(readmeImages, readme), fullPage });
}

const text = (selector) => page.locator(selector).first().innerText();

let failed = null;
let id = null;
try {
  await step('the documents page opens', async () => {
    await page.goto(`${base}/`);
    await page.getByRole('heading', { name: 'Documents', level: 1 }).waitFor();
    await page.locator('#docs-table').waitFor();
    await page.locator('.pill[data-state="live"]').waitFor();
  });

  await step('the skip link is the first stop of the keyboard', async () => {
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => document.activeElement?.id);
    if (focused !== 'skip') throw new Error(`Tab focused ${focused}, not the skip link`);
  });

  await step('a document is created from the form', async () => {
    const value = {
      title: 'Launch plan',
      status: 'draft',
      owner: 'viewer',
      tasks: [
        { name: 'write the brief', done: true },
        { name: 'review the brief', done: false },
      ],
      budget: { amount: 1200, currency: 'EUR' },
    };
    await page.fill('#new-value', JSON.stringify(value, null, 2));
    await page.selectOption('#new-strategy', 'crdt');
    await page.click('#create');
    await page.waitForURL(/#\/doc\/[0-9a-f-]{36}$/);
    id = page.url().split('/').pop();
    await page.locator('li[data-ptr="/title"] > .row .v', { hasText: '"Launch plan"' }).waitFor();
    await page.locator('.pill[data-state="live"]').waitFor();
  });

  await step("another agent's HTTP edit appears without a reload, in its colour", async () => {
    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    await patch(id, 'bob', [{ op: 'replace', path: '/title', value: 'Launch plan v2' }]);
    await page.locator('li[data-ptr="/title"] > .row .v', { hasText: '"Launch plan v2"' }).waitFor();
    await page.locator('li[data-ptr="/title"] > .row[data-changed-by="bob"]').waitFor();
    if (!(await page.evaluate(() => window.__sameDocument === true))) throw new Error('the page reloaded');
    await patch(id, 'alice', [{ op: 'add', path: '/tasks/-', value: { name: 'ship it', done: false } }]);
    await page.locator('li[data-ptr="/tasks/2"]').waitFor();
    await page.locator('.legend li[data-agent="bob"]').waitFor();
    await page.locator('.legend li[data-agent="alice"]').waitFor();
    await page.locator('.history li').nth(2).waitFor();
  });

  await step('time travel shows an earlier version, read-only, and comes back', async () => {
    await page.focus('#travel');
    await page.keyboard.press('Home');
    await page.locator('.banner:not([hidden])').waitFor();
    await page.locator('li[data-ptr="/title"] > .row .v', { hasText: '"Launch plan"' }).waitFor();
    if ((await page.locator('li[data-ptr="/tasks/2"]').count()) !== 0) throw new Error('version 1 shows the third task');
    await page.locator('.pill[data-state="past"]').waitFor();
    await shot('time-travel');
    // One step later (keyboard): bob's title, not yet alice's task.
    await page.keyboard.press('ArrowRight');
    await page.locator('li[data-ptr="/title"] > .row .v', { hasText: '"Launch plan v2"' }).waitFor();
    await page.click('#go-live');
    await page.locator('.banner').waitFor({ state: 'hidden' });
    await page.locator('li[data-ptr="/tasks/2"]').waitFor();
    await page.locator('.pill[data-state="live"]').waitFor();
  });

  await step('the tree works from the keyboard', async () => {
    const focused = () => page.evaluate(() => document.activeElement?.closest('li[data-ptr]')?.dataset.ptr);
    await page.locator('li[data-ptr="/tasks"] > .row').focus();
    await page.keyboard.press('ArrowLeft');
    await page.locator('li[data-ptr="/tasks/0"]').waitFor({ state: 'detached' });
    if ((await focused()) !== '/tasks') throw new Error('focus left the row it closed');
    await page.keyboard.press('ArrowRight');
    await page.locator('li[data-ptr="/tasks/0"]').waitFor();
    await page.keyboard.press('ArrowDown');
    if ((await focused()) !== '/tasks/0') throw new Error(`ArrowDown went to ${await focused()}`);
    await page.keyboard.press('ArrowLeft'); // closes /tasks/0
    await page.keyboard.press('ArrowLeft'); // up to /tasks
    if ((await focused()) !== '/tasks') throw new Error(`ArrowLeft went to ${await focused()}`);
    await page.locator('li[data-ptr="/tasks/0"] > .row > .tog').click();
  });

  await step('a conflict is marked on its field, with every value and its agent', async () => {
    const { version } = await http('GET', `/v1/docs/${id}`);
    // Two agents set /status from the same version: a true conflict, both values kept.
    await patch(id, 'alice', [{ op: 'replace', path: '/status', value: 'in review' }], version);
    await patch(id, 'carol', [{ op: 'replace', path: '/status', value: 'approved' }], version);
    const node = page.locator('li.has-conflict[data-ptr="/status"]');
    await node.waitFor();
    await node.locator('ul.conflict-values li[data-agent="alice"]', { hasText: '"in review"' }).waitFor();
    await node.locator('ul.conflict-values li[data-agent="carol"]', { hasText: '"approved"' }).waitFor();
    await page.locator('.conflict-list button[data-path="/status"]').waitFor();
    await patch(id, 'dave', [{ op: 'replace', path: '/budget/amount', value: 1500 }]);
    await page.locator('li[data-ptr="/budget/amount"] > .row .v', { hasText: '1500' }).waitFor();
    await page.locator('li[data-ptr="/budget/amount"] > .row.flash').waitFor();
    await shot('document', { readme: 'document.png' });
  });

  await step('changes claiming 9e12 s, one without an agent, render History and Agents at the server\'s times', async () => {
    const farFuture = process.env.FAR_FUTURE_DOC;
    if (!farFuture) throw new Error('FAR_FUTURE_DOC is not set (tests/browser.rs makes that document)');
    const before = problems.length;
    await page.goto(`${base}/#/doc/${farFuture}`);
    await page.locator('li[data-ptr="/when"] > .row .v', { hasText: '"year 287,000"' }).waitFor();
    await page.locator('.history li').nth(2).waitFor();
    await page.locator('.legend li[data-agent="far-future"]').waitFor();
    await page.locator('.legend li[data-agent="anonymous"]').waitFor();
    // The server's times are shown, not the dates the changes claim.
    const times = await page.locator('.history time').allTextContents();
    if (times.some((t) => t === 'invalid time')) throw new Error(`history times: ${times.join(' | ')}`);
    const out = await text('#travel-out');
    if (out.includes('invalid time')) throw new Error(`the version slider says ${out}`);
    // Travel to the first version and back: the slider's text is made from these times too.
    await page.focus('#travel');
    await page.keyboard.press('Home');
    await page.locator('.banner:not([hidden])').waitFor();
    await page.click('#go-live');
    await page.locator('.banner').waitFor({ state: 'hidden' });
    if (problems.length > before) throw new Error(problems.slice(before).join('; '));
  });

  await step('a deep and huge document renders, its deepest conflict too', async () => {
    // 119 nested objects (a request body may nest 127 levels), 10,000 list items and a
    // 300,000-character string.
    let deep = { leaf: 'bottom' };
    for (let i = 0; i < 118; i += 1) deep = { d: deep };
    const value = {
      deep,
      big: Array.from({ length: 10_000 }, (_, i) => i),
      long: 'x'.repeat(300_000),
    };
    const created = await http('POST', '/v1/docs', { agent: 'bulk', body: { value } });
    const leaf = `/deep${'/d'.repeat(118)}/leaf`;
    // Two agents set the deepest leaf from one version: a conflict 120 levels down.
    await patch(created.id, 'alice', [{ op: 'replace', path: leaf, value: 'a' }], created.version);
    await patch(created.id, 'carol', [{ op: 'replace', path: leaf, value: 'c' }], created.version);
    const before = problems.length;
    await page.goto(`${base}/#/doc/${created.id}`);
    await page.locator('li[data-ptr="/long"] .more-text', { hasText: '300,000' }).waitFor();
    await page.locator('li[data-ptr="/big"] > .row .summary', { hasText: '10000 items' }).waitFor();
    await page.locator('li[data-ptr="/big"] > .row > .tog').click();
    await page.locator('li[data-ptr="/big/99"]').waitFor();
    await page.locator('li[data-ptr="/big"] button.show-more').waitFor();
    if ((await page.locator('li[data-ptr="/big/100"]').count()) !== 0) throw new Error('more than one chunk of /big rendered');
    await page.locator('.history li').nth(2).waitFor();
    // Earlier versions of a long list are slow to read: their summaries wait to be asked for.
    if ((await page.locator('.history button.what').count()) !== 3) throw new Error('summaries of a huge document were read unasked');
    // The conflict's link opens the tree as deep as it renders, and says where it stops.
    await page.locator(`.conflict-list button[data-path="${leaf}"]`).click();
    await page.locator('.tree .too-deep').first().waitFor();
    const deepest = await page.evaluate(() =>
      Math.max(...[...document.querySelectorAll('.tree li[data-ptr]')].map((li) => li.dataset.ptr.split('/').length - 1)),
    );
    if (deepest > 24) throw new Error(`rows ${deepest} levels deep were rendered`);
    const focused = await page.evaluate(() => document.activeElement?.closest('li[data-ptr]')?.dataset.ptr || '');
    if (!leaf.startsWith(`${focused}/`)) throw new Error(`the focus went to ${focused}, not an ancestor of the conflict`);
    if (problems.length > before) throw new Error(problems.slice(before).join('; '));
    await shot('deep-and-huge');
  });

  await step('lost edits are listed, restored and dismissed (the server answer stubbed)', async () => {
    const created = await http('POST', '/v1/docs', { agent: 'setup', body: { value: { items: [{ id: 1 }] } } });
    const docId = created.id;
    let deep = { end: true };
    for (let i = 0; i < 150; i += 1) deep = { d: deep };
    const state = {
      lost: [
        {
          id: 'aa01', path: '/items/1', deleted_by: ['bob'], edited_by: ['alice'],
          value: { id: 2, t: 'b', done: true }, change: 'c0ffee', time: Date.now() - 60_000,
        },
        {
          // Odd on purpose: agents unknown, a time no Date holds, a huge and deep value.
          id: 'aa02', path: '/notes', deleted_by: [null], edited_by: null,
          value: { huge: 'y'.repeat(1_000_000), list: Array.from({ length: 50_000 }, (_, i) => i), deep },
          change: 'beef', time: 9e15,
        },
      ],
      calls: [],
    };
    const isRead = (url) =>
      url.pathname === `/v1/docs/${docId}` && url.searchParams.get('conflicts') === 'true' && !url.searchParams.has('at');
    const isLost = (url) => url.pathname.startsWith(`/v1/docs/${docId}/lost/`);
    await page.route(isRead, async (route) => {
      const response = await route.fetch();
      const json = await response.json();
      await route.fulfill({ response, json: { ...json, lost: state.lost } });
    });
    await page.route(isLost, async (route) => {
      const request = route.request();
      const [lostId, action] = new URL(request.url()).pathname.slice(`/v1/docs/${docId}/lost/`.length).split('/');
      state.calls.push(`${request.method()} ${lostId}${action ? ` ${action}` : ''}${request.headers()['concord-agent'] ? ' with an agent' : ''}`);
      state.lost = state.lost.filter((r) => r.id !== lostId);
      const current = await http('GET', `/v1/docs/${docId}`);
      const json = request.method() === 'POST'
        ? { id: docId, version: current.version, strategy: 'crdt', value: current.value, new_changes: 0 }
        : { id: docId, version: current.version };
      await route.fulfill({ status: 200, contentType: 'application/json', json });
    });
    try {
      const before = problems.length;
      await page.goto(`${base}/#/doc/${docId}`);
      const first = page.locator('.lost-item[data-lost-id="aa01"]');
      await first.waitFor();
      await first.locator('.lost-path', { hasText: '/items/1' }).waitFor();
      await first.locator('.chip[data-agent="bob"]').waitFor();
      await first.locator('.chip[data-agent="alice"]').waitFor();
      const shown = await first.locator('.lost-value').innerText();
      if (shown !== '{"id": 2, "t": "b", "done": true}') throw new Error(`the lost value reads ${shown}`);
      const odd = page.locator('.lost-item[data-lost-id="aa02"]');
      await odd.waitFor();
      const oddValue = await odd.locator('.lost-value').innerText();
      if (oddValue.length > 200) throw new Error(`a huge lost value rendered ${oddValue.length} characters`);
      if ((await odd.locator('time').innerText()) !== 'invalid time') throw new Error('the odd time is shown as a date');
      await odd.locator('.chip', { hasText: 'unknown agent' }).waitFor();
      if (/\bnull\b|undefined/.test(await page.locator('.lost-list').innerText())) throw new Error('"null" or "undefined" shown in the lost edits');
      await shot('lost-edits');
      await first.getByRole('button', { name: /^Restore/ }).click();
      await first.waitFor({ state: 'detached' });
      await odd.getByRole('button', { name: /^Dismiss/ }).click();
      await odd.waitFor({ state: 'detached' });
      await page.locator('.lost-list p', { hasText: 'None' }).waitFor();
      const calls = state.calls.join(', ');
      if (calls !== 'POST aa01 restore with an agent, DELETE aa02 with an agent') throw new Error(`calls: ${calls}`);
      if (problems.length > before) throw new Error(problems.slice(before).join('; '));
    } finally {
      await page.unroute(isRead);
      await page.unroute(isLost);
    }
  });

  await step('lost edits from the server: shown, and Restore brings the item back', async () => {
    const created = await http('POST', '/v1/docs', {
      agent: 'setup',
      body: { value: { items: [{ id: 1 }, { id: 2, t: 'b' }] }, strategy: 'crdt' },
    });
    const docId = created.id;
    const v = created.version;
    const probe = await http('GET', `/v1/docs/${docId}?conflicts=true`);
    if (!Array.isArray(probe.lost)) throw new Error('the server answers ?conflicts=true without a lost array');
    // alice edits item 2 from v; bob, also from v, writes the list without item 2.
    await patch(docId, 'alice', [{ op: 'add', path: '/items/1/done', value: true }], v);
    await http('PUT', `/v1/docs/${docId}`, { agent: 'bob', body: { items: [{ id: 1 }] }, ifMatch: v });
    const after = await http('GET', `/v1/docs/${docId}?conflicts=true`);
    if (after.lost.length !== 1) throw new Error(`${after.lost.length} lost edits recorded, expected 1`);
    await page.goto(`${base}/#/doc/${docId}`);
    const item = page.locator('.lost-item[data-path="/items/1"]');
    await item.waitFor();
    await item.locator('.chip[data-agent="bob"]').waitFor();
    await item.locator('.chip[data-agent="alice"]').waitFor();
    if ((await page.locator('li[data-ptr="/items/1"]').count()) !== 0) throw new Error('item 2 is still in the tree');
    await item.getByRole('button', { name: /^Restore/ }).click();
    await page.locator('li[data-ptr="/items/1"]').waitFor();
    await item.waitFor({ state: 'detached' });
    const restored = (await http('GET', `/v1/docs/${docId}`)).value.items[1];
    if (restored?.id !== 2 || restored?.t !== 'b') throw new Error(`restored ${JSON.stringify(restored)}`);
  });

  await step('the documents list is live: new documents and changes appear', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Documents' }).click();
    const row = page.locator(`tr[data-id="${id}"]`);
    await row.waitFor();
    if (!(await row.innerText()).includes('crdt')) throw new Error('the row does not show the strategy');
    await page.locator('.pill[data-state="live"]').waitFor();
    const other = await http('POST', '/v1/docs', { agent: 'erin', body: { value: { n: 1 }, strategy: 'lww' } });
    const fresh = page.locator(`tr[data-id="${other.id}"]`);
    await fresh.waitFor();
    if (!(await fresh.innerText()).includes('erin')) throw new Error('the new row does not name its agent');
    await patch(other.id, 'frank', [{ op: 'replace', path: '/n', value: 2 }]);
    await fresh.locator('td.by', { hasText: 'frank' }).waitFor();
    await shot('documents');
  });

  await step('the seed scenario is drawn as swimlanes for every strategy', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Comparison' }).click();
    await page.locator('.scenario-card').nth(5).waitFor({ timeout: 60_000 });
    await page.locator('.scenario-card[data-strategy="lww"] .fate.bad').waitFor();
    await page.locator('.scenario-card[data-strategy="crdt"] .fate.good').waitFor();
    const lanes = await page.locator('.scenario-card[data-strategy="lww"] svg .lane-label').allTextContents();
    if (lanes.join('|') !== 'agent A|agent B|document') throw new Error(`lanes: ${lanes}`);
    await page.locator('.scenario-card[data-strategy="lww"] svg .ev-lost').waitFor();
  });

  await step('a comparison run from the browser: lww loses writes, crdt none', async () => {
    await page.selectOption('#cmp-workload', 'list');
    await page.fill('#cmp-agents', '4');
    await page.fill('#cmp-writes', '5');
    await page.fill('#cmp-think-min', '5');
    await page.fill('#cmp-think-max', '20');
    await page.click('#run-compare');
    await page.locator('#compare-progress').waitFor();
    await page.locator('#report-table').waitFor({ timeout: 120_000 });
    const lost = async (s) => Number(await page.locator(`#report-table tr[data-strategy="${s}"] td.lost`).getAttribute('data-value'));
    const lww = await lost('lww');
    const crdt = await lost('crdt');
    if (!(lww > 0)) throw new Error(`lww lost ${lww}, expected some`);
    if (crdt !== 0) throw new Error(`crdt lost ${crdt}, expected none`);
    const bars = await page.locator('#chart-lost rect.bar[data-series="silently"]').count();
    if (bars !== 6) throw new Error(`${bars} bars of silent losses in the lost-writes chart`);
    const surfaced = await page.locator('#chart-lost rect.bar[data-series="surfaced"]').count();
    if (surfaced !== 6) throw new Error(`${surfaced} bars of surfaced losses in the lost-writes chart`);
    const workloads = await page.locator('#cmp-workload option').allTextContents();
    if (!workloads.includes('board')) throw new Error(`workloads offered: ${workloads}`);
    await page.locator('#chart-latency rect.bar').nth(11).waitFor();
    console.log(`     lww lost ${lww}, crdt lost ${crdt}`);
  });

  await step('a sweep is plotted as cost against conflict rate', async () => {
    await page.fill('#sweep-agents', '2, 4');
    await page.fill('#sweep-think', '0-5, 20-40');
    await page.fill('#sweep-writes', '3');
    await page.click('#run-sweep');
    await page.locator('#chart-sweep circle.point').first().waitFor({ timeout: 120_000 });
    await page.selectOption('#sweep-metric', 'p99_ms');
    await page.locator('#chart-sweep circle.point').first().waitFor();
    await page.evaluate(() => window.scrollTo(0, 0));
    await shot('compare', { fullPage: true, readme: 'compare.png' });
  });

  await step('a page on another origin can neither write nor open a WebSocket', async () => {
    const target = await http('POST', '/v1/docs', { agent: 'owner', body: { value: { owner: 'me' } } });
    const before = (await http('GET', '/v1/docs')).docs.length;
    const site = await attackerSite();
    // A page of its own, without the listeners above: its refused requests are meant to fail.
    const attacker = await context.newPage();
    try {
      await attacker.goto(site.origin + '/');
      const ws = await attacker.evaluate(async ({ base, id }) => {
        const tries = [
          // Bodies a page may send another origin without asking (no JSON content type).
          fetch(base + '/v1/docs', { method: 'POST', mode: 'no-cors', body: new Blob(['{}']) }),
          fetch(base + '/v1/docs', { method: 'POST', mode: 'no-cors' }),
          fetch(base + `/v1/docs/${id}/changes`, {
            method: 'POST',
            mode: 'no-cors',
            body: new Uint8Array([0x85, 0x6f, 0x4a, 0x83]).buffer,
          }),
          fetch(base + '/v1/compare', { method: 'POST', mode: 'no-cors', body: '{}' }),
          fetch(base + `/v1/docs/${id}`, { method: 'DELETE', mode: 'no-cors' }),
        ];
        await Promise.allSettled(tries);
        return new Promise((resolve) => {
          const socket = new WebSocket(base.replace(/^http/, 'ws') + `/v1/docs/${id}/ws`);
          socket.onopen = () => {
            socket.send(JSON.stringify({ type: 'put', id: 'x', base: '*', value: { owner: 'attacker' } }));
            resolve('opened');
          };
          socket.onerror = () => resolve('refused');
        });
      }, { base, id: target.id });
      if (ws !== 'refused') throw new Error(`a WebSocket from ${site.origin} was ${ws}`);
    } finally {
      await attacker.close();
      site.server.close();
    }
    const after = await http('GET', '/v1/docs');
    if (after.docs.length !== before) throw new Error(`${after.docs.length - before} documents appeared`);
    const value = (await http('GET', `/v1/docs/${target.id}`)).value;
    if (value.owner !== 'me') throw new Error(`the document became ${JSON.stringify(value)}`);
  });

  await step('a page reached through DNS rebinding gets nothing', async () => {
    // Chromium resolves rebind.attacker.test to 127.0.0.1 (--host-resolver-rules): the page's
    // origin is the attacker's name on the server's own port, so its requests are same-origin.
    const before = (await http('GET', '/v1/docs')).docs.length;
    const rebound = `http://${REBIND_HOST}:${new URL(base).port}`;
    const attacker = await context.newPage();
    try {
      const page = await attacker.goto(rebound + '/');
      if (page.status() !== 403) throw new Error(`the viewer answered ${page.status()} at ${rebound}`);
      const statuses = await attacker.evaluate(async () => {
        const list = await fetch('/v1/docs');
        const create = await fetch('/v1/docs', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: '{}',
        });
        return [list.status, create.status];
      });
      if (statuses.join() !== '403,403') throw new Error(`answers ${statuses.join()}, not 403,403`);
    } finally {
      await attacker.close();
    }
    const after = (await http('GET', '/v1/docs')).docs.length;
    if (after !== before) throw new Error(`${after - before} documents appeared`);
  });
} catch (e) {
  failed = `${current}: ${e.message.split('\n')[0]}`;
  try {
    await shot('failure', { fullPage: true });
  } catch {
    // The page may be gone.
  }
}

await context.close();
rmSync(profile, { recursive: true, force: true });

for (const p of problems) console.error(`FAIL ${p}`);
if (failed) console.error(`FAIL ${failed}`);
console.log(`${checks.length} checks passed; screenshots in ${artifacts}`);
process.exit(failed || problems.length ? 1 : 0);
