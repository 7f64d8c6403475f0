// Errors: the gRPC code, and the google.rpc details runplane attaches to every
// status (ErrorInfo with a reason and metadata; BadRequest for bad input),
// decoded with the generated google.rpc schemas.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, test } from "node:test";

import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";
import { client, closeClient, ERROR_DOMAIN, failure } from "./runplane.js";

after(closeClient);

test("GetRun of an unknown run is NOT_FOUND with reason RUN_NOT_FOUND and the run id", async () => {
  const runId = randomUUID();

  const missing = await failure(client.getRun({ runId }));

  assert.equal(missing.code, Code.NotFound);
  assert.equal(missing.domain, ERROR_DOMAIN);
  assert.equal(missing.reason, "RUN_NOT_FOUND");
  assert.deepEqual(missing.metadata, { run_id: runId });
  assert.equal(missing.message, `run ${runId} not found`);
});

test("bad input is INVALID_ARGUMENT with every field violation at once", async () => {
  const invalid = await failure(
    client.createRun({ assistantId: "", threadId: "not-a-uuid", runId: "123" }),
  );

  assert.equal(invalid.code, Code.InvalidArgument);
  assert.equal(invalid.reason, "INVALID_ARGUMENT");
  assert.deepEqual(
    invalid.violations.map((violation) => violation.field).sort(),
    ["assistant_id", "run_id", "thread_id"],
  );
  for (const violation of invalid.violations) assert.notEqual(violation.description, "");
});

test("a run id that is taken is ALREADY_EXISTS with reason RUN_ALREADY_EXISTS", async () => {
  const run = await client.createRun({ assistantId: "ts-assistant", runId: randomUUID() });

  const taken = await failure(client.createRun({ assistantId: "ts-assistant", runId: run.runId }));

  assert.equal(taken.code, Code.AlreadyExists);
  assert.equal(taken.reason, "RUN_ALREADY_EXISTS");
  assert.deepEqual(taken.metadata, { run_id: run.runId });
});

test("the grpc-status-details-bin trailer is a google.rpc.Status matching the status", async () => {
  const runId = randomUUID();
  let caught: ConnectError | undefined;
  try {
    await client.getRun({ runId });
  } catch (error) {
    caught = ConnectError.from(error);
  }
  assert.ok(caught, "GetRun of an unknown run succeeded");

  const trailer = caught.metadata.get("grpc-status-details-bin");
  assert.ok(trailer, "no grpc-status-details-bin trailer");
  const status = fromBinary(StatusSchema, Buffer.from(trailer, "base64"));

  assert.equal(status.code, Code.NotFound);
  assert.equal(status.message, caught.rawMessage);
  const info = anyUnpack(status.details[0]!, ErrorInfoSchema);
  assert.deepEqual(
    { reason: info?.reason, domain: info?.domain, metadata: info?.metadata },
    { reason: "RUN_NOT_FOUND", domain: ERROR_DOMAIN, metadata: { run_id: runId } },
  );
});
