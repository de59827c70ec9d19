#!/usr/bin/env node
// End-to-end check of the dashboard in real headless Chromium (Debian's, driven by
// playwright-core: `npx playwright install` cannot download browsers here).
//
//   node e2e/run.mjs --base-url http://127.0.0.1:8000 --user analyst --password secret \
//        --out ../var/artifacts/screenshots [--grant password|client_credentials]
//
// Signs in with the keyboard, checks every page shows real data (table rows, SVG marks of
// each chart), opens a customer from the table with the keyboard, runs axe-core at 1280 and
// 390 px, checks nothing overflows sideways on a phone, and saves a screenshot of each page.
// Prints one JSON document on stdout; exits 0 only when every check passed. Every wait is
// Playwright's wait for a selector or a condition: no sleeps.

import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const { values: options } = parseArgs({
  options: {
    'base-url': { type: 'string', default: 'http://127.0.0.1:8000' },
    user: { type: 'string' },
    password: { type: 'string' },
    grant: { type: 'string', default: 'password' },
    out: { type: 'string', default: 'var/artifacts/screenshots' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    timeout: { type: 'string', default: '30000' },
  },
});
if (!options.user || !options.password) {
  console.error('usage: run.mjs --base-url URL --user NAME --password SECRET [--out DIR]');
  process.exit(2);
}

const BASE = options['base-url'].replace(/\/$/, '');
const OUT = resolve(options.out);
const TIMEOUT = Number(options.timeout);
const WIDE = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
// WCAG 2.1 A/AA rules plus axe's best practices; only serious and critical ones fail the run.
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'];
const FAILING_IMPACTS = new Set(['serious', 'critical']);

const started = Date.now();
const result = {
  ok: false,
  baseUrl: BASE,
  pages: {},
  axe: [],
  seriousViolations: 0,
  overflow: [],
  screenshots: [],
  consoleErrors: [],
  pageErrors: [],
  failures: [],
  seconds: 0,
};

function check(condition, message) {
  if (!condition) result.failures.push(message);
  return condition;
}

const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

async function runAxe(page, name, width) {
  // Evaluated through the DevTools protocol, which the page's Content-Security-Policy (no
  // inline scripts) does not apply to: the app is checked exactly as it is served.
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) {
    await page.evaluate(axeSource);
  }
  const found = await page.evaluate(
    async (tags) => {
      const report = await window.axe.run(document, {
        runOnly: { type: 'tag', values: tags },
        resultTypes: ['violations'],
      });
      return report.violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.length,
        targets: v.nodes.slice(0, 3).map((n) => n.target.join(' ')),
      }));
    },
    AXE_TAGS,
  );
  const serious = found.filter((v) => FAILING_IMPACTS.has(v.impact));
  result.seriousViolations += serious.length;
  result.axe.push({ page: name, width, violations: found });
  for (const v of serious) {
    result.failures.push(`axe ${v.impact} on ${name} at ${width}px: ${v.id} (${v.help}) ${v.targets.join(', ')}`);
  }
}

async function shoot(page, name, width) {
  const path = join(OUT, `${name}-${width}.png`);
  await page.screenshot({ path, fullPage: true });
  result.screenshots.push(path);
}

async function noSidewaysScroll(page, name, width) {
  const sizes = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    view: window.innerWidth,
  }));
  if (sizes.scroll > sizes.view + 1) {
    result.overflow.push({ page: name, width, ...sizes });
    result.failures.push(`${name} at ${width}px scrolls sideways (${sizes.scroll} > ${sizes.view})`);
  }
}

async function count(page, selector) {
  return page.locator(selector).count();
}

/** Waits until ``selector`` matches at least ``minimum`` elements; returns how many. */
async function atLeast(page, selector, minimum = 1) {
  await page.waitForFunction(
    ([s, n]) => document.querySelectorAll(s).length >= n,
    [selector, minimum],
    { timeout: TIMEOUT },
  );
  return count(page, selector);
}

async function pathLength(page, selector) {
  return page.locator(selector).first().evaluate((el) => (el.getAttribute('d') || '').length);
}

async function navTo(page, label) {
  await page.getByRole('navigation', { name: 'Dashboard pages' }).getByRole('link', { name: label }).click();
}

