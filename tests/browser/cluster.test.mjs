// Browser tests through the local cluster: scripts/cluster up (a real redis-server, three
// gateway nodes, nginx rendered from nginx/) on a non-default port, with its TLS + HTTP/2
// listener, and Debian's Chromium driven by playwright-core. Every page is served by the
// cluster itself (the demo page at `/`), so everything it does is same-origin, exactly as
// for a user of `scripts/cluster up`.
//
// - The demo page publishes through its own form and gets 201: nginx must hand the nodes
//   the Host the browser sent, port included, or their same-origin check answers the
//   fetch's Origin ("http://localhost:PORT") with 403 origin_not_allowed.
// - "A stream starts at its response head" (../../../shared/DESIGN.md, Delivery semantics):
//   an EventSource's `open` is immediately followed by the page's own fetch POST of an
//   event, round after round on fresh channels, several rounds at once; every such event
//   must reach its EventSource exactly once. Regression test for events lost when they were
//   published right after the 200 head in cluster mode.
// - A rolling restart (drain, then SIGKILL, node by node) leaves every EventSource open,
//   with every event exactly once: regression test for nginx's failed-node marks.
//
//   cd tests/browser && npm ci && node --test cluster.test.mjs
//
// Env: SSEGATE_BIN (gateway binary, default <repo>/target/debug/ssegate), CHROMIUM_PATH,
// SSEGATE_RACE_ROUNDS (rounds per protocol, default 80).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';
import {
  chromiumArgs, chromiumPath, clusterCommand, publishUntilCreated, startCluster, stopCluster,
} from './lib.mjs';

const WAIT_MS = 10_000; // for anything a page should show
const ROUND_DEADLINE_MS = 5_000; // a round whose events have not all arrived by then failed
const ROUNDS = Number(process.env.SSEGATE_RACE_ROUNDS || 80);

let cluster = null;
let browser = null;

// The two ways a browser reaches the cluster. `localhost`, as a user types it: the
// browser's Origin then carries a host name and the non-default port. TLS: the cluster's
// certificate is self-signed (for localhost), so that context ignores certificate errors.
// Contexts do not share connections, so each has its own six HTTP/1.1 connections.
const PROTOCOLS = {
  'HTTP/1.1': {
    origin: () => `http://localhost:${cluster.port}`,
    nextHop: 'http/1.1',
    context: {},
    // Per context at most 1 (the demo page's own stream) + 2 streams + 2 fetches open:
    // inside HTTP/1.1's six connections per origin, so no request waits for a socket.
    contexts: 4,
    lanes: 2,
  },
  'TLS + HTTP/2': {
    origin: () => `https://localhost:${cluster.tlsPort}`,
    nextHop: 'h2',
    context: { ignoreHTTPSErrors: true },
    contexts: 2,
    lanes: 4, // one connection per context carries everything
  },
};

function tag() {
  return randomBytes(4).toString('hex');
}

before(async () => {
  // Chromium and the cluster start side by side.
  const [b, c] = await Promise.allSettled([
    chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs }),
    startCluster({ nodes: 3, tls: true }),
  ]);
  if (b.status === 'fulfilled') browser = b.value;
  if (c.status === 'fulfilled') cluster = c.value;
  if (b.status === 'rejected') throw b.reason;
  if (c.status === 'rejected') throw c.reason;
}, { timeout: 120_000 });

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    if (cluster) await stopCluster(cluster);
  }
});

// The demo page of the cluster in a fresh context, subscribed to `channel`, its stream open.
async function openDemo(t, proto, channel) {
  const p = PROTOCOLS[proto];
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, ...p.context });
  t.after(() => context.close());
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  page.on('console', (msg) => {
    if (msg.type() === 'error') pageErrors.push(`console: ${msg.text()}`);
  });
  await page.goto(`${p.origin()}/?channels=${encodeURIComponent(channel)}`);
  await page.locator('#state').filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT_MS });
  const nextHop = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  assert.equal(nextHop, p.nextHop, `the page came over ${nextHop}`);
  return { page, pageErrors };
}

for (const proto of Object.keys(PROTOCOLS)) {
  test(`demo page publishes through nginx on a non-default port (${proto})`, { timeout: 30_000 }, async (t) => {
    const channel = `demo-lb-${tag()}`;
    const { page, pageErrors } = await openDemo(t, proto, channel);
    assert.notEqual(new URL(page.url()).port, '', 'not on the scheme\'s default port');

    const text = `from the form through nginx ${tag()}`;
    await page.locator('#pub-channel').fill(channel);
    await page.locator('#pub-data').fill(text);
    const answered = page.waitForResponse((res) => res.request().method() === 'POST', { timeout: WAIT_MS });
    await page.locator('#publish').click();
    const res = await answered;
    assert.equal(res.status(), 201, `the page's publish answered ${res.status()}: ${await res.text()}`);
    const { id } = await res.json();

    await page.locator('#publish-result').filter({ hasText: `published ${id}` }).waitFor({ timeout: WAIT_MS });
    await page.locator(`#events li[data-id="${id}"]`, { hasText: text }).waitFor({ timeout: WAIT_MS });
    assert.deepEqual(pageErrors, []);
  });
}

