// The resource calls: CreateRun with each multitask strategy, GetRun, ListRuns
// page by page, UpdateRun with a field mask, CancelRun, CancelRuns and DeleteRun.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, describe, test } from "node:test";

import type { JsonObject } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { durationFromMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";

import {
  CancelAction,
  MultitaskStrategy,
  RunStatus,
  type Run,
} from "./gen/runplane/v1/run_pb.js";
import { client, closeClient, failure, newAssistantId, newThreadId } from "./runplane.js";

after(closeClient);

const ASSISTANT = "ts-assistant";
const CANONICAL_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

async function threadRuns(threadId: string): Promise<Run[]> {
  const page = await client.listRuns({ filter: { threadId }, orderBy: "created_at asc" });
  return page.runs;
}

describe("CreateRun", () => {
  test("returns a PENDING run with server-generated ids and what was given", async () => {
    const startAfter = new Date(Date.now() + 3_600_000);
    const run = await client.createRun({
      assistantId: ASSISTANT,
      metadata: { source: "typescript", nested: { n: 1, ok: true, tags: ["a", null] } },
      kwargs: { input: "hello" },
      timeout: durationFromMs(90_000),
      startAfter: timestampFromDate(startAfter),
    });

    assert.match(run.runId, CANONICAL_UUID);
    assert.match(run.threadId, CANONICAL_UUID);
    assert.equal(run.status, RunStatus.PENDING);
    assert.equal(run.multitaskStrategy, MultitaskStrategy.ENQUEUE);
    assert.deepEqual(run.metadata, {
      source: "typescript",
      nested: { n: 1, ok: true, tags: ["a", null] },
    });
    assert.deepEqual(run.kwargs, { input: "hello" });
    assert.equal(run.timeout?.seconds, 90n);
    assert.equal(timestampDate(run.startAfter!).getTime(), startAfter.getTime());
    assert.equal(run.attempt, 0);
    assert.ok(run.revision > 0n);
  });

  test("REJECT refuses a run on a busy thread with THREAD_BUSY and writes nothing", async () => {
    const first = await client.createRun({ assistantId: ASSISTANT });

    const busy = await failure(
      client.createRun({
        assistantId: ASSISTANT,
        threadId: first.threadId,
        multitaskStrategy: MultitaskStrategy.REJECT,
      }),
    );

    assert.equal(busy.code, Code.FailedPrecondition);
    assert.equal(busy.reason, "THREAD_BUSY");
    assert.deepEqual(busy.metadata, { thread_id: first.threadId, run_id: first.runId });
    assert.deepEqual(
      (await threadRuns(first.threadId)).map((run) => run.runId),
      [first.runId],
    );
  });

  test("INTERRUPT marks every inflight run of the thread INTERRUPTED", async () => {
    const threadId = newThreadId();
    const older = await client.createRun({ assistantId: ASSISTANT, threadId });
    const old = await client.createRun({ assistantId: ASSISTANT, threadId });

    const newest = await client.createRun({
      assistantId: ASSISTANT,
      threadId,
      multitaskStrategy: MultitaskStrategy.INTERRUPT,
    });

    const runs = await threadRuns(threadId);
    assert.deepEqual(
      runs.map((run) => [run.runId, run.status, run.cancelReason]),
      [
        [older.runId, RunStatus.INTERRUPTED, `superseded by run ${newest.runId}`],
        [old.runId, RunStatus.INTERRUPTED, `superseded by run ${newest.runId}`],
        [newest.runId, RunStatus.PENDING, ""],
      ],
    );
  });

  test("ROLLBACK deletes every inflight run of the thread", async () => {
    const threadId = newThreadId();
    const old = await client.createRun({ assistantId: ASSISTANT, threadId });

    const newest = await client.createRun({
      assistantId: ASSISTANT,
      threadId,
      multitaskStrategy: MultitaskStrategy.ROLLBACK,
    });

    assert.deepEqual(
      (await threadRuns(threadId)).map((run) => run.runId),
      [newest.runId],
    );
    const gone = await failure(client.getRun({ runId: old.runId }));
    assert.equal(gone.code, Code.NotFound);
    assert.equal(gone.reason, "RUN_NOT_FOUND");
  });

  test("ENQUEUE (and UNSPECIFIED) queue runs behind the thread's, claimed in order", async () => {
    const threadId = newThreadId();
    const assistantId = newAssistantId();
    const first = await client.createRun({ assistantId, threadId });
    const second = await client.createRun({
      assistantId,
      threadId,
      multitaskStrategy: MultitaskStrategy.ENQUEUE,
    });
    assert.equal(first.multitaskStrategy, MultitaskStrategy.ENQUEUE);
    assert.equal(second.status, RunStatus.PENDING);

    const claim = () => client.claimRun({ workerId: "ts-worker", assistantIds: [assistantId] });
    assert.equal((await claim()).run?.runId, first.runId);
    // One RUNNING run per thread: the second waits until the first ends.
    assert.equal((await claim()).run, undefined);
  });

  test("a repeated request_id returns the run first created", async () => {
    const requestId = randomUUID();
    const first = await client.createRun({ assistantId: ASSISTANT, requestId });
    const again = await client.createRun({
      assistantId: ASSISTANT,
      requestId,
      threadId: first.threadId,
      multitaskStrategy: MultitaskStrategy.REJECT,
    });
    assert.equal(again.runId, first.runId);
    assert.equal((await threadRuns(first.threadId)).length, 1);
  });
});

test("GetRun returns the run as created", async () => {
  const created = await client.createRun({
    assistantId: ASSISTANT,
    runId: randomUUID(),
    metadata: { k: "v" },
  });
  assert.deepEqual(await client.getRun({ runId: created.runId }), created);
});

describe("ListRuns", () => {
  test("follows page tokens through every run, in order, without overlap", async () => {
    const threadId = newThreadId();
    const created: string[] = [];
    for (let i = 0; i < 5; i++) {
      created.push((await client.createRun({ assistantId: ASSISTANT, threadId })).runId);
    }

    const pages: string[][] = [];
    let pageToken = "";
    do {
      const page = await client.listRuns({
        filter: { threadId },
        pageSize: 2,
        pageToken,
        orderBy: "created_at asc",
      });
      assert.ok(page.revision > 0n);
      pages.push(page.runs.map((run) => run.runId));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");

    assert.deepEqual(pages, [created.slice(0, 2), created.slice(2, 4), created.slice(4)]);

    const newestFirst = await client.listRuns({ filter: { threadId } });
    assert.deepEqual(
      newestFirst.runs.map((run) => run.runId),
      [...created].reverse(),
    );
  });

  test("filters by status and metadata containment", async () => {
    const threadId = newThreadId();
    const create = (metadata: JsonObject) =>
      client.createRun({ assistantId: ASSISTANT, threadId, metadata });
    const tagged = await create({ team: "a", n: 1 });
    await create({ team: "b" });
    const cancelled = await create({ team: "a" });
    await client.cancelRun({ runId: cancelled.runId });

    const page = await client.listRuns({
      filter: { threadId, metadata: { team: "a" }, statuses: [RunStatus.PENDING] },
    });
    assert.deepEqual(
      page.runs.map((run) => run.runId),
      [tagged.runId],
    );
  });

  test("a page token used with another filter is INVALID_ARGUMENT", async () => {
    const threadId = newThreadId();
    await client.createRun({ assistantId: ASSISTANT, threadId });
    await client.createRun({ assistantId: ASSISTANT, threadId });
    const first = await client.listRuns({ filter: { threadId }, pageSize: 1 });
    assert.notEqual(first.nextPageToken, "");

    const misused = await failure(
      client.listRuns({
        filter: { threadId: newThreadId() },
        pageSize: 1,
        pageToken: first.nextPageToken,
      }),
    );
    assert.equal(misused.code, Code.InvalidArgument);
    assert.deepEqual(
      misused.violations.map((violation) => violation.field),
      ["page_token"],
    );
  });
});

describe("UpdateRun", () => {
  test("changes only the masked fields and bumps the revision", async () => {
    const run = await client.createRun({
      assistantId: ASSISTANT,
      metadata: { step: 1 },
      kwargs: { input: "before" },
    });

    const updated = await client.updateRun({
      run: { runId: run.runId, metadata: { step: 2 }, kwargs: { input: "ignored" } },
      updateMask: { paths: ["metadata"] },
      expectedRevision: run.revision,
    });

    assert.deepEqual(updated.metadata, { step: 2 });
    assert.deepEqual(updated.kwargs, { input: "before" });
    assert.ok(updated.revision > run.revision);

    const kwargs = await client.updateRun({
      run: { runId: run.runId, kwargs: { input: "after" } },
      updateMask: { paths: ["kwargs"] },
    });
    assert.deepEqual(kwargs.kwargs, { input: "after" });
    assert.deepEqual(kwargs.metadata, { step: 2 });
  });

  test("a stale expected_revision is ABORTED with REVISION_MISMATCH", async () => {
    const run = await client.createRun({ assistantId: ASSISTANT });
    const changed = await client.updateRun({
      run: { runId: run.runId, metadata: { v: 1 } },
      updateMask: { paths: ["metadata"] },
    });

    const stale = await failure(
      client.updateRun({
        run: { runId: run.runId, metadata: { v: 2 } },
        updateMask: { paths: ["metadata"] },
        expectedRevision: run.revision,
      }),
    );

    assert.equal(stale.code, Code.Aborted);
    assert.equal(stale.reason, "REVISION_MISMATCH");
    assert.deepEqual(stale.metadata, {
      run_id: run.runId,
      expected_revision: String(run.revision),
      current_revision: String(changed.revision),
    });
  });

  test("a read-only mask path is INVALID_ARGUMENT", async () => {
    const run = await client.createRun({ assistantId: ASSISTANT });
    const refused = await failure(
      client.updateRun({
        run: { runId: run.runId, status: RunStatus.SUCCESS },
        updateMask: { paths: ["status"] },
      }),
    );
    assert.equal(refused.code, Code.InvalidArgument);
    assert.equal(refused.reason, "INVALID_ARGUMENT");
    assert.equal((await client.getRun({ runId: run.runId })).status, RunStatus.PENDING);
  });
});

describe("CancelRun", () => {
  test("INTERRUPT keeps the run INTERRUPTED with the reason; again is RUN_TERMINAL", async () => {
    const run = await client.createRun({ assistantId: ASSISTANT });

    const cancelled = await client.cancelRun({ runId: run.runId, reason: "user closed the chat" });
    assert.equal(cancelled.status, RunStatus.INTERRUPTED);
    assert.equal(cancelled.cancelReason, "user closed the chat");
    assert.ok(cancelled.endedAt !== undefined);

    const again = await failure(client.cancelRun({ runId: run.runId }));
    assert.equal(again.code, Code.FailedPrecondition);
    assert.equal(again.reason, "RUN_TERMINAL");
    assert.equal(again.metadata.run_id, run.runId);
  });

  test("ROLLBACK deletes the run and returns its last state", async () => {
    const run = await client.createRun({ assistantId: ASSISTANT });

    const last = await client.cancelRun({ runId: run.runId, action: CancelAction.ROLLBACK });
    assert.equal(last.runId, run.runId);
    assert.equal(last.status, RunStatus.PENDING);
    assert.equal((await failure(client.getRun({ runId: run.runId }))).code, Code.NotFound);
  });
});

describe("CancelRuns", () => {
  test("cancels every inflight run of a thread in one transaction and says how many", async () => {
    const threadId = newThreadId();
    const runs: Run[] = [];
    for (let i = 0; i < 3; i++) {
      runs.push(await client.createRun({ assistantId: ASSISTANT, threadId }));
    }
    const other = await client.createRun({ assistantId: ASSISTANT });

    const done = await client.cancelRuns({ filter: { threadId }, reason: "bulk stop" });
    assert.equal(done.count, 3n);
    const after = await threadRuns(threadId);
    assert.deepEqual(
      after.map((run) => [run.runId, run.status, run.cancelReason]),
      runs.map((run) => [run.runId, RunStatus.INTERRUPTED, "bulk stop"]),
    );
    const last = after.map((run) => run.revision).reduce((a, b) => (a > b ? a : b));
    assert.equal(done.revision, last);
    assert.equal((await client.getRun({ runId: other.runId })).status, RunStatus.PENDING);

    const rolledBack = await client.cancelRuns({
      filter: { threadId: other.threadId },
      action: CancelAction.ROLLBACK,
    });
    assert.equal(rolledBack.count, 1n);
    assert.equal((await failure(client.getRun({ runId: other.runId }))).code, Code.NotFound);
  });

  test("an empty filter is INVALID_ARGUMENT with a violation of `filter`", async () => {
    const refused = await failure(client.cancelRuns({ filter: { statuses: [RunStatus.PENDING] } }));
    assert.equal(refused.code, Code.InvalidArgument);
    assert.equal(refused.reason, "INVALID_ARGUMENT");
    assert.deepEqual(refused.violations.map((violation) => violation.field), ["filter"]);
  });
});

describe("DeleteRun", () => {
  test("refuses an inflight run with RUN_INFLIGHT unless forced", async () => {
    const run = await client.createRun({ assistantId: ASSISTANT });

    const inflight = await failure(client.deleteRun({ runId: run.runId }));
    assert.equal(inflight.code, Code.FailedPrecondition);
    assert.equal(inflight.reason, "RUN_INFLIGHT");
    assert.deepEqual(inflight.metadata, { run_id: run.runId, status: "pending" });

    await client.deleteRun({ runId: run.runId, force: true });
    assert.equal((await failure(client.getRun({ runId: run.runId }))).code, Code.NotFound);
  });

  test("deletes a terminal run at its expected revision", async () => {
    const run = await client.createRun({ assistantId: ASSISTANT });
    const cancelled = await client.cancelRun({ runId: run.runId });

    const stale = await failure(
      client.deleteRun({ runId: run.runId, expectedRevision: run.revision }),
    );
    assert.equal(stale.reason, "REVISION_MISMATCH");

    await client.deleteRun({ runId: run.runId, expectedRevision: cancelled.revision });
    assert.equal((await failure(client.getRun({ runId: run.runId }))).reason, "RUN_NOT_FOUND");
  });
});
