// End-to-end tests of the Node client against a real Versioner server
// (python -m versioner_grpc on a temporary SQLite file).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { createClient } from '../src/client.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(here, '..', '..', '..');
const PYTHON = process.env.VERSIONER_PYTHON || path.join(REPO_ROOT, '.venv', 'bin', 'python');
const TIMEOUT = 120_000;

/**
 * Runs `python -m versioner_grpc` on a SQLite file in `dir` and waits for its
 * "serving" log line. Pass `listen` and `dir` again to restart the same server.
 */
async function startServer({ listen = '127.0.0.1:0', dir } = {}) {
  const ownDir = !dir;
  dir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'versioner-node-'));
  const args = [
    '-m', 'versioner_grpc',
    '--listen', listen,
    '--metrics-listen', '127.0.0.1:0',
    '--http-listen', 'off',
    '--database-url', `sqlite:///${path.join(dir, 'v.db')}`,
  ];
  const child = spawn(PYTHON, args, { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  const log = [];

  const serving = await new Promise((resolve, reject) => {
    let settled = false;
    const fail = (why) => {
      if (settled) return; // a later exit is a stop(), not a failed start
      settled = true;
      if (ownDir) fs.rmSync(dir, { recursive: true, force: true });
      reject(new Error(`${why}\n$ ${PYTHON} ${args.join(' ')}\n${log.join('\n')}`));
    };
    const timer = setTimeout(() => { child.kill('SIGKILL'); fail('server did not log "serving" in 60 s'); }, 60_000);
    let buffered = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      buffered += chunk;
      const lines = buffered.split('\n');
      buffered = lines.pop();
      for (const line of lines) {
        log.push(line);
        let record;
        try { record = JSON.parse(line); } catch { continue; }
        if (record?.event === 'serving' && !settled) { settled = true; clearTimeout(timer); resolve(record); }
      }
    });
    child.once('error', (err) => { clearTimeout(timer); fail(`cannot start the server: ${err.message}`); });
    child.once('exit', (code, signal) => { clearTimeout(timer); fail(`server exited (code ${code}, signal ${signal})`); });
  });

  return {
    address: serving.grpc_address,
    dir,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** The next `count` items of an async iterator (which stays open), failing after `ms`. */
async function take(iterator, count, ms = 30_000) {
  const items = [];
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`only ${items.length} of ${count} items in ${ms} ms`)), ms);
  });
  try {
    while (items.length < count) {
      const { value, done } = await Promise.race([iterator.next(), timeout]);
      if (done) throw new Error(`iterator ended after ${items.length} of ${count} items`);
      items.push(value);
    }
    return items;
  } finally {
    clearTimeout(timer);
  }
}

const unique = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;
const seconds = (ts) => Number(ts.seconds);

