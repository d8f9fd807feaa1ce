"use strict";
// The metaops dashboard: one run followed live in the browser.
//
// It speaks two public routes of `metaops serve`, with the run-scoped, read-only public
// token the server put in <body data-token>:
//   GET /realtime/v1/runs/{runId}             the run's row (Electric's shape protocol:
//                                             a snapshot at offset=-1, then live long-polls)
//   GET /realtime/v1/streams/{runId}/{key}    each stream as server-sent events, resumed
//                                             with Last-Event-ID after a drop
// Metadata and stream chunks are untrusted: they reach the page only as text nodes and
// attribute values (textContent, setAttribute, dataset), never as HTML.
//
// How a value is recognised as progress (kept in step with metaops/service/_dashboard.py):
//   1. a number in [0, 1] under a key named `progress`, or ending in `Progress`,
//      `_progress` or `-progress` (`uploadProgress`): that fraction;
//   2. an object with a number `total` > 0 and a number under `done`, `processed`,
//      `completed`, `current` or `count`: that count over the total;
//   3. a number under `processedX`, `doneX` or `completedX` (also `processed_x`, ...)
//      beside a number `totalX` (`total_x`) > 0 in the same object: that count over it.
(function () {
  const LIST_WINDOW = 20; // entries of a long list or object shown until asked for more
  const MORE = 500; // how many more each "show more" adds
  const STRING_CHARS = 300; // longer strings are cut (the whole string is in the tooltip)
  const STREAM_LINES = 500; // chunks of a stream kept on the page
  const MAX_STREAMS = 4; // followed at once: a browser opens 6 connections per host
  const COUNT_NAMES = ["done", "processed", "completed", "current", "count"];
  const COUNT_PREFIXES = ["processed", "done", "completed"];

  const body = document.body;
  const runId = body.dataset.runId || "";
  const token = body.dataset.token || "";
  const runPath = encodeURIComponent(runId);
  const byId = (id) => document.getElementById(id);

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
  const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
  const formatCount = (n) => (Number.isInteger(n) ? n.toLocaleString("en-US") : String(n));
  const percent = (fraction) => Math.round(Math.min(1, Math.max(0, fraction)) * 1000) / 10;

  // ------------------------------------------------------------------ progress

  function isProgressKey(key) {
    return (
      key.toLowerCase() === "progress" ||
      key.endsWith("Progress") ||
      key.endsWith("_progress") ||
      key.endsWith("-progress")
    );
  }

  function totalBeside(parent, key) {
    // processedRows -> totalRows, processed_rows -> total_rows
    for (const prefix of COUNT_PREFIXES) {
      if (!key.startsWith(prefix) || key.length === prefix.length) continue;
      const rest = key.slice(prefix.length);
      let totalKey = null;
      if (rest[0] >= "A" && rest[0] <= "Z") totalKey = "total" + rest;
      else if (rest[0] === "_") totalKey = "total" + rest;
      if (totalKey !== null && Object.prototype.hasOwnProperty.call(parent, totalKey)) {
        const total = parent[totalKey];
        if (isNumber(total) && total > 0) return total;
      }
    }
    return null;
  }

  function countOf(count, total) {
    const fraction = count / total;
    return { fraction, label: `${formatCount(count)} / ${formatCount(total)} (${Math.floor(fraction * 100)}%)` };
  }

  // {fraction, label} when the value at parent[key] is progress (rules 1 to 3), else null.
  function progressOf(parent, key, value) {
    if (isNumber(value)) {
      if (isProgressKey(key) && value >= 0 && value <= 1) {
        return { fraction: value, label: percent(value) + "%" };
      }
      if (isObject(parent) && value >= 0) {
        const total = totalBeside(parent, key);
        if (total !== null) {
          return countOf(value, total);
        }
      }
      return null;
    }
    if (isObject(value) && isNumber(value.total) && value.total > 0) {
      for (const name of COUNT_NAMES) {
        const count = value[name];
        if (Object.prototype.hasOwnProperty.call(value, name) && isNumber(count) && count >= 0) {
          return countOf(count, value.total);
        }
      }
    }
    return null;
  }

  function makeBar(path) {
    const wrap = element("span", "bar-wrap");
    const bar = element("span", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.dataset.path = path;
    const fill = element("span", "fill");
    bar.append(fill);
    const label = element("span", "bar-label");
    wrap.append(bar, label);
    return { wrap, bar, fill, label };
  }

  function setBar(parts, progress) {
    const value = percent(progress.fraction);
    parts.fill.style.width = value + "%";
    parts.bar.classList.toggle("full", value >= 100);
    parts.bar.setAttribute("aria-valuenow", String(value));
    parts.bar.setAttribute("aria-valuetext", progress.label);
    parts.label.textContent = progress.label;
  }

  // ------------------------------------------------------------------ the tree

  const kindOf = (value) => (value === null ? "null" : Array.isArray(value) ? "array" : typeof value);
  const childPath = (path, key, inArray) =>
    inArray ? `${path}[${key}]` : path ? `${path}.${key}` : String(key);

  // One place in the metadata: a <li> updated in place when a new row comes.
  class Entry {
    constructor(key, path, inArray, depth) {
      this.path = path;
      this.depth = depth;
      this.kind = null;
      this.item = element("li", "entry");
      this.item.dataset.path = path;
      this.head = element("div", "line");
      this.toggle = element("button", "toggle");
      this.toggle.type = "button";
      this.toggle.setAttribute("aria-label", "collapse");
      this.toggle.addEventListener("click", () => this.setOpen(!this.open));
      this.keyNode = element("span", inArray ? "key index" : "key", inArray ? String(key) : key);
      this.value = element("span", "value");
      this.barSlot = element("span", "bar-slot");
      this.head.append(this.toggle, this.keyNode, element("span", "colon", ":"), this.value, this.barSlot);
      this.item.append(this.head);
      this.open = true;
      this.branch = null;
      this.bar = null;
    }

    setOpen(open) {
      this.open = open;
      this.item.classList.toggle("closed", !open);
      this.toggle.setAttribute("aria-expanded", String(open));
      this.toggle.setAttribute("aria-label", open ? "collapse" : "expand");
    }

    update(value, progress, found) {
      const kind = kindOf(value);
      if (kind !== this.kind) {
        this.kind = kind;
        this.item.dataset.kind = kind;
        if (this.branch) {
          this.branch.list.remove();
          this.branch = null;
        }
        const container = kind === "object" || kind === "array";
        this.toggle.hidden = !container;
        this.value.className = "value " + kind;
        if (container) {
          this.branch = new Branch(this.path, kind === "array", this.depth + 1);
          this.item.append(this.branch.list);
          this.setOpen(this.depth < 3);
        }
      }
      if (this.branch) {
        this.value.textContent = this.branch.summary(value);
        this.branch.update(value, found);
      } else {
        const text = kind === "string" ? JSON.stringify(value) : String(value);
        const shown = text.length > STRING_CHARS ? text.slice(0, STRING_CHARS) + "…" : text;
        if (this.value.textContent !== shown) {
          if (this.value.textContent !== "") flash(this.value);
          this.value.textContent = shown;
          if (shown !== text) this.value.title = text;
          else this.value.removeAttribute("title");
        }
      }
      if (progress) {
        if (!this.bar) {
          this.bar = makeBar(this.path);
          this.barSlot.append(this.bar.wrap);
        }
        setBar(this.bar, progress);
        found.push({ path: this.path, progress });
      } else if (this.bar) {
        this.bar.wrap.remove();
        this.bar = null;
      }
    }
  }

  function flash(node) {
    node.classList.remove("changed");
    void node.offsetWidth; // restart the animation
    node.classList.add("changed");
  }

  // The entries of an object or a list. Long ones show a window: an object its first
  // keys, a list its last items (the newest), with a button for more.
  class Branch {
    constructor(path, isArray, depth) {
      this.path = path;
      this.isArray = isArray;
      this.depth = depth;
      this.list = element("ul", "children");
      this.entries = new Map();
      this.order = [];
      this.shown = LIST_WINDOW;
      this.more = element("li", "more");
      this.moreText = element("span", "more-text");
      this.moreButton = element("button", "more-button", "show more");
      this.moreButton.type = "button";
      this.moreButton.addEventListener("click", () => {
        this.shown += MORE;
        render();
      });
      this.more.append(this.moreText, this.moreButton);
    }

    summary(value) {
      const n = this.isArray ? value.length : Object.keys(value).length;
      if (this.isArray) return n === 1 ? "[1 item]" : `[${formatCount(n)} items]`;
      return n === 1 ? "{1 key}" : `{${formatCount(n)} keys}`;
    }

    update(value, found) {
      const keys = this.isArray ? null : Object.keys(value);
      const length = this.isArray ? value.length : keys.length;
      const start = this.isArray ? Math.max(0, length - this.shown) : 0;
      const end = this.isArray ? length : Math.min(length, this.shown);
      const wanted = [];
      for (let i = start; i < end; i++) wanted.push(this.isArray ? i : keys[i]);
      const keep = new Set(wanted);
      for (const [key, entry] of this.entries) {
        if (!keep.has(key)) {
          entry.item.remove();
          this.entries.delete(key);
        }
      }
      for (const key of wanted) {
        let entry = this.entries.get(key);
        if (!entry) {
          entry = new Entry(key, childPath(this.path, key, this.isArray), this.isArray, this.depth);
          this.entries.set(key, entry);
        }
        const child = value[key];
        entry.update(child, this.isArray ? null : progressOf(value, key, child), found);
      }
      const hidden = length - wanted.length;
      const reordered =
        wanted.length !== this.order.length || wanted.some((key, i) => key !== this.order[i]);
      if (reordered) {
        // appendChild moves a node that is already there: the entries end in key order.
        if (this.isArray && hidden > 0) this.list.append(this.more);
        for (const key of wanted) this.list.append(this.entries.get(key).item);
        if (!this.isArray && hidden > 0) this.list.append(this.more);
        this.order = wanted;
      }
      if (hidden > 0) {
        const where = this.isArray ? "earlier items" : "more keys";
        this.moreText.textContent = `… ${formatCount(hidden)} ${where} not shown `;
        if (!this.more.parentNode) {
          if (this.isArray) this.list.prepend(this.more);
          else this.list.append(this.more);
        }
      } else {
        this.more.remove();
      }
    }
  }

  // ------------------------------------------------------------------ the page

  const state = { metadata: undefined, size: 0, status: null, completedAt: null, changedAt: null };
  const root = new Branch("", false, 0);
  root.list.className = "tree-root";
  byId("tree").append(root.list);
  const summaryBars = new Map();

  function render() {
    const metadata = state.metadata;
    const found = [];
    const empty = byId("empty");
    if (isObject(metadata)) {
      root.update(metadata, found);
      empty.hidden = Object.keys(metadata).length > 0;
    }
    byId("metadata-size").textContent = state.metadata === undefined ? "" : bytes(state.size);
    renderSummary(found);
    renderStatus();
    const main = found.length ? percent(found[0].progress.fraction) + "% · " : "";
    document.title = `${main}${runId} · metaops`;
  }

  function bytes(n) {
    return n < 1024 ? `${n} bytes` : `${(n / 1024).toFixed(1)} KB`;
  }

  function renderSummary(found) {
    const section = byId("progress-section");
    section.hidden = found.length === 0;
    const list = byId("progress-list");
    const seen = new Set();
    for (const { path, progress } of found) {
      seen.add(path);
      let row = summaryBars.get(path);
      if (!row) {
        const item = element("div", "progress-row");
        const name = element("span", "progress-name", path);
        const parts = makeBar(path);
        parts.bar.dataset.summary = "true";
        item.append(name, parts.wrap);
        row = { item, parts };
        summaryBars.set(path, row);
      }
      setBar(row.parts, progress);
      list.append(row.item); // in the order found
    }
    for (const [path, row] of summaryBars) {
      if (!seen.has(path)) {
        row.item.remove();
        summaryBars.delete(path);
      }
    }
  }

  function renderStatus() {
    const badge = byId("run-status");
    const completed = state.completedAt !== null && state.completedAt !== undefined;
    badge.textContent = completed ? "completed" : state.status === null ? "…" : "running";
    badge.dataset.state = completed ? "completed" : "running";
    const when = byId("changed-at");
    if (state.changedAt) when.textContent = "last change " + state.changedAt.toLocaleTimeString();
  }

  function setConnection(stateName, text) {
    const node = byId("connection");
    node.dataset.state = stateName;
    node.textContent = text;
  }

  let stopped = false;
  function stop(message) {
    stopped = true;
    setConnection("failed", message);
    const note = byId("notice");
    note.textContent = message;
    note.hidden = false;
  }

  async function refusal(response) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const payload = await response.json();
      if (payload && typeof payload.error === "string") message = payload.error;
    } catch (ignored) {
      // not JSON: the status says enough
    }
    if (response.status === 401) {
      return `The page's access token was refused (${message}). A new link: metaops token ${runId} --url ${location.origin}`;
    }
    return message;
  }

  // "Postgres array literal" of the realtimeStreams column: {"a","b"} or {a,b} or {}.
  function parseTextArray(literal) {
    if (typeof literal !== "string" || literal.length < 2) return [];
    const items = [];
    let i = 1;
    while (i < literal.length - 1) {
      let item = "";
      if (literal[i] === '"') {
        i++;
        while (i < literal.length && literal[i] !== '"') {
          if (literal[i] === "\\") i++;
          item += literal[i];
          i++;
        }
        i++; // the closing quote
      } else {
        while (i < literal.length - 1 && literal[i] !== ",") item += literal[i++];
      }
      items.push(item);
      if (literal[i] === ",") i++;
    }
    return items;
  }

  function applyRow(row) {
    if (typeof row.metadata === "string") {
      try {
        state.metadata = JSON.parse(row.metadata);
        state.size = new TextEncoder().encode(row.metadata).length;
      } catch (error) {
        console.warn("metaops: the run's metadata is not JSON", error);
      }
    }
    if ("status" in row) state.status = row.status;
    if ("completedAt" in row) state.completedAt = row.completedAt;
    state.changedAt = new Date();
    const keys = parseTextArray(row.realtimeStreams);
    const declared = isObject(state.metadata) ? state.metadata.$$streams : undefined;
    if (Array.isArray(declared)) keys.push(...declared.filter((key) => typeof key === "string"));
    render();
    for (const key of keys) followStream(key);
  }

  async function followRun() {
    const headers = { Authorization: "Bearer " + token };
    let handle = null;
    let offset = "-1";
    let cursor = "";
    let live = false;
    let failures = 0;
    while (!stopped) {
      const query = new URLSearchParams({ log: "full", offset });
      if (handle !== null) query.set("handle", handle);
      if (live) {
        query.set("live", "true");
        query.set("cursor", cursor);
      }
      let response;
      let messages;
      try {
        response = await fetch(`/realtime/v1/runs/${runPath}?${query}`, { headers, cache: "no-store" });
        if (response.status === 409) {
          // The run was created anew: start over from a snapshot.
          handle = response.headers.get("electric-handle");
          offset = "-1";
          live = false;
          continue;
        }
        if (response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429) {
          stop(await refusal(response));
          return;
        }
        if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
        messages = await response.json();
      } catch (error) {
        failures++;
        setConnection("retrying", "reconnecting…");
        await sleep(Math.min(10000, 250 * 2 ** Math.min(failures, 6)));
        continue;
      }
      failures = 0;
      handle = response.headers.get("electric-handle") || handle;
      offset = response.headers.get("electric-offset") || offset;
      cursor = response.headers.get("electric-cursor") || cursor;
      let row = null;
      let upToDate = false;
      for (const message of Array.isArray(messages) ? messages : []) {
        if (message && isObject(message.value)) row = { ...(row || {}), ...message.value };
        if (message && message.headers && message.headers.control === "up-to-date") upToDate = true;
      }
      if (row) applyRow(row);
      if (upToDate) live = true;
      setConnection("live", "live");
    }
  }

  // ------------------------------------------------------------------ streams

  const streams = new Map();

  function followStream(key) {
    if (streams.has(key) || stopped) return;
    const panel = element("section", "stream");
    panel.dataset.key = key;
    const head = element("header", "stream-head");
    const name = element("span", "stream-key", key);
    const count = element("span", "stream-count", "0 chunks");
    const status = element("span", "stream-state", "waiting");
    head.append(name, count, status);
    const lines = element("ol", "stream-lines");
    panel.append(head, lines);
    byId("streams").append(panel);
    byId("streams-section").hidden = false;
    const stream = { key, panel, lines, count, status, received: 0, last: null };
    streams.set(key, stream);
    if (streams.size > MAX_STREAMS) {
      status.textContent = "not followed";
      status.dataset.state = "idle";
      const note = element("li", "stream-note");
      note.textContent = `This page follows ${MAX_STREAMS} streams at once (a browser keeps 6 connections per server).`;
      lines.append(note);
      return;
    }
    readStream(stream);
  }

  function addChunk(stream, id, data) {
    let value = data;
    try {
      value = JSON.parse(data);
    } catch (ignored) {
      // v1 chunks are JSON; anything else is shown as it came
    }
    const text = typeof value === "string" ? value : JSON.stringify(value);
    const atBottom = stream.lines.scrollTop + stream.lines.clientHeight >= stream.lines.scrollHeight - 4;
    const line = element("li", "chunk");
    line.dataset.id = id;
    line.append(element("span", "chunk-id", id), element("span", "chunk-text", text));
    stream.lines.append(line);
    while (stream.lines.childElementCount > STREAM_LINES) stream.lines.firstElementChild.remove();
    stream.received++;
    stream.count.textContent = stream.received === 1 ? "1 chunk" : `${formatCount(stream.received)} chunks`;
    if (atBottom) stream.lines.scrollTop = stream.lines.scrollHeight;
  }

  async function readStream(stream) {
    const url = `/realtime/v1/streams/${runPath}/${encodeURIComponent(stream.key)}`;
    let failures = 0;
    while (!stopped) {
      const headers = { Authorization: "Bearer " + token, Accept: "text/event-stream" };
      if (stream.last !== null) headers["Last-Event-ID"] = stream.last;
      let finished = false;
      try {
        const response = await fetch(url, { headers, cache: "no-store" });
        if (response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429) {
          stream.status.textContent = await refusal(response);
          stream.status.dataset.state = "failed";
          return;
        }
        if (!response.ok || !response.body) throw new Error(`${response.status}`);
        stream.status.textContent = "live";
        stream.status.dataset.state = "live";
        failures = 0;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        let id = null;
        let data = [];
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let newline;
          while ((newline = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, newline).replace(/\r$/, "");
            buffer = buffer.slice(newline + 1);
            if (line === "") {
              if (data.length) {
                const eventId = id === null ? String(stream.received) : id;
                addChunk(stream, eventId, data.join("\n"));
                if (id !== null) stream.last = id;
              }
              id = null;
              data = [];
            } else if (line.startsWith(":")) {
              if (line.slice(1).trim() === "end") finished = true;
            } else {
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              let text = colon < 0 ? "" : line.slice(colon + 1);
              if (text.startsWith(" ")) text = text.slice(1);
              if (field === "id") id = text;
              else if (field === "data") data.push(text);
            }
          }
        }
      } catch (error) {
        failures++;
      }
      if (finished) {
        stream.status.textContent = "finished";
        stream.status.dataset.state = "finished";
        return;
      }
      stream.status.textContent = "reconnecting…";
      stream.status.dataset.state = "retrying";
      await sleep(Math.min(5000, 250 * 2 ** Math.min(failures, 5)));
    }
  }

  byId("run-id").textContent = runId;
  setConnection("connecting", "connecting…");
  followRun();
})();
