// Versioner gRPC client for Node.js.
//
// Responses are returned as @grpc/proto-loader decodes them: snake_case field
// names, int64 values (revisions) as decimal strings, enums as their names
// ('DEPLOYMENT_STATUS_COMPLETED'), Timestamps as {seconds, nanos} (see
// timestampToDate) and Structs as {fields} (see structToObject). Requests are
// more forgiving: statuses may be short names or aliases ('completed',
// 'success'), times may be Dates or ISO strings, extra_metadata a plain object.

import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The repository's protos/ directory: ../../protos relative to this package. */
export const PROTO_DIR = path.resolve(here, '..', '..', '..', 'protos');
const PROTO_FILE = 'versioner/v1/deployment_service.proto';

// Events per watch message asked of the server: a busy store sends batches.
const WATCH_BATCH = 500;

// Watch streams ended with these codes are reopened from the last revision seen:
// the server went away or restarted (UNAVAILABLE, or CANCELLED when the client
// did not cancel), or dropped a watcher that fell behind (RESOURCE_EXHAUSTED).
const RESUMABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.CANCELLED, grpc.status.RESOURCE_EXHAUSTED]);

// The status words pipelines use, as the Python client accepts them
// (clients/python/versioner_client/statuses.py): one vocabulary for both clients.
const STATUS_WORDS = {
  PENDING: ['pending', 'queued', 'scheduled'],
  STARTED: ['started', 'in_progress', 'init', 'deploying'],
  COMPLETED: ['completed', 'success', 'complete', 'finished', 'deployed'],
  FAILED: ['failed', 'fail', 'failure', 'error'],
  ABORTED: ['aborted', 'abort', 'cancelled', 'canceled', 'cancel', 'skipped'],
};
const STATUS_BY_WORD = new Map();
for (const [short, words] of Object.entries(STATUS_WORDS)) {
  const name = `DEPLOYMENT_STATUS_${short}`;
  for (const word of [...words, name.toLowerCase()]) STATUS_BY_WORD.set(word, name);
}

/**
 * Loads the DeploymentService definition from the .proto files.
 * google/protobuf well-known types come bundled with proto-loader.
 * @param {string} [protoDir]
 */
export function loadService(protoDir = PROTO_DIR) {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [protoDir],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).versioner.v1.DeploymentService;
}

/**
 * 'completed', 'success', 'COMPLETED' or 'DEPLOYMENT_STATUS_COMPLETED' → 'DEPLOYMENT_STATUS_COMPLETED'.
 * Throws on an unknown word, so a typo in a pipeline fails loudly instead of
 * recording the wrong status.
 * @param {string} status
 */
export function toStatus(status) {
  const name = STATUS_BY_WORD.get(String(status ?? '').trim().toLowerCase().replace(/-/g, '_'));
  if (!name) {
    throw new RangeError(`unknown deployment status ${JSON.stringify(status)}; use one of: ${[...STATUS_BY_WORD.keys()].join(', ')}`);
  }
  return name;
}

/**
 * A Date, ISO string, epoch milliseconds or {seconds, nanos} → a protobuf Timestamp.
 * @param {Date|string|number|{seconds: string|number, nanos?: number}|undefined|null} value
 */
export function toTimestamp(value) {
  if (value === undefined || value === null) return null;
  if (typeof value === 'object' && !(value instanceof Date)) return value;
  const ms = value instanceof Date ? value.getTime() : new Date(value).getTime();
  if (Number.isNaN(ms)) throw new TypeError(`not a time: ${value}`);
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: (ms - seconds * 1000) * 1e6 };
}

/** @param {{seconds: string|number, nanos?: number}|null|undefined} ts */
export function timestampToDate(ts) {
  if (!ts) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6));
}

/** A plain JSON-like object → a google.protobuf.Struct. @param {Record<string, unknown>} obj */
export function objectToStruct(obj) {
  const fields = {};
  for (const [key, value] of Object.entries(obj)) fields[key] = toValue(value);
  return { fields };
}

function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (value instanceof Date) return { stringValue: value.toISOString() };
  if (typeof value === 'object') return { structValue: objectToStruct(value) };
  return { stringValue: String(value) };
}

/** A decoded google.protobuf.Struct → a plain object. @param {{fields?: object}|null|undefined} struct */
export function structToObject(struct) {
  if (!struct) return {};
  const out = {};
  for (const [key, value] of Object.entries(struct.fields ?? {})) out[key] = fromValue(value);
  return out;
}

function fromValue(value) {
  switch (value?.kind) {
    case 'numberValue': return value.numberValue;
    case 'stringValue': return value.stringValue;
    case 'boolValue': return value.boolValue;
    case 'structValue': return structToObject(value.structValue);
    case 'listValue': return (value.listValue.values ?? []).map(fromValue);
    default: return null;
  }
}

