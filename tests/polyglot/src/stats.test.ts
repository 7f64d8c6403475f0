// GetStats: the queues and inflight runs of one namespace, as the server counts them.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, test } from "node:test";

import { Code } from "@connectrpc/connect";
import { timestampMs } from "@bufbuild/protobuf/wkt";

import { RunStatus } from "./gen/runplane/v1/run_pb.js";
import { client, closeClient, failure } from "./runplane.js";

after(closeClient);

test("GetStats counts the claimable queue and the inflight runs of a namespace", async () => {
  const namespace = `ts-stats-${randomUUID().slice(0, 8)}`;
  // Assistant a: two threads' heads are claimable, the run behind the first is not.
  const first = await client.createRun({ namespace, assistantId: "a" });
  await client.createRun({ namespace, assistantId: "a", threadId: first.threadId });
  await client.createRun({ namespace, assistantId: "a" });
  // Assistant b: its one run is claimed, so nothing of b is claimable.
  const busy = await client.createRun({ namespace, assistantId: "b" });
  const claimed = await client.claimRun({ namespace, workerId: "ts", assistantIds: ["b"] });
  assert.equal(claimed.run?.runId, busy.runId);

  const stats = await client.getStats({ namespace });

  assert.deepEqual(
    stats.queues.map(({ namespace, assistantId, depth }) => ({ namespace, assistantId, depth })),
    [{ namespace, assistantId: "a", depth: 2n }],
  );
  const age = stats.queues[0]!.oldestAge!;
  const ageMs = Number(age.seconds) * 1000 + age.nanos / 1e6;
  assert.ok(ageMs > 0);
  assert.ok(ageMs <= Date.now() - timestampMs(first.createdAt!) + 1);
  assert.deepEqual(
    stats.runs.map(({ namespace, status, count }) => ({ namespace, status, count })),
    [
      { namespace, status: RunStatus.PENDING, count: 3n },
      { namespace, status: RunStatus.RUNNING, count: 1n },
    ],
  );
  assert.ok(stats.revision >= claimed.run!.revision);
});

test("GetStats refuses a namespace that is not a DNS label", async () => {
  const refused = await failure(client.getStats({ namespace: "Not_A_Label" }));
  assert.equal(refused.code, Code.InvalidArgument);
  assert.deepEqual(
    refused.violations.map((violation) => violation.field),
    ["namespace"],
  );
});