// Runs in the page: lanes of rounds, the lanes side by side, the rounds of a lane one after
// another. A round opens an EventSource on its own fresh channel and, in its `open` handler,
// POSTs the event under test ("first"); once that is answered it POSTs a second event
// ("last"). Channels are ordered, so when "last" has arrived, "first" has arrived before it
// or never will: the round ends on what the client sees, with no waiting for silence. It
// fails by its deadline only when nothing arrives at all.
async function runLanes({ lanes, deadlineMs }) {
  const publish = async (r, channel, data) => {
    const res = await fetch(`/v1/channels/${channel}/events`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ data }),
    });
    const text = await res.text();
    let id = null;
    try {
      id = JSON.parse(text).id ?? null;
    } catch { /* reported below */ }
    r.posts.push({ data, status: res.status, id, ...(res.status === 201 ? {} : { body: text.slice(0, 200) }) });
    return res.status === 201 ? id : null;
  };

  const round = (channel) => new Promise((resolve) => {
    const r = { channel, opened: false, errors: 0, timedOut: false, posts: [], received: [] };
    const es = new EventSource(`/v1/channels/${channel}/events`);
    let lastPosted = false;
    let lastReceived = false;
    const finish = () => {
      clearTimeout(timer);
      es.close();
      resolve(r);
    };
    const timer = setTimeout(() => {
      r.timedOut = true;
      finish();
    }, deadlineMs);
    es.onmessage = (e) => {
      r.received.push({ id: e.lastEventId, data: e.data });
      if (e.data === 'last') {
        lastReceived = true;
        if (lastPosted) finish();
      }
    };
    // Any error (a reconnect would resume from Last-Event-ID and could hide a loss) ends it.
    es.onerror = () => {
      r.errors += 1;
      finish();
    };
    es.onopen = () => {
      r.opened = true;
      // The moment the client has the 200 head: publish.
      publish(r, channel, 'first')
        .then((id) => (id === null ? null : publish(r, channel, 'last')))
        .then((id) => {
          lastPosted = true;
          if (id === null || lastReceived) finish();
        })
        .catch((err) => {
          r.fetchError = String(err);
          finish();
        });
    };
  });

  return Promise.all(lanes.map(async (channels) => {
    const results = [];
    for (const channel of channels) results.push(await round(channel));
    return results;
  })).then((perLane) => perLane.flat());
}

// What went wrong in a round, or null.
function verdict(r) {
  const firsts = r.received.filter((e) => e.data === 'first');
  const [first, last] = r.posts;
  if (!r.opened) return 'never opened';
  if (r.fetchError) return `fetch failed: ${r.fetchError}`;
  if (!first || first.status !== 201) return `publish answered ${first?.status}: ${first?.body}`;
  if (!last || last.status !== 201) return `second publish answered ${last?.status}: ${last?.body}`;
  if (firsts.length > 1) return 'duplicated';
  const lastArrived = r.received.some((e) => e.data === 'last');
  if (firsts.length === 0 && lastArrived) return 'lost';
  if (r.errors) return `stream error (${r.errors}) before both events arrived`;
  if (r.timedOut) return firsts.length === 0 ? 'lost (and the second event too)' : 'timed out';
  const want = [{ id: first.id, data: 'first' }, { id: last.id, data: 'last' }];
  if (JSON.stringify(r.received) !== JSON.stringify(want)) return 'wrong events';
  return null;
}