async function signIn(page) {
  await page.goto(`${BASE}/ui/`);
  await page.getByRole('heading', { name: 'Churn dashboard' }).waitFor({ timeout: TIMEOUT });
  await runAxe(page, 'login', WIDE.width);
  await shoot(page, 'login', WIDE.width);
  if (options.grant === 'client_credentials') {
    await page.getByRole('radio', { name: 'API client' }).check();
  }
  // The keyboard only: the name field has focus, Tab reaches the secret, Enter submits.
  await page.locator('#username').focus();
  await page.keyboard.type(options.user);
  await page.keyboard.press('Tab');
  const focused = await page.evaluate(() => document.activeElement?.id);
  check(focused === 'password', `Tab from the name field reached ${focused}, not the password`);
  await page.keyboard.type(options.password);
  await page.keyboard.press('Enter');
  await page
    .locator('[data-testid="customer-row"], [data-testid="sign-in-error"]')
    .first()
    .waitFor({ timeout: TIMEOUT });
  const error = await page.locator('[data-testid="sign-in-error"]').count();
  if (error) throw new Error(`sign-in refused: ${await page.locator('[data-testid="sign-in-error"]').innerText()}`);
}

async function customersPage(page) {
  const rows = await atLeast(page, '[data-testid="customer-row"]');
  const probabilities = await page
    .locator('[data-testid="customer-row"] [data-testid="probability"]')
    .evaluateAll((cells) => cells.map((c) => parseFloat(c.textContent)));
  const sortedDesc = probabilities.every((p, i) => i === 0 || probabilities[i - 1] >= p);
  check(sortedDesc, `customers are not highest risk first: ${probabilities.slice(0, 5)}`);
  const first = await page.locator('[data-testid="customer-row"] a').first().innerText();
  // Server-side sorting: lowest risk first after one click on the header.
  await page.getByRole('button', { name: 'Churn probability' }).click();
  await page.waitForFunction(
    (top) => {
      const cells = [...document.querySelectorAll('[data-testid="customer-row"] [data-testid="probability"]')];
      const values = cells.map((c) => parseFloat(c.textContent));
      return values.length > 1 && values[0] <= values[values.length - 1] && values[0] < top;
    },
    probabilities[0],
    { timeout: TIMEOUT },
  );
  await page.getByRole('button', { name: 'Churn probability' }).click();
  await page.waitForFunction(
    (id) => document.querySelector('[data-testid="customer-row"] a')?.textContent === id,
    first,
    { timeout: TIMEOUT },
  );
  // Server-side filtering: the first customer's id finds it.
  await page.getByLabel('Customer id contains').fill(first);
  await page.waitForFunction(
    (id) => {
      const links = [...document.querySelectorAll('[data-testid="customer-row"] a')];
      return links.length >= 1 && links.every((a) => a.textContent.includes(id));
    },
    first,
    { timeout: TIMEOUT },
  );
  const filtered = await count(page, '[data-testid="customer-row"]');
  await page.getByLabel('Customer id contains').fill('');
  await page.getByLabel('Customer id contains').blur();
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid="customer-row"]').length === n, rows, {
    timeout: TIMEOUT,
  });
  result.pages.customers = {
    rows,
    sortedDesc,
    first,
    filteredRows: filtered,
    customers: await page.getByTestId('stat-customers').innerText(),
  };
  return first;
}

async function customerPage(page, id) {
  // Open it from the table with the keyboard: focus the link, press Enter.
  await page.locator('[data-testid="customer-row"] a').first().focus();
  await page.keyboard.press('Enter');
  await page.waitForURL(`**/ui/customers/${id}`, { timeout: TIMEOUT });
  const bars = await atLeast(page, '[data-testid="contributions-chart"] rect.bar');
  const history = await atLeast(page, '[data-testid="history-chart"] circle.point');
  result.pages.customer = {
    id,
    contributionBars: bars,
    historyPoints: history,
    probability: await page.getByTestId('customer-probability').innerText(),
  };
}

async function modelPage(page) {
  await navTo(page, 'Model');
  const versions = await atLeast(page, '[data-testid="versions-table"] tbody tr');
  await atLeast(page, '[data-testid="roc-chart"] path.line');
  const roc = await pathLength(page, '[data-testid="roc-chart"] path.line');
  const calibration = await atLeast(page, '[data-testid="calibration-chart"] circle.point');
  const lift = await atLeast(page, '[data-testid="lift-chart"] rect.bar');
  check(roc > 20, 'the ROC curve has no path');
  result.pages.model = {
    versions,
    rocPathLength: roc,
    calibrationPoints: calibration,
    liftBars: lift,
    rocAuc: await page.getByTestId('metric-roc-auc').innerText(),
  };
}

