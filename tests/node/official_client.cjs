// Drives the official SDK's own metadata code against a server: @trigger.dev/core's
// StandardMetadataManager (the queue behind `metadata.set/increment/...` in a task)
// flushing through its ApiClient (PUT/GET /api/v1/runs/{runId}/metadata).
//
// Usage: node official_client.cjs '{"baseUrl": ..., "token": ..., "runId": ...}'
// Prints one JSON object: after each flush, the manager's local view (current())
// and what the server then returns; console.error output (where the SDK reports a
// failed flush) is captured so the caller can tell a swallowed failure.
const { ApiClient } = require("@trigger.dev/core/v3");
const { StandardMetadataManager } = require("@trigger.dev/core/v3/workers");

const errors = [];
console.error = (...args) => errors.push(args.map((a) => (a instanceof Error ? a.stack || a.message : String(a))).join(" "));

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const client = new ApiClient(cfg.baseUrl, cfg.token);
  const manager = new StandardMetadataManager(client);
  manager.runId = cfg.runId;
  await manager.refresh();
  const rounds = [];
  const settle = async (name) => {
    await manager.flush();
    const server = (await client.getRunMetadata(cfg.runId)).metadata;
    rounds.push({ name, local: structuredClone(manager.current()), server });
  };

  manager
    .set("status", "running")
    .set("progress", 0.25)
    .increment("count", 3)
    .append("logs", "started")
    .append("logs", "step 1")
    .set("details", { stage: "fetch", tries: 0, tags: ["a", "b", "a"] })
    .increment("$.details.tries", 1);
  manager.parent.increment("childrenDone", 1).append("events", "child started").set("lastChild", cfg.runId);
  manager.root.increment("total", 5);
  await settle("set, increment, append, path increment, parent and root");

  manager
    .remove("logs", "started")
    .decrement("count", 1)
    .del("progress")
    .append("logs", { step: 2, ok: true })
    .remove("$.details.tags", "a")
    .set("$.details.stage", "done")
    .increment("$.details.tries", 2);
  manager.parent.append("events", "child finished").decrement("pending", 1).remove("queue", cfg.runId);
  manager.root.set("status", "ok");
  await settle("remove, decrement, delete, path set/remove, parent remove");

  manager.update({ replaced: true, count: 10, nested: { list: [1, 2, 3] } });
  manager.increment("count", 0.5).append("$.nested.list", 4).set("unicode", "日本語 🎉");
  await settle("update (replace) then operations");

  // Nothing queued: flush() must not send anything, and the views still agree.
  await settle("empty flush");

  const parent = cfg.parentId ? (await client.getRunMetadata(cfg.parentId)).metadata : null;
  const root = cfg.rootId ? (await client.getRunMetadata(cfg.rootId)).metadata : null;
  return { rounds, parent, root };
}

main().then(
  (result) => {
    process.stdout.write(JSON.stringify({ ...result, errors }) + "\n");
    process.exit(0);
  },
  (error) => {
    process.stdout.write(JSON.stringify({ fatal: String((error && error.stack) || error), errors }) + "\n");
    process.exit(1);
  },
);
