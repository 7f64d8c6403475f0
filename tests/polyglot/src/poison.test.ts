// The nastiest run the server accepts decodes in this client too: metadata, kwargs and
// result of every JSON kind, unicode that breaks naive code, empty and long keys, the
// deepest nesting allowed (31 levels, the Struct counted), each just under 256 KiB.
// tests/support/poison.py builds the same kind of run for the Python clients.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { fromJson, toBinary, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { StructSchema } from "@bufbuild/protobuf/wkt";

import { RunStatus } from "./gen/runplane/v1/run_pb.js";
import { client, closeClient, newAssistantId, Watch } from "./runplane.js";

after(closeClient);

const LIMIT = 256 * 1024;
const DEEPEST = 31;
const NASTY =
  "astral 😀𝄞🏳️‍🌈 | rtl שלום مرحبا \u202eevil\u202c | combining e\u0301 Z\u0324\u0354\u0367 | " +
  "zero width \u200b\u200d\ufeff | control \x01\x1f\x7f | escapes \" \\ / \b\f\n\r\t | " +
  "</script><!-- ${x} %s {0} '; DROP TABLE runs; --";

/** The first `count` characters (code points: never half of a surrogate pair). */
function prefix(text: string, count: number): string {
  return Array.from(text).slice(0, count).join("");
}

function structBytes(value: JsonObject): number {
  return toBinary(StructSchema, fromJson(StructSchema, value)).length;
}

/** Every kind of JSON value, nested as deep as allowed, padded to just under the limit. */
function poison(tag: string): JsonObject {
  let deep: JsonValue = NASTY;
  for (let level = 0; level < DEEPEST - 1; level++) {
    deep = level % 2 ? [deep] : { [prefix(NASTY, 8)]: deep };
  }
  const value: JsonObject = {
    "": "the empty key",
    ["k".repeat(4096)]: "a long key",
    'a"b.c[0]$\\': "JSON-path specials",
    [NASTY]: NASTY,
    null: null,
    true: true,
    false: false,
    numbers: [0, 1.5, -1e308, 1e308, 5e-324, 2 ** 53, 1e-7, 123456789.125],
    empty: { list: [], object: {}, string: "" },
    mixed: [null, true, "x", 1, [[]], { "": {} }],
    tag,
    deep,
    padding: "",
  };
  value.padding = "é".repeat(Math.floor((LIMIT - structBytes(value) - 16) / 2));
  const size = structBytes(value);
  assert.ok(size > LIMIT - 64 && size <= LIMIT, `${size} bytes`);
  return value;
}

test("the nastiest run the server accepts is read back by get, list and watch", async () => {
  const assistantId = newAssistantId();
  const [metadata, kwargs, result] = [poison("metadata"), poison("kwargs"), poison("result")];
  const created = await client.createRun({ assistantId, metadata, kwargs });
  const worker = prefix(NASTY, 200);
  await client.claimRun({ workerId: worker, assistantIds: [assistantId] });
  const error = prefix(NASTY.repeat(1000), 60_000);
  const done = await client.completeRun({
    runId: created.runId,
    workerId: worker,
    status: RunStatus.ERROR,
    error,
    result,
  });

  const got = await client.getRun({ runId: created.runId });
  const listed = await client.listRuns({ filter: { threadId: created.threadId } });
  const replayed = new Watch((options) =>
    client.watchRuns(
      { filter: { threadId: created.threadId }, startRevision: created.revision },
      options,
    ),
  );
  const events = await replayed.take(3);
  await replayed.close();
  const watched = await new Watch((options) =>
    client.watchRun({ runId: created.runId }, options),
  ).rest();

  const runs = [got, ...listed.runs, events[2]!.run!, watched.at(-1)!.run!];
  assert.equal(runs.length, 4);
  for (const run of runs) {
    assert.equal(run.runId, created.runId);
    assert.deepEqual(run.metadata, metadata);
    assert.deepEqual(run.kwargs, kwargs);
    assert.deepEqual(run.result, result);
    assert.equal(run.error, error);
    assert.equal(run.revision, done.revision);
  }
});
