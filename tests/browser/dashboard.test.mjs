// Browser test of the cluster dashboard served at `GET /dashboard` on the admin port:
// two real gateway nodes on one real redis-server; the page, fed by the node's own SSE
// stream, must show both as live nodes, then one when the other is gone.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { chromiumArgs, chromiumPath, startGateway, startRedis, stopGateway } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const WAIT_MS = 15_000;

let redis = null;
const nodes = [];
let browser = null;

before(async () => {
  redis = await startRedis();
  for (const id of ['dash-a', 'dash-b']) {
    nodes.push(await startGateway({
      SSEGATE_REDIS_URL: redis.url,
      SSEGATE_NODE_ID: id,
      SSEGATE_CLUSTER_ANNOUNCE_INTERVAL: '300ms',
    }));
  }
  browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs });
});

after(async () => {
  if (browser) await browser.close();
  for (const n of nodes) await stopGateway(n);
  if (redis) redis.child.kill('SIGKILL');
});

test('dashboard shows the live node count and each node', async (t) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 600 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  await page.goto(`${nodes[0].admin}/dashboard`);
  await page.locator('#state').filter({ hasText: /^open$/ }).waitFor({ timeout: WAIT_MS });
  await page.locator('#node-count').filter({ hasText: /^2$/ }).waitFor({ timeout: WAIT_MS });
  await page.locator('#nodes tr[data-node="dash-b"]').waitFor({ timeout: WAIT_MS });
  await mkdir(path.join(here, 'screenshots'), { recursive: true });
  await page.screenshot({ path: path.join(here, 'screenshots', 'dashboard.png') });

  // Stop node b: the page follows (it leaves the cluster view on shutdown).
  await stopGateway(nodes[1]);
  await page.locator('#node-count').filter({ hasText: /^1$/ }).waitFor({ timeout: WAIT_MS });
  assert.equal(await page.locator('#nodes tr').count(), 1);
  assert.deepEqual(errors, []);
});
