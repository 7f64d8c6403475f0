#!/usr/bin/env node
// A Node.js client for runplane, built only from the .proto files.
//
// It proves the contract is usable from another language: nothing here comes
// from the Python stubs or the Python client. Usage:
//
//   node tests/polyglot/run_client.js 127.0.0.1:PORT
//
// It creates a run, gets it, lists the runs of its thread and provokes one
// error (GetRun of an unknown id), then prints one JSON line describing what
// it saw and exits 0. Any unexpected failure goes to stderr with exit code 1.
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const SERVICE_PROTO = 'runplane/v1/run_service.proto';
const DEADLINE_MS = 10000;

function loadRunService() {
  // google/protobuf/*.proto imports resolve to the copies bundled in protobufjs.
  const definition = protoLoader.loadSync(SERVICE_PROTO, {
    includeDirs: [PROTO_ROOT, path.join(PROTO_ROOT, 'third_party')],
    keepCase: true, // field names exactly as in the contract (run_id, not runId)
    enums: String, // enum values as their names, e.g. RUN_STATUS_PENDING
    longs: String, // int64 revision without precision loss
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).runplane.v1.RunService;
}

// proto-loader hands google.protobuf.Struct over in its wire shape
// ({fields: {k: {stringValue: ...}}}); these two convert to and from plain JSON.
function toValue(value) {
  if (value === null) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value) };
}

function toStruct(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value);
  return { fields };
}

function fromValue(value) {
  switch (value.kind) {
    case 'nullValue':
      return null;
    case 'listValue':
      return (value.listValue.values || []).map(fromValue);
    case 'structValue':
      return fromStruct(value.structValue);
    default:
      return value[value.kind];
  }
}

function fromStruct(struct) {
  const object = {};
  for (const [key, value] of Object.entries((struct && struct.fields) || {})) {
    object[key] = fromValue(value);
  }
  return object;
}

function call(client, method, request) {
  const deadline = new Date(Date.now() + DEADLINE_MS);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) => {
      if (error) reject(error);
      else resolve(response);
    });
  });
}

function summarize(run) {
  return {
    run_id: run.run_id,
    thread_id: run.thread_id,
    assistant_id: run.assistant_id,
    status: run.status,
    multitask_strategy: run.multitask_strategy,
    metadata: fromStruct(run.metadata),
  };
}

async function main(address) {
  const RunService = loadRunService();
  const client = new RunService(address, grpc.credentials.createInsecure());
  try {
    const created = await call(client, 'CreateRun', {
      assistant_id: 'node-assistant',
      metadata: toStruct({ source: 'node' }),
    });
    const got = await call(client, 'GetRun', { run_id: created.run_id });
    const listed = await call(client, 'ListRuns', {
      filter: { thread_id: created.thread_id },
    });

    let notFound = null;
    try {
      await call(client, 'GetRun', { run_id: crypto.randomUUID() });
    } catch (error) {
      notFound = { code: error.code, details: error.details };
    }
    if (notFound === null) throw new Error('GetRun of a random UUID succeeded');

    const report = {
      created: summarize(created),
      got: summarize(got),
      listed: {
        run_ids: listed.runs.map((run) => run.run_id),
        statuses: listed.runs.map((run) => run.status),
        revision: listed.revision,
      },
      not_found: notFound,
    };
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } finally {
    client.close();
  }
}

if (process.argv.length !== 3) {
  process.stderr.write('usage: node run_client.js HOST:PORT\n');
  process.exit(2);
}

main(process.argv[2]).catch((error) => {
  process.stderr.write(`run_client.js: ${error.stack || error}\n`);
  process.exit(1);
});
