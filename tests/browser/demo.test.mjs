// Browser test of the demo page served at `GET /`.
//
// Starts the gateway binary (SSEGATE_BIN, default <repo>/target/debug/ssegate) on free
// loopback ports, drives Debian's Chromium with playwright-core, and checks that the page
// subscribes, shows events published from outside and from its own form, and shows errors.
//
//   cd tests/browser && npm ci && node --test
//
// Env: SSEGATE_BIN (gateway binary), CHROMIUM_PATH (default /usr/bin/chromium).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { chromiumArgs, chromiumPath, startGateway, stopGateway } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const screenshotDir = path.join(here, 'screenshots');

const WAIT_MS = 10_000; // for anything the page should show

let gateway = null; // { child, base, stderrTail() }
let browser = null;

function randomTag() {
  return randomBytes(6).toString('hex');
}

// Value for a double-quoted CSS attribute selector.
function cssString(value) {
  return value.replace(/["\\]/g, '\\$&');
}

async function publish(channel, body) {
  const res = await fetch(`${gateway.base}/v1/channels/${encodeURIComponent(channel)}/events`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 201, `publish answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

// A fresh page subscribed to `channels`, with page errors collected.
async function openDemo(t, channels) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  page.on('console', (msg) => {
    // Failed requests are asserted where they matter; anything else logged as an error is a bug.
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) {
      pageErrors.push(`console: ${msg.text()}`);
    }
  });
  await page.goto(`${gateway.base}/?channels=${encodeURIComponent(channels)}`);
  await page.locator('#state').filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT_MS });
  return { page, pageErrors };
}

function eventItem(page, id, text) {
  return page.locator(`#events li[data-id="${cssString(id)}"]`, { hasText: text });
}

before(async () => {
  // Chromium and the gateway start side by side.
  const launching = chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs });
  const starting = startGateway();
  const [b, g] = await Promise.allSettled([launching, starting]);
  if (b.status === 'fulfilled') browser = b.value;
  if (g.status === 'fulfilled') gateway = g.value;
  if (b.status === 'rejected') throw b.reason;
  if (g.status === 'rejected') throw g.reason;
});

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    if (gateway) await stopGateway(gateway);
  }
});

test('page subscribes and shows an event published from outside', { timeout: 30_000 }, async (t) => {
  const { page, pageErrors } = await openDemo(t, 'demo-browser');
  assert.equal(await page.locator('#reconnects').textContent(), '0');

  const text = `hello from the test ${randomTag()}`;
  const published = await publish('demo-browser', { data: text });
  assert.equal(typeof published.id, 'string');
  assert.equal(published.channel, 'demo-browser');

  const item = eventItem(page, published.id, text);
  await item.waitFor({ timeout: WAIT_MS });
  await page.locator('#last-id').filter({ hasText: published.id }).waitFor({ timeout: WAIT_MS });

  await mkdir(screenshotDir, { recursive: true });
  await page.screenshot({ path: path.join(screenshotDir, 'demo.png'), fullPage: true });
  assert.deepEqual(pageErrors, []);
});

test('page publishes through its own form', { timeout: 30_000 }, async (t) => {
  const { page, pageErrors } = await openDemo(t, 'demo-form');
  // The publish channel defaults to the subscribed one.
  assert.equal(await page.locator('#pub-channel').inputValue(), 'demo-form');

  const text = `from the form ${randomTag()}`;
  await page.locator('#pub-channel').fill('demo-form');
  await page.locator('#pub-data').fill(text);
  await page.locator('#publish').click();

  const result = page.locator('#publish-result').filter({ hasText: 'published' });
  await result.waitFor({ timeout: WAIT_MS });
  const id = (await result.textContent()).replace(/^\s*published\s+/, '').trim();
  assert.ok(id, 'the publish result names the id');
  await eventItem(page, id, text).waitFor({ timeout: WAIT_MS });

  // With an event type: the page starts listening for that type before it publishes.
  const typed = `typed ${randomTag()}`;
  await page.locator('#pub-event').fill('chat');
  await page.locator('#pub-data').fill(typed);
  await page.locator('#publish').click();
  const item = page.locator('#events li[data-type="chat"]', { hasText: typed });
  await item.waitFor({ timeout: WAIT_MS });
  assert.notEqual(await item.getAttribute('data-id'), id);
  assert.deepEqual(pageErrors, []);
});

test('page shows a publish error', { timeout: 30_000 }, async (t) => {
  const { page } = await openDemo(t, 'demo-errors');
  await page.locator('#pub-channel').fill('bad channel!');
  await page.locator('#pub-data').fill('never published');
  await page.locator('#publish').click();
  await page.locator('#publish-result').filter({ hasText: 'invalid_channel' }).waitFor({ timeout: WAIT_MS });
  assert.equal(await page.locator('#events li').count(), 0);
});
