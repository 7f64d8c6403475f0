// The executor protocol: ClaimRun, HeartbeatRun and CompleteRun, and the
// LEASE_LOST answer that tells a worker to stop.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { Code } from "@connectrpc/connect";
import { durationFromMs, timestampMs } from "@bufbuild/protobuf/wkt";

import { RunStatus } from "./gen/runplane/v1/run_pb.js";
import { client, closeClient, failure, newAssistantId } from "./runplane.js";

after(closeClient);

const WORKER = "ts-worker";

test("a worker claims, heartbeats and completes a run", async () => {
  const assistantId = newAssistantId();
  const created = await client.createRun({ assistantId, kwargs: { input: "work" } });

  const claimed = (
    await client.claimRun({
      workerId: WORKER,
      assistantIds: [assistantId],
      leaseDuration: durationFromMs(5_000),
      wait: durationFromMs(1_000),
    })
  ).run;
  assert.ok(claimed, "ClaimRun returned no run");
  assert.equal(claimed.runId, created.runId);
  assert.equal(claimed.status, RunStatus.RUNNING);
  assert.equal(claimed.workerId, WORKER);
  assert.equal(claimed.attempt, 1);
  assert.deepEqual(claimed.kwargs, { input: "work" });
  assert.ok(claimed.startedAt !== undefined);
  const firstLease = timestampMs(claimed.leaseExpiresAt!);

  const renewed = await client.heartbeatRun({
    runId: created.runId,
    workerId: WORKER,
    leaseDuration: durationFromMs(60_000),
  });
  assert.equal(renewed.status, RunStatus.RUNNING);
  assert.ok(timestampMs(renewed.leaseExpiresAt!) > firstLease + 50_000);

  const done = await client.completeRun({
    runId: created.runId,
    workerId: WORKER,
    status: RunStatus.SUCCESS,
    metadata: { tokens: 42 },
  });
  assert.equal(done.status, RunStatus.SUCCESS);
  assert.deepEqual(done.metadata, { tokens: 42 });
  assert.ok(done.endedAt !== undefined);
  assert.deepEqual(await client.getRun({ runId: created.runId }), done);
});

test("a worker completes a run with ERROR and its message", async () => {
  const assistantId = newAssistantId();
  const created = await client.createRun({ assistantId });
  await client.claimRun({ workerId: WORKER, assistantIds: [assistantId] });

  const failed = await client.completeRun({
    runId: created.runId,
    workerId: WORKER,
    status: RunStatus.ERROR,
    error: "the model timed out",
  });

  assert.equal(failed.status, RunStatus.ERROR);
  assert.equal(failed.error, "the model timed out");
});

test("ClaimRun with nothing claimable returns no run after its wait", async () => {
  const started = Date.now();
  const response = await client.claimRun({
    workerId: WORKER,
    assistantIds: [newAssistantId()],
    wait: durationFromMs(300),
  });
  assert.equal(response.run, undefined);
  assert.ok(Date.now() - started >= 250, "the claim did not long-poll");
});

test("a worker whose run was interrupted gets LEASE_LOST", async () => {
  const assistantId = newAssistantId();
  const created = await client.createRun({ assistantId });
  await client.claimRun({ workerId: WORKER, assistantIds: [assistantId] });
  await client.cancelRun({ runId: created.runId, reason: "stop" });

  for (const call of [
    () => client.heartbeatRun({ runId: created.runId, workerId: WORKER }),
    () => client.completeRun({ runId: created.runId, workerId: WORKER, status: RunStatus.SUCCESS }),
  ]) {
    const lost = await failure(call());
    assert.equal(lost.code, Code.FailedPrecondition);
    assert.equal(lost.reason, "LEASE_LOST");
    assert.deepEqual(lost.metadata, { run_id: created.runId, worker_id: WORKER });
  }
  assert.equal((await client.getRun({ runId: created.runId })).status, RunStatus.INTERRUPTED);
});

test("CompleteRun with a status other than SUCCESS or ERROR is INVALID_ARGUMENT", async () => {
  const assistantId = newAssistantId();
  const created = await client.createRun({ assistantId });
  await client.claimRun({ workerId: WORKER, assistantIds: [assistantId] });

  const refused = await failure(
    client.completeRun({ runId: created.runId, workerId: WORKER, status: RunStatus.TIMEOUT }),
  );

  assert.equal(refused.code, Code.InvalidArgument);
  assert.deepEqual(
    refused.violations.map((violation) => violation.field),
    ["status"],
  );
  assert.equal((await client.getRun({ runId: created.runId })).status, RunStatus.RUNNING);
});
