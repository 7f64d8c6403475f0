// One RunService client over connect-node's gRPC transport (HTTP/2), shared by
// every test file, and the few helpers the tests read best with.
//
// The server's address comes from RUNPLANE_ADDRESS (host:port, plaintext), so
// the suite runs against any server:
//
//   RUNPLANE_ADDRESS=127.0.0.1:50051 npm test
//
// When RUNPLANE_CALLED_METHODS names a file, every RPC the suite starts is
// appended to it, one method name a line: test_node_client.py checks that the
// suite calls every RPC the server serves.
import { appendFileSync } from "node:fs";
import { randomUUID } from "node:crypto";

import {
  Code,
  ConnectError,
  createClient,
  type CallOptions,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { EventType, type RunEvent } from "./gen/runplane/v1/run_pb.js";
import { RunService, type WatchRunsResponse } from "./gen/runplane/v1/run_service_pb.js";

const address = process.env.RUNPLANE_ADDRESS;
if (!address) {
  throw new Error("set RUNPLANE_ADDRESS to a running server's host:port, e.g. 127.0.0.1:50051");
}
const calledMethods = process.env.RUNPLANE_CALLED_METHODS;

const recordMethod: Interceptor = (next) => async (request) => {
  if (calledMethods) appendFileSync(calledMethods, `${request.method.name}\n`);
  return next(request);
};

const baseUrl = `http://${address}`;
const sessions = new Http2SessionManager(baseUrl);

export const client = createClient(
  RunService,
  createGrpcTransport({
    baseUrl,
    sessionManager: sessions,
    interceptors: [recordMethod],
    defaultTimeoutMs: 10_000,
  }),
);

/** Closes the HTTP/2 connection so the test process can exit. */
export function closeClient(): void {
  sessions.abort();
}

/** Deadline of a watch stream in a test: long enough for a slow CI, short enough to fail. */
export const WATCH_TIMEOUT_MS = 20_000;

/** The domain of every ErrorInfo runplane sends. */
export const ERROR_DOMAIN = "runplane.dev";

/** A thread id nobody else uses, so each test owns its thread. */
export function newThreadId(): string {
  return randomUUID();
}

/** An assistant id nobody else uses, so a test's claims only see its own runs. */
export function newAssistantId(): string {
  return `ts-${randomUUID()}`;
}

/** What a failed call said, decoded from its status and google.rpc details. */
export interface Failure {
  code: Code;
  message: string;
  reason: string;
  domain: string;
  metadata: Record<string, string>;
  violations: { field: string; description: string }[];
}

/** Awaits a call that must fail and decodes its error details. */
export async function failure(call: Promise<unknown>): Promise<Failure> {
  let caught: unknown;
  try {
    await call;
  } catch (error) {
    caught = error;
  }
  if (caught === undefined) throw new Error("the call succeeded; it was expected to fail");
  const error = ConnectError.from(caught);
  const infos = error.findDetails(ErrorInfoSchema);
  if (infos.length !== 1) {
    throw new Error(`expected one ErrorInfo, got ${infos.length}: ${error.message}`);
  }
  const [info] = infos as [(typeof infos)[number]];
  return {
    code: error.code,
    message: error.rawMessage,
    reason: info.reason,
    domain: info.domain,
    metadata: { ...info.metadata },
    violations: error
      .findDetails(BadRequestSchema)
      .flatMap((bad) => bad.fieldViolations)
      .map(({ field, description }) => ({ field, description })),
  };
}

/**
 * A watch stream read one message at a time. Every message is checked against
 * what each stream promises: ascending revisions with no duplicate (INITIAL
 * events share the revision they were read at), and no event past the
 * revision of the message that carries it.
 */
export class Watch {
  private readonly abort = new AbortController();
  private readonly responses: AsyncIterator<WatchRunsResponse>;
  private last: RunEvent | undefined;

  constructor(open: (options: CallOptions) => AsyncIterable<WatchRunsResponse>) {
    const options = { signal: this.abort.signal, timeoutMs: WATCH_TIMEOUT_MS };
    this.responses = open(options)[Symbol.asyncIterator]();
  }

  /** The next message, or undefined once the server ended the stream with OK. */
  async next(): Promise<WatchRunsResponse | undefined> {
    const result = await this.responses.next();
    if (result.done) return undefined;
    for (const event of result.value.events) {
      const last = this.last;
      const initialState = last?.type === EventType.INITIAL && event.type === EventType.INITIAL;
      if (last !== undefined && !initialState && event.revision <= last.revision) {
        throw new Error(`revision ${event.revision} after ${last.revision}: out of order`);
      }
      if (event.revision > result.value.revision) {
        throw new Error(`event at ${event.revision} in a message at ${result.value.revision}`);
      }
      this.last = event;
    }
    return result.value;
  }

  /** Reads messages until at least `count` events arrived, skipping bookmarks. */
  async take(count: number): Promise<RunEvent[]> {
    const events: RunEvent[] = [];
    while (events.length < count) {
      const response = await this.next();
      if (response === undefined) {
        throw new Error(`the stream ended after ${events.length} of ${count} events`);
      }
      events.push(...response.events);
    }
    return events;
  }

  /** Reads every event until the server ends the stream; fails if it ends with an error. */
  async rest(): Promise<RunEvent[]> {
    const events: RunEvent[] = [];
    for (let response = await this.next(); response; response = await this.next()) {
      events.push(...response.events);
    }
    return events;
  }

  /** Cancels the stream, as a client that goes away does. */
  async close(): Promise<void> {
    this.abort.abort();
    // connect clears the call's deadline timer only once a read fails or the
    // stream ends, so read until the cancellation surfaces.
    try {
      while (!(await this.responses.next()).done);
    } catch (error) {
      if (ConnectError.from(error).code !== Code.Canceled) throw error;
    }
  }
}
