// The browser helper the gateway serves at /ssegate.js (docs/clients.md), in headless
// Chromium against a real gateway process with auth on: tokens that expire every 2 s are
// refreshed through the page's own `token()` and the stream goes on from where it was
// (every event exactly once, no sync-required); the connection state is reported;
// `sync-required` reaches its callback.
//
//   cd tests/browser && npm ci && node --test helper.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { chromiumArgs, chromiumPath, startGateway, stopGateway } from './lib.mjs';

const WAIT_MS = 15_000;
const PUBLISHER_KEY = 'helper-test-publisher-key-0123456789';
let gateway = null;
let browser = null;

before(async () => {
  gateway = await startGateway({
    SSEGATE_AUTH_JWT_SECRET: 'helper-test-secret-0123456789abcdef0123456789',
    SSEGATE_PUBLISH_KEYS: PUBLISHER_KEY,
  });
  browser = await chromium.launch({ executablePath: chromiumPath, args: chromiumArgs });
});

after(async () => {
  await browser?.close();
  if (gateway) await stopGateway(gateway);
});

async function mint(ttl) {
  const res = await fetch(`${gateway.base}/v1/tokens`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${PUBLISHER_KEY}` },
    body: JSON.stringify({ sub: 'page', subscribe: ['helper*'], ttl }),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return (await res.json()).token;
}

async function publish(channel, data) {
  const res = await fetch(`${gateway.base}/v1/channels/${channel}/events`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${PUBLISHER_KEY}` },
    body: JSON.stringify({ data }),
  });
  assert.equal(res.status, 201);
  return (await res.json()).id;
}

async function helperPage(t) {
  const context = await browser.newContext();
  t.after(() => context.close());
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  let mints = 0;
  await page.exposeFunction('mintToken', async () => { mints += 1; return mint('2s'); });
  await page.goto(`${gateway.base}/healthz`); // any page of the gateway's origin
  return { page, errors, mints: () => mints };
}

test('token-expired is refreshed through token() and the stream goes on exactly once',
  { timeout: 60_000 }, async (t) => {
    const { page, errors, mints } = await helperPage(t);
    await page.evaluate(async () => {
      const { subscribe } = await import('/ssegate.js');
      window.log = { got: [], syncs: [], states: [] };
      window.sub = subscribe('/v1/channels/helper/events', {
        onMessage: (data) => window.log.got.push(data),
        onSyncRequired: (s) => window.log.syncs.push(s),
        onState: (s) => window.log.states.push(s),
        token: () => window.mintToken(),
      });
    });
    await page.waitForFunction(() => window.log.states.includes('open'), null, { timeout: WAIT_MS });
    const published = [];
    const until = Date.now() + 5_000; // past two expiries
    for (let i = 0; Date.now() < until; i++) {
      await publish('helper', `e${i}`);
      published.push(`e${i}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await publish('helper', 'last');
    published.push('last');
    // Tokens keep expiring every 2 s, so the state may be `reconnecting` at any moment:
    // take the log in the page at a moment it is open again after the last event, in one
    // step, rather than read the state after it may have moved on.
    const log = await (await page.waitForFunction(() => (
      window.log.got.includes('last') && window.log.states.at(-1) === 'open'
        ? JSON.parse(JSON.stringify(window.log)) : null
    ), null, { timeout: WAIT_MS })).jsonValue();
    t.diagnostic(`${mints()} tokens, states ${log.states.join(' ')}`);
    assert.ok(mints() >= 3, `the expired token was replaced (${mints()} minted)`);
    assert.deepEqual(log.got, published, 'every event exactly once, in order');
    assert.deepEqual(log.syncs, []);
    assert.ok(log.states.includes('reconnecting'), log.states.join(' '));
    assert.equal(log.states.at(-1), 'open');
    await page.evaluate(() => window.sub.close());
    assert.equal(await page.evaluate(() => window.sub.state), 'closed');
    assert.deepEqual(errors, []);
  });

test('sync-required reaches its callback', { timeout: 30_000 }, async (t) => {
  const { page } = await helperPage(t);
  // A cursor far ahead of the channel's newest event: the client is told, not left waiting.
  const parts = (await publish('helper-sync', 'x')).split('-');
  const seq = parts.pop();
  const ahead = [...parts.slice(0, -1), String(Number(parts.at(-1)) + 1e9), seq].join('-');
  const reason = await page.evaluate(async (ahead) => {
    const { subscribe } = await import('/ssegate.js');
    return new Promise((resolve) => {
      const sub = subscribe(`/v1/channels/helper-sync/events?lastEventId=${encodeURIComponent(ahead)}`, {
        onSyncRequired: (s) => { sub.close(); resolve(s.reason); },
        token: () => window.mintToken(),
      });
    });
  }, ahead);
  assert.equal(typeof reason, 'string');
});