async function importancePage(page) {
  await navTo(page, 'Feature importance');
  const global = await atLeast(page, '[data-testid="importance-chart"] rect.bar');
  const customer = await atLeast(page, '[data-testid="one-customer-importance"] rect.bar');
  result.pages.importance = { globalBars: global, customerBars: customer };
}

async function driftPage(page) {
  await navTo(page, 'Drift');
  const points = await atLeast(page, '[data-testid="drift-chart"] circle.point');
  const features = await atLeast(page, '[data-testid="drift-table"] tbody tr');
  await page.getByTestId('drift-alerts').waitFor({ timeout: TIMEOUT });
  result.pages.drift = {
    points,
    features,
    alerts: await count(page, '[data-testid="drift-alerts"] [role="alert"]'),
    drifted: await page.getByTestId('stat-drifted').innerText(),
  };
}

async function livePage(page) {
  await navTo(page, 'Live serving');
  // A rate needs two polls answered by the same replica.
  await page.waitForFunction(
    () => /req\/s/.test(document.querySelector('[data-testid="stat-rate"]')?.textContent ?? ''),
    null,
    { timeout: TIMEOUT },
  );
  await atLeast(page, RATE_DRAWN);
  result.pages.live = {
    rate: await page.getByTestId('stat-rate').innerText(),
    p50: await page.getByTestId('stat-p50').innerText(),
    p95: await page.getByTestId('stat-p95').innerText(),
    cacheHitRatio: await page.getByTestId('stat-cache').innerText(),
    routes: await count(page, '[data-testid="routes-table"] tbody tr'),
  };
}

// A measured request rate drawn: a marker while there is one point, then a line.
const RATE_DRAWN = '[data-testid="rate-chart"] circle.point, [data-testid="rate-chart"] path.line[d^="M"]';

// What each page must show before its screenshot and accessibility check at phone width.
const PHONE_PAGES = [
  ['customers', '/ui/', ['[data-testid="customer-row"]']],
  ['customer', null, ['[data-testid="contributions-chart"] rect.bar', '[data-testid="history-chart"] circle.point']],
  ['model', '/ui/model', ['[data-testid="roc-chart"] path.line', '[data-testid="lift-chart"] rect.bar']],
  [
    'importance',
    '/ui/importance',
    ['[data-testid="importance-chart"] rect.bar', '[data-testid="one-customer-importance"] rect.bar'],
  ],
  ['drift', '/ui/drift', ['[data-testid="drift-chart"] circle.point', '[data-testid="drift-alerts"]']],
  ['live', '/ui/live', ['[data-testid="stat-rate"]', RATE_DRAWN]],
];

async function main() {
  mkdirSync(OUT, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'churn-e2e-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: options.chromium,
    headless: true,
    viewport: WIDE,
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
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(TIMEOUT);
    page.on('console', (message) => {
      if (message.type() === 'error') result.consoleErrors.push(message.text());
    });
    page.on('pageerror', (error) => result.pageErrors.push(String(error)));

    await signIn(page);
    const first = await customersPage(page);
    await runAxe(page, 'customers', WIDE.width);
    await shoot(page, 'customers', WIDE.width);
    await customerPage(page, first);
    await runAxe(page, 'customer', WIDE.width);
    await shoot(page, 'customer', WIDE.width);
    for (const [name, visit] of [
      ['model', modelPage],
      ['importance', importancePage],
      ['drift', driftPage],
      ['live', livePage],
    ]) {
      await visit(page);
      await runAxe(page, name, WIDE.width);
      await shoot(page, name, WIDE.width);
    }

    // A phone: every page loaded afresh at 390 px (the session survives in this tab).
    await page.setViewportSize(PHONE);
    for (const [name, path, ready] of PHONE_PAGES) {
      await page.goto(`${BASE}${path ?? `/ui/customers/${encodeURIComponent(first)}`}`);
      for (const selector of ready) await atLeast(page, selector);
      await noSidewaysScroll(page, name, PHONE.width);
      await runAxe(page, name, PHONE.width);
      await shoot(page, name, PHONE.width);
    }
  } catch (error) {
    result.failures.push(`stopped: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
  const csp = result.consoleErrors.filter((m) => /Content Security Policy/i.test(m));
  check(csp.length === 0, `Content-Security-Policy violations: ${csp.slice(0, 3).join(' | ')}`);
  check(result.pageErrors.length === 0, `uncaught errors: ${result.pageErrors.slice(0, 3).join(' | ')}`);
  result.seconds = (Date.now() - started) / 1000;
  result.ok = result.failures.length === 0;
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(result.ok ? 0 : 1);
}

await main();
