// The SSE clients people use, as docs/clients.md tells to use them (the snippets of
// tests/browser/clients/, which docs/clients.md shows verbatim), against the local cluster
// (scripts/cluster: a real redis-server, two gateway nodes, nginx in front) while a
// publisher goes on and every node in turn is drained and started again, then SIGKILLed
// and started again. Afterwards every client has every event exactly once, in order, and
// was never told of a loss. npm eventsource 5 and 2, @microsoft/fetch-event-source (a
// browser library: `window` and `document` are shims here), and curl in a reconnect loop.
//
//   cd tests/browser && npm ci && node --test clients.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import EventSource2 from 'eventsource2';
import { clusterCommand, publishUntilCreated, startCluster, stopCluster } from './lib.mjs';
import * as eventsource from './clients/eventsource.mjs';
import * as fetchEventSource from './clients/fetch-event-source.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const WAIT_MS = 30_000;
// fetch-event-source is written for browsers: it calls window.setTimeout, and its
// dispose() removes a document listener (without `document`, an abort throws there and its
// retry timer goes on for ever).
globalThis.window ??= globalThis;
globalThis.document ??= { hidden: false, addEventListener() {}, removeEventListener() {} };

// What one client saw; `opened` resolves at its first response head.
function recorder(name) {
  let open;
  const rec = { name, got: [], syncs: [], opens: 0, opened: new Promise((r) => { open = r; }) };
  rec.handlers = {
    onOpen: () => { rec.opens += 1; open(); },
    onEvent: (data) => rec.got.push(data),
    onSyncRequired: (sync) => rec.syncs.push(sync),
  };
  return rec;
}

// curl-follow.sh as a child process, its lines fed to the same handlers.
function curlFollow(url, handlers) {
  const child = spawn(path.join(here, 'clients', 'curl-follow.sh'), [url],
    { stdio: ['ignore', 'pipe', 'ignore'], detached: true });
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const [type, ...rest] = line.split(' ');
    const data = rest.join(' ');
    if (type === 'open') handlers.onOpen();
    else if (type === 'message') handlers.onEvent(data);
    else if (type === 'sync-required') handlers.onSyncRequired(JSON.parse(data));
  });
  return () => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } };
}

async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`never: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('eventsource 5 and 2, fetch-event-source and curl keep every event through drains and kills',
  { timeout: 180_000 }, async (t) => {
    const cluster = await startCluster({ nodes: 2, tls: false });
    t.after(() => stopCluster(cluster));
    const channel = `clients-${randomBytes(4).toString('hex')}`;
    const url = `${cluster.base}/v1/channels/${channel}/events`;
    const starts = {
      'eventsource 5': (h) => eventsource.follow(url, h),
      'eventsource 2': (h) => eventsource.follow(url, h, EventSource2),
      'fetch-event-source': (h) => fetchEventSource.follow(url, h),
      'curl -N loop': (h) => curlFollow(url, h),
    };
    const clients = [];
    for (const [name, start] of Object.entries(starts)) {
      for (let i = 0; i < 2; i++) {
        const rec = recorder(`${name} #${i}`);
        t.after(start(rec.handlers));
        clients.push(rec);
      }
    }
    await Promise.all(clients.map((c) => c.opened));

    const published = [];
    let stop = false;
    const publisher = (async () => {
      for (let i = 0; !stop; i++) {
        await publishUntilCreated(cluster.base, channel, `e${i}`);
        published.push(`e${i}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    for (const how of ['stop', 'kill']) {
      for (const node of ['node1', 'node2']) {
        await clusterCommand(cluster, [how, node]);
        await clusterCommand(cluster, ['start', node]);
      }
    }
    stop = true;
    await publisher;
    await publishUntilCreated(cluster.base, channel, 'last');
    published.push('last');
    await until('every client has the last event', () => clients.every((c) => c.got.includes('last')));

    for (const c of clients) {
      t.diagnostic(`${c.name}: ${c.got.length} events, ${c.opens} response heads`);
      assert.deepEqual(c.syncs, [], `${c.name}: nothing was lost to announce`);
      assert.deepEqual(c.got, published, `${c.name}: every event exactly once, in order`);
      assert.ok(c.opens > 1, `${c.name} reconnected (the faults reached it)`);
    }
  });

// docs/clients.md shows each snippet as it is here: the docs cannot drift from what is
// tested.
test('docs/clients.md shows the tested snippets verbatim', async () => {
  const doc = await readFile(path.join(here, '..', '..', 'docs', 'clients.md'), 'utf8');
  for (const file of ['eventsource.mjs', 'fetch-event-source.mjs', 'curl-follow.sh']) {
    const text = await readFile(path.join(here, 'clients', file), 'utf8');
    assert.ok(doc.includes(text), `docs/clients.md lacks tests/browser/clients/${file} as it is`);
  }
});