for (const proto of Object.keys(PROTOCOLS)) {
  test(`an event published on EventSource open arrives exactly once (${proto}, ${ROUNDS} rounds)`,
    { timeout: 60_000 }, async (t) => {
      const p = PROTOCOLS[proto];
      const run = tag();
      const parallel = p.contexts * p.lanes;
      const pages = [];
      for (let c = 0; c < p.contexts; c++) {
        pages.push((await openDemo(t, proto, `race-home-${run}-${c}`)).page);
      }
      // Round i runs in lane i % parallel, so the lanes share the rounds evenly.
      const lanes = Array.from({ length: parallel }, () => []);
      for (let i = 0; i < ROUNDS; i++) lanes[i % parallel].push(`race-${run}-${i}`);
      const perPage = pages.map((page, c) => page.evaluate(runLanes, {
        lanes: lanes.slice(c * p.lanes, (c + 1) * p.lanes),
        deadlineMs: ROUND_DEADLINE_MS,
      }));
      const results = (await Promise.all(perPage)).flat();
      assert.equal(results.length, ROUNDS);

      const failed = results.map((r) => ({ r, why: verdict(r) })).filter((f) => f.why);
      const count = (why) => failed.filter((f) => f.why.startsWith(why)).length;
      t.diagnostic(`${proto}: ${ROUNDS} rounds, ${parallel} at a time: ${count('lost')} lost the event, ` +
        `${count('duplicated')} duplicated it, ${failed.length} failed in all`);
      assert.deepEqual(failed.map((f) => `${f.r.channel}: ${f.why}`), [],
        `${failed.length} of ${ROUNDS} rounds failed; the first:\n` +
        failed.slice(0, 3).map((f) => JSON.stringify(f.r)).join('\n'));
    });
}

// A rolling deploy as docs/operations.md describes it, through the cluster's nginx, with
// browsers on both listeners: every node in turn drained (scripts/cluster stop: SIGTERM,
// wait until it has exited) and started again, then every node in turn SIGKILLed and
// started again, while a publisher goes on (retrying with the same Idempotency-Key until
// 201). Afterwards every EventSource is still alive (never CLOSED: nginx must not answer
// it with a status that ends it) and has every event exactly once, in order. Runs last:
// it restarts the cluster's nodes.
const ROLLING = { 'HTTP/1.1': 5, 'TLS + HTTP/2': 10 };

// The rolling restart on cluster `c` of `nodes` nodes.
async function rollingRestart(t, c, nodes) {
    const channel = `roll-${tag()}`;
    const pages = [];
    for (const [proto, count] of Object.entries(ROLLING)) {
      const p = PROTOCOLS[proto];
      const context = await browser.newContext(p.context);
      t.after(() => context.close());
      const page = await context.newPage();
      const origin = proto === 'HTTP/1.1' ? `http://localhost:${c.port}` : `https://localhost:${c.tlsPort}`;
      await page.goto(`${origin}/lb-healthz`);
      await page.evaluate(({ channel, count }) => {
        window.rolling = Array.from({ length: count }, () => {
          const s = { es: new EventSource(`/v1/channels/${channel}/events`), got: [], syncs: 0, errors: 0 };
          s.es.onmessage = (e) => s.got.push(e.data);
          s.es.onerror = () => { s.errors += 1; };
          s.es.addEventListener('sync-required', () => { s.syncs += 1; });
          return s;
        });
      }, { channel, count });
      await page.waitForFunction(() => window.rolling.every((s) => s.es.readyState === 1),
        null, { timeout: WAIT_MS });
      pages.push({ proto, page });
    }

    const published = [];
    const publishOnce = (data) => publishUntilCreated(c.base, channel, data);
    let stop = false;
    const publisher = (async () => {
      for (let i = 0; !stop; i++) {
        await publishOnce(`e${i}`);
        published.push(`e${i}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const cli = (...args) => clusterCommand(c, args);
    for (const how of ['stop', 'kill']) {
      for (let k = 1; k <= nodes; k++) {
        await cli(how, `node${k}`);
        await cli('start', `node${k}`);
      }
    }
    stop = true;
    await publisher;
    await publishOnce('last');
    published.push('last');

    for (const { proto, page } of pages) {
      await page.waitForFunction(() => window.rolling.every((s) => s.es.readyState === 2 || s.got.includes('last')),
        null, { timeout: 30_000 });
      const seen = await page.evaluate(() => window.rolling.map((s) => ({
        state: s.es.readyState, got: s.got, syncs: s.syncs, errors: s.errors,
      })));
      t.diagnostic(`${proto}: ${seen.length} EventSources, ${published.length} events, ` +
        `${seen.reduce((n, s) => n + s.errors, 0)} reconnects`);
      seen.forEach((s, i) => {
        assert.notEqual(s.state, 2, `${proto} EventSource ${i} was closed for good`);
        assert.equal(s.syncs, 0, `${proto} EventSource ${i}: nothing was lost to announce`);
        assert.deepEqual(s.got, published, `${proto} EventSource ${i}: every event exactly once, in order`);
      });
    }
}

test('every EventSource survives a rolling restart by drain and by SIGKILL, exactly once (3 nodes)',
  { timeout: 150_000 }, (t) => rollingRestart(t, cluster, 3));

// With two nodes, each restart leaves one node for everyone: the case where nginx's
// failure accounting once made it answer `no live upstreams`.
test('the same with two nodes', { timeout: 180_000 }, async (t) => {
  const two = await startCluster({ nodes: 2, tls: true });
  t.after(() => stopCluster(two));
  await rollingRestart(t, two, 2);
});
