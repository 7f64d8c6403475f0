// The streams: WatchRuns resumed from a revision, with its initial state, and
// WatchRun followed to the end of its run.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { Code } from "@connectrpc/connect";

import { EventType, RunStatus, type RunEvent } from "./gen/runplane/v1/run_pb.js";
import { client, closeClient, failure, newAssistantId, newThreadId, Watch } from "./runplane.js";

after(closeClient);

const ASSISTANT = "ts-assistant";

/** [type, run id, status, revision] of each event: what a test compares. */
function summary(events: RunEvent[]): [EventType, string, RunStatus, bigint][] {
  return events.map((event) => [event.type, event.run!.runId, event.run!.status, event.revision]);
}

test("WatchRuns resumed after the last revision seen misses and repeats nothing", async () => {
  const threadId = newThreadId();
  const first = await client.createRun({ assistantId: ASSISTANT, threadId });
  const labelled = await client.updateRun({
    run: { runId: first.runId, metadata: { step: 1 } },
    updateMask: { paths: ["metadata"] },
  });

  // A watcher replays the thread from the first run's creation, then goes away.
  const before = new Watch((options) =>
    client.watchRuns({ filter: { threadId }, startRevision: first.revision }, options),
  );
  const seen = await before.take(2);
  await before.close();
  assert.deepEqual(summary(seen), [
    [EventType.CREATED, first.runId, RunStatus.PENDING, first.revision],
    [EventType.UPDATED, first.runId, RunStatus.PENDING, labelled.revision],
  ]);

  // What happens while it is away.
  const second = await client.createRun({ assistantId: ASSISTANT, threadId });
  const interrupted = await client.cancelRun({ runId: first.runId, reason: "away" });
  await client.deleteRun({ runId: first.runId });

  // It comes back from the revision after the last one it saw.
  const resumed = new Watch((options) =>
    client.watchRuns({ filter: { threadId }, startRevision: seen.at(-1)!.revision + 1n }, options),
  );
  const missed = await resumed.take(3);
  const deleted = missed[2]!;
  assert.deepEqual(summary(missed), [
    [EventType.CREATED, second.runId, RunStatus.PENDING, second.revision],
    [EventType.UPDATED, first.runId, RunStatus.INTERRUPTED, interrupted.revision],
    [EventType.DELETED, first.runId, RunStatus.INTERRUPTED, deleted.revision],
  ]);
  assert.ok(deleted.revision > interrupted.revision);
  assert.equal(deleted.run?.cancelReason, "away");

  // Then it follows live changes on the same stream.
  const relabelled = await client.updateRun({
    run: { runId: second.runId, metadata: { step: 2 } },
    updateMask: { paths: ["metadata"] },
  });
  const live = await resumed.take(1);
  await resumed.close();
  assert.deepEqual(summary(live), [
    [EventType.UPDATED, second.runId, RunStatus.PENDING, relabelled.revision],
  ]);
  assert.deepEqual(live[0]!.run?.metadata, { step: 2 });
});

test("WatchRuns with include_initial sends the state, a bookmark, then changes", async () => {
  const threadId = newThreadId();
  const runs = [
    await client.createRun({ assistantId: ASSISTANT, threadId }),
    await client.createRun({ assistantId: ASSISTANT, threadId }),
  ];

  const watch = new Watch((options) =>
    client.watchRuns({ filter: { threadId }, includeInitial: true }, options),
  );
  const initial: RunEvent[] = [];
  let response = await watch.next();
  while (response !== undefined && response.events.length > 0) {
    initial.push(...response.events);
    response = await watch.next();
  }
  assert.ok(response, "the stream ended before the end-of-initial-state bookmark");
  const stateRevision = response.revision;

  assert.deepEqual(
    initial.map((event) => [event.type, event.revision]),
    [
      [EventType.INITIAL, stateRevision],
      [EventType.INITIAL, stateRevision],
    ],
  );
  assert.deepEqual(
    new Set(initial.map((event) => event.run!.runId)),
    new Set(runs.map((run) => run.runId)),
  );
  assert.ok(stateRevision >= runs[1]!.revision);

  const cancelled = await client.cancelRun({ runId: runs[0]!.runId });
  const [change] = await watch.take(1);
  await watch.close();
  assert.deepEqual(summary([change!]), [
    [EventType.UPDATED, runs[0]!.runId, RunStatus.INTERRUPTED, cancelled.revision],
  ]);
});

test("WatchRun sends the run's state, each change, and ends once the run is terminal", async () => {
  const assistantId = newAssistantId();
  const run = await client.createRun({ assistantId });
  const watch = new Watch((options) => client.watchRun({ runId: run.runId }, options));

  const [state] = await watch.take(1);
  assert.equal(state!.type, EventType.INITIAL);
  assert.deepEqual(state!.run, run);

  const claimed = await client.claimRun({ workerId: "ts-worker", assistantIds: [assistantId] });
  const done = await client.completeRun({
    runId: run.runId,
    workerId: "ts-worker",
    status: RunStatus.SUCCESS,
  });

  assert.deepEqual(summary(await watch.rest()), [
    [EventType.UPDATED, run.runId, RunStatus.RUNNING, claimed.run!.revision],
    [EventType.UPDATED, run.runId, RunStatus.SUCCESS, done.revision],
  ]);
});

test("WatchRun from a start_revision replays the run's changes and ends", async () => {
  const run = await client.createRun({ assistantId: ASSISTANT });
  const cancelled = await client.cancelRun({ runId: run.runId });

  const watch = new Watch((options) =>
    client.watchRun({ runId: run.runId, startRevision: run.revision }, options),
  );

  assert.deepEqual(summary(await watch.rest()), [
    [EventType.CREATED, run.runId, RunStatus.PENDING, run.revision],
    [EventType.UPDATED, run.runId, RunStatus.INTERRUPTED, cancelled.revision],
  ]);
});

test("WatchRun of an unknown run fails with NOT_FOUND", async () => {
  const runId = "00000000-0000-4000-8000-000000000000";
  const watch = new Watch((options) => client.watchRun({ runId }, options));

  const missing = await failure(watch.next());

  assert.equal(missing.code, Code.NotFound);
  assert.equal(missing.reason, "RUN_NOT_FOUND");
  assert.deepEqual(missing.metadata, { run_id: runId });
});
