// Drives the official SDK's Realtime client (@trigger.dev/sdk 4.8.3) against a server:
// `configure({ baseURL, accessToken })`, then `runs.subscribeToRun(runId)` (mode
// "subscribe"), its `.withStreams()` (mode "withStreams"), or `auth.createPublicToken`
// followed by a subscription that uses the minted token (mode "token").
//
// Usage: node realtime_sdk.cjs '{"baseUrl", "token", "runId", "mode", "streams"?, "watchdogMs"?}'
// Prints one JSON line per event: {"type": "run", "metadata", "status", "finished", ...}
// for every run the SDK yields, {"type": "chunk", "key", "chunk"} for stream chunks,
// {"type": "token", "token"} for a minted token, and last {"type": "end", "how"}:
// "done" (the iterator ended), "threw" (with the message), or "watchdog" (nothing
// ended it in time). The SDK stops silently on a 4xx, so only "done" means success.
"use strict";
const { configure, runs, auth } = require("@trigger.dev/sdk");

const cfg = JSON.parse(process.argv[2]);
const out = (event) => process.stdout.write(JSON.stringify(event) + "\n");

function runEvent(run) {
  return {
    type: "run",
    id: run.id,
    status: run.status,
    metadata: run.metadata ?? null,
    finished: run.finishedAt ? run.finishedAt.toISOString() : null,
    created: run.createdAt instanceof Date && !Number.isNaN(run.createdAt.getTime()),
    isCompleted: run.isCompleted,
    isExecuting: run.isExecuting,
    taskIdentifier: run.taskIdentifier,
    realtimeStreams: run.realtimeStreams,
  };
}

async function subscribe(runId) {
  for await (const run of runs.subscribeToRun(runId)) {
    out(runEvent(run));
  }
}

async function withStreams(runId, expected) {
  // withStreams never ends by itself (an SDK quirk): stop once the run finished and every
  // expected stream delivered its chunks.
  const counts = {};
  let finished = false;
  const done = () => finished && Object.entries(expected).every(([key, n]) => (counts[key] ?? 0) >= n);
  for await (const part of runs.subscribeToRun(runId).withStreams()) {
    if (part.type === "run") {
      out(runEvent(part.run));
      finished = finished || Boolean(part.run.finishedAt);
    } else {
      counts[part.type] = (counts[part.type] ?? 0) + 1;
      out({ type: "chunk", key: part.type, chunk: part.chunk });
    }
    if (done()) break;
  }
}

async function main() {
  configure({ baseURL: cfg.baseUrl, accessToken: cfg.token });
  const watchdog = setTimeout(() => {
    out({ type: "end", how: "watchdog" });
    process.exit(0);
  }, cfg.watchdogMs ?? 60000);
  try {
    if (cfg.mode === "token") {
      const token = await auth.createPublicToken({
        scopes: { read: { runs: [cfg.runId] } },
        expirationTime: cfg.expirationTime ?? "1h",
      });
      out({ type: "token", token });
      configure({ baseURL: cfg.baseUrl, accessToken: token });
      await subscribe(cfg.runId);
    } else if (cfg.mode === "withStreams") {
      await withStreams(cfg.runId, cfg.streams ?? {});
    } else {
      await subscribe(cfg.runId);
    }
    out({ type: "end", how: "done" });
  } catch (error) {
    out({ type: "end", how: "threw", message: String(error && error.message) });
  }
  clearTimeout(watchdog);
  process.exit(0);
}

main();
