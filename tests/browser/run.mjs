// The browser suite: drives headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core) through the Concord viewer of a running server.
//
//   node run.mjs http://127.0.0.1:PORT
//
// Environment: CHROMIUM (the browser, default /usr/bin/chromium), ARTIFACTS (where
// screenshots go, default ../../target/browser-artifacts), README_IMAGES (if set, a folder
// that receives document.png and compare.png for the README).
//
// It fails (exit 1) on any failed check and on any console error or uncaught exception in
// the page. `tests/browser.rs` starts the real server and runs this.

import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

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
const problems = []; // console errors and page exceptions
const checks = [];

// ------------------------------------------------------------------ HTTP, as other agents

async function http(method, path, { agent, body, type = 'application/json', ifMatch } = {}) {
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
