// Shared plumbing of the browser tests: real gateway processes and a real redis-server
// on free loopback ports, or a whole local cluster (scripts/cluster: redis-server, nodes
// and nginx in front).

import { execFile, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
export const gatewayBin = process.env.SSEGATE_BIN || path.join(repo, 'target', 'debug', 'ssegate');
export const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const chromiumArgs = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const READY_TIMEOUT_MS = 30_000;
const READY_LINE = /ssegate listening http=(\S+) admin=(\S+)/;

export function startGateway(extraEnv = {}) {
  const child = spawn(gatewayBin, [], {
    env: {
      ...process.env,
      SSEGATE_LISTEN: '127.0.0.1:0',
      SSEGATE_ADMIN_LISTEN: '127.0.0.1:0',
      SSEGATE_DRAIN_WINDOW: '1s',
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });

  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const stderrTail = () => (stderr.trim() ? `\n--- gateway stderr (tail) ---\n${stderr}` : '');

  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (err, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        child.kill('SIGKILL');
        reject(err);
      } else {
        resolve(value);
      }
    };
    const timer = setTimeout(() => {
      finish(new Error(`gateway printed no ready line within ${READY_TIMEOUT_MS} ms${stderrTail()}`));
    }, READY_TIMEOUT_MS);

    child.on('error', (err) => finish(new Error(`cannot start ${gatewayBin}: ${err.message}`)));
    child.on('exit', (code, signal) => {
      finish(new Error(`gateway exited early (code ${code}, signal ${signal})${stderrTail()}`));
    });

    // Keep reading stdout after the ready line too, so the pipe never fills up.
    const lines = readline.createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      const m = READY_LINE.exec(line);
      if (m) finish(null, { child, base: `http://${m[1]}`, admin: `http://${m[2]}`, stderrTail });
    });
  });
}

export async function stopGateway(gw) {
  const { child } = gw;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
  await exited;
  clearTimeout(timer);
}


function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// A throwaway redis-server; resolves once it logs that it accepts connections.
export async function startRedis() {
  const port = await freePort();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ssegate-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '',
    '--appendonly', 'no', '--dir', dir, '--logfile', ''], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('redis-server did not start')), READY_TIMEOUT_MS);
    child.on('error', reject);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { child, url: `redis://127.0.0.1:${port}` };
}

function portFree(port) {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

// Runs scripts/cluster with `env`; resolves with its output, rejects with it on failure.
function clusterCli(env, args, timeoutMs) {
  return new Promise((resolve, reject) => {
    execFile(path.join(repo, 'scripts', 'cluster'), args, { env, cwd: repo, timeout: timeoutMs },
      (err, stdout, stderr) => {
        if (err) {
          reject(new Error(`scripts/cluster ${args.join(' ')} failed (${err.message.split('\n')[0]})\n` +
            `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`));
        } else {
          resolve(stdout);
        }
      });
  });
}

// The local cluster of scripts/cluster (real redis-server, `nodes` gateway nodes running
// gatewayBin, nginx rendered from nginx/) on a free, non-default port range, with the
// TLS + HTTP/2 listener (self-signed certificate) unless `tls` is false, in a temp state
// directory. Resolves with { port, tlsPort, base, tlsBase, dir, env }; stopCluster ends it.
export async function startCluster({ nodes = 3, tls = true, env = {} } = {}) {
  // nginx on BASE, node k on BASE+k (admin BASE+1000+k), Redis on BASE+1000, TLS BASE+2000.
  // A range of its own, away from the default 8080 and from tests/deploy's (28080 up).
  // Test files run in parallel processes: each starts looking at a place of its own.
  let port = null;
  for (let base = 41080 + (process.pid % 64) * 89; base < 60000; base += 89) {
    const ports = [base, base + 1000, base + 2000];
    for (let k = 1; k <= nodes; k++) ports.push(base + k, base + 1000 + k);
    const free = await Promise.all(ports.map(portFree));
    if (free.every(Boolean)) {
      port = base;
      break;
    }
  }
  if (port === null) throw new Error('no free port range for the cluster');
  const tlsPort = tls ? port + 2000 : null;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ssegate-cluster-'));
  const clusterEnv = {
    ...process.env,
    SSEGATE_BIN: gatewayBin, // never let the script build one of its own
    SSEGATE_CLUSTER_DIR: dir,
    SSEGATE_CLUSTER_PORT: String(port),
    SSEGATE_CLUSTER_NODES: String(nodes),
    SSEGATE_CLUSTER_TLS_PORT: tls ? String(tlsPort) : '',
    ...env,
  };
  const cluster = {
    port,
    tlsPort,
    base: `http://127.0.0.1:${port}`,
    tlsBase: tls ? `https://127.0.0.1:${tlsPort}` : null,
    dir,
    env: clusterEnv,
  };
  try {
    await clusterCli(clusterEnv, ['up'], 120_000);
  } catch (err) {
    await stopCluster(cluster).catch(() => {});
    throw err;
  }
  return cluster;
}

// Runs one scripts/cluster command (`kill node2`, `stop node1`, `start node1`, ...) on it.
export function clusterCommand(cluster, args) {
  return clusterCli(cluster.env, args, 120_000);
}

// `scripts/cluster down` (which leaves no process behind), then the state directory goes.
export async function stopCluster(cluster) {
  await clusterCli(cluster.env, ['down'], 120_000);
  await rm(cluster.dir, { recursive: true, force: true });
}

// Publishes `data` to `channel` through `base` until it is answered 201, with the same
// Idempotency-Key every time (so that a retry after an unknown outcome is safe). A node or
// nginx that is restarting is what the callers test, so every other answer is retried.
export async function publishUntilCreated(base, channel, data) {
  for (;;) {
    try {
      const res = await fetch(`${base}/v1/channels/${channel}/events`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Idempotency-Key': `${channel}-${data}` },
        body: JSON.stringify({ data }),
      });
      if (res.status === 201) return;
    } catch { /* retried */ }
    await new Promise((r) => setTimeout(r, 100));
  }
}