/** Filters shared by ListHistory and WatchDeployments, normalized for the wire. */
function filterRequest(filters = {}) {
  const req = { ...filters };
  if (filters.statuses) req.statuses = filters.statuses.map(toStatus);
  if ('since' in filters) req.since = toTimestamp(filters.since);
  if ('until' in filters) req.until = toTimestamp(filters.until);
  return req;
}

/**
 * @typedef {object} ClientOptions
 * @property {string} address            host:port of the Versioner server
 * @property {string} [token]            sent as `authorization: Bearer <token>`
 * @property {number} [deadlineMs=10000] deadline of each unary call
 * @property {grpc.ChannelCredentials} [credentials] default: insecure
 * @property {string} [protoDir]         default: the repository's protos/
 */

/** @param {ClientOptions} options */
export function createClient({ address, token, deadlineMs = 10_000, credentials, protoDir } = {}) {
  if (!address) throw new TypeError('createClient: address is required');
  const DeploymentService = loadService(protoDir);
  const stub = new DeploymentService(address, credentials ?? grpc.credentials.createInsecure());
  const openStreams = new Set();
  let closed = false;

  function metadata() {
    const md = new grpc.Metadata();
    if (token) md.set('authorization', `Bearer ${token}`);
    return md;
  }

  function unary(method, request) {
    return new Promise((resolve, reject) => {
      const options = { deadline: Date.now() + deadlineMs };
      stub[method](request, metadata(), options, (err, response) => (err ? reject(err) : resolve(response)));
    });
  }

  /**
   * Records one deployment event. A random event_id is set when none is given,
   * so retrying the same call is safe (the server answers with duplicate = true).
   */
  async function record(fields) {
    const req = { ...fields, status: toStatus(fields.status), event_id: fields.event_id || randomUUID() };
    if (fields.extra_metadata) req.extra_metadata = objectToStruct(fields.extra_metadata);
    if ('event_time' in fields) req.event_time = toTimestamp(fields.event_time);
    if ('scm_commit_time' in fields) req.scm_commit_time = toTimestamp(fields.scm_commit_time);
    return unary('RecordEvent', req);
  }

  /** What runs where; empty product/environment means all. */
  async function current({ product, environment, product_name, environment_name } = {}) {
    return unary('GetCurrent', {
      product_name: product ?? product_name ?? '',
      environment_name: environment ?? environment_name ?? '',
    });
  }

  /** One page of history: {deployments, next_page_token, revision}. */
  async function historyPage(filters = {}) {
    return unary('ListHistory', filterRequest(filters));
  }

  /** Every deployment matching the filters, newest first, across all pages. */
  async function* history(filters = {}) {
    let page_token = filters.page_token ?? '';
    do {
      const page = await historyPage({ ...filters, page_token });
      yield* page.deployments;
      page_token = page.next_page_token;
    } while (page_token);
  }

  /**
   * Deployment events matching the filters, in revision order. With afterRevision,
   * starts with the stored events after it; without, live events only. A watch is
   * endless: when the stream ends cleanly or with a RESUMABLE code it is reopened
   * after the last revision seen (progress messages advance it too), with capped
   * backoff; other errors are thrown. Stop it with `break` / return(), or close().
   */
  async function* watch(filters = {}, { afterRevision } = {}) {
    let revision = afterRevision ?? null;
    let backoffMs = 100;
    while (!closed) {
      const req = filterRequest(filters);
      if (revision !== null) req.after_revision = String(revision);
      req.max_events_per_message = WATCH_BATCH;
      const call = stub.WatchDeployments(req, metadata());
      call.on('error', () => {}); // errors surface through the iterator below
      openStreams.add(call);
      try {
        for await (const message of call) {
          backoffMs = 100;
          const events = message.kind === 'event' ? [message.event] : message.events || [];
          for (const event of events) {
            // Never hand out a duplicate; resume after the last event handed out.
            if (revision !== null && BigInt(event.revision) <= BigInt(revision)) continue;
            revision = event.revision;
            yield event;
          }
          if (revision === null || BigInt(message.revision) > BigInt(revision)) {
            revision = message.revision;
          }
        }
      } catch (err) {
        if (closed) return;
        if (!RESUMABLE.has(err.code)) throw err;
      } finally {
        openStreams.delete(call);
        call.cancel();
      }
      await sleep(backoffMs * (0.5 + Math.random()));
      backoffMs = Math.min(backoffMs * 2, 5_000);
    }
  }

  /** Cancels open watches and closes the channel. */
  function close() {
    closed = true;
    for (const call of openStreams) call.cancel();
    stub.close();
  }

  return { record, current, history, historyPage, watch, close };
}