describe('versioner node client', { timeout: TIMEOUT }, () => {
  let server;
  let client;

  before(async () => {
    server = await startServer();
    client = createClient({ address: server.address, deadlineMs: 15_000 });
  }, { timeout: TIMEOUT });

  after(async () => {
    client?.close();
    await server?.stop();
    if (server) fs.rmSync(server.dir, { recursive: true, force: true });
  });

  test('a started + success pair is one COMPLETED deployment, and current returns it', async () => {
    const product = unique('pair');
    const fields = { product_name: product, version: '1.2.3', environment_name: 'production' };

    const started = await client.record({ ...fields, status: 'started' });
    const done = await client.record({ ...fields, status: 'success', deployed_by: 'ci' });

    assert.equal(started.event.deployment.status, 'DEPLOYMENT_STATUS_STARTED');
    assert.equal(done.duplicate, false);
    assert.equal(done.event.deployment.id, started.event.deployment.id);
    assert.equal(done.event.deployment.status, 'DEPLOYMENT_STATUS_COMPLETED');
    assert.ok(BigInt(done.event.revision) > BigInt(started.event.revision));

    const all = [];
    for await (const deployment of client.history({ product_name: product })) all.push(deployment);
    assert.equal(all.length, 1);
    assert.equal(all[0].status, 'DEPLOYMENT_STATUS_COMPLETED');

    const { states } = await client.current({ product, environment: 'production' });
    assert.equal(states.length, 1);
    assert.equal(states[0].environment_type, 'ENVIRONMENT_TYPE_PRODUCTION');
    assert.equal(states[0].current.id, started.event.deployment.id);
    assert.equal(states[0].current.version, '1.2.3');
  });

  test('status accepts the full enum name, and a replayed event_id is a duplicate', async () => {
    const request = {
      product_name: unique('replay'), version: '1', environment_name: 'staging',
      status: 'DEPLOYMENT_STATUS_COMPLETED', event_id: randomUUID(),
    };
    const first = await client.record(request);
    const again = await client.record(request);
    assert.equal(first.duplicate, false);
    assert.equal(again.duplicate, true);
    assert.equal(again.event.deployment.id, first.event.deployment.id);
  });

  test('history pages through 7 deployments, 3 at a time, newest first', async () => {
    const product = unique('paged');
    const start = Math.floor(Date.now() / 1000) - 3600;
    for (let i = 1; i <= 7; i++) {
      await client.record({
        product_name: product, version: `1.0.${i}`, environment_name: 'qa',
        status: 'completed', event_time: new Date((start + i * 60) * 1000),
      });
    }

    const pages = [];
    let page_token = '';
    do {
      const page = await client.historyPage({ product_name: product, page_size: 3, page_token });
      pages.push(page.deployments);
      page_token = page.next_page_token;
    } while (page_token && pages.length < 10);

    assert.deepEqual(pages.map((p) => p.length), [3, 3, 1]);
    const versions = pages.flat().map((d) => d.version);
    assert.deepEqual(versions, ['1.0.7', '1.0.6', '1.0.5', '1.0.4', '1.0.3', '1.0.2', '1.0.1']);
    assert.equal(new Set(pages.flat().map((d) => d.id)).size, 7);
    const created = pages.flat().map((d) => seconds(d.create_time));
    assert.deepEqual(created, [...created].sort((a, b) => b - a));

    const iterated = [];
    for await (const d of client.history({ product_name: product, page_size: 3 })) iterated.push(d.version);
    assert.deepEqual(iterated, versions);
  });

  test('watch from after_revision 0 gets stored then live events in revision order', async () => {
    const product = unique('watched');
    const base = { product_name: product, version: '2.0.0', environment_name: 'dev' };
    const recorded = [
      await client.record({ ...base, status: 'pending' }),
      await client.record({ ...base, status: 'started' }),
    ];

    const events = client.watch({ product_name: product }, { afterRevision: 0 });
    const received = take(events, 3);
    recorded.push(await client.record({ ...base, status: 'completed' }));

    const got = await received;
    await events.return();
    assert.deepEqual(got.map((e) => e.revision), recorded.map((r) => r.event.revision));
    assert.deepEqual(got.map((e) => e.status), [
      'DEPLOYMENT_STATUS_PENDING', 'DEPLOYMENT_STATUS_STARTED', 'DEPLOYMENT_STATUS_COMPLETED',
    ]);
    const revisions = got.map((e) => BigInt(e.revision));
    for (let i = 1; i < revisions.length; i++) assert.ok(revisions[i] > revisions[i - 1]);
    assert.ok(got.every((e) => e.deployment.product_name === product));
  });

  test('an empty product_name is INVALID_ARGUMENT', async () => {
    await assert.rejects(
      client.record({ product_name: '', version: '1', environment_name: 'production', status: 'completed' }),
      (err) => err.code === 3,
    );
  });
});

describe('watch across a server restart', { timeout: TIMEOUT }, () => {
  let server;
  let client;

  before(async () => {
    server = await startServer();
    client = createClient({ address: server.address, deadlineMs: 15_000 });
  }, { timeout: TIMEOUT });

  after(async () => {
    client?.close();
    await server?.stop();
    if (server) fs.rmSync(server.dir, { recursive: true, force: true });
  });

  test('reconnects on UNAVAILABLE and resumes after the last revision seen', async () => {
    const base = { product_name: unique('restart'), version: '3.0.0', environment_name: 'prod' };
    const first = await client.record({ ...base, status: 'started' });
    const events = client.watch({ product_name: base.product_name }, { afterRevision: 0 });

    const [seen] = await take(events, 1);
    assert.equal(seen.revision, first.event.revision);

    await server.stop();
    server = await startServer({ listen: server.address, dir: server.dir });
    const second = await client.record({ ...base, status: 'completed' });

    const [next] = await take(events, 1);
    assert.equal(next.revision, second.event.revision);
    assert.equal(next.status, 'DEPLOYMENT_STATUS_COMPLETED');
  });
});
