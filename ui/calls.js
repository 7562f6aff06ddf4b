// Live calls: GET /v1/calls/stream, one event per call as it completes
// (its dispatch record, read as a scan would read it for this caller),
// newest first; each row opens the full record.

import { badge, fill, h, ms, notice, recordLink, when } from "./dom.js";

// Rows kept on screen.
const KEPT = 200;

export async function render(view) {
  const state = h("p", { id: "stream-state", role: "status" }, "Connecting…");
  const rows = h("tbody", { id: "live-rows" });
  const notes = h("div", { "aria-live": "polite" });
  fill(
    view,
    h("h1", {}, "Live calls"),
    h("p", { class: "hint" }, "Calls appear here as they complete; earlier ones are on the Audit page."),
    state,
    notes,
    h(
      "div",
      { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Live calls" },
      h(
        "table",
        {},
        h("caption", {}, "Completed calls, newest first"),
        h(
          "thead",
          {},
          h("tr", {}, ["Finished", "Tool", "Category", "Caller", "Agent", "Status", "Latency", "Record"].map((name) => h("th", { scope: "col" }, name))),
        ),
        rows,
      ),
    ),
  );
  const stream = new EventSource("/v1/calls/stream");
  stream.addEventListener("open", () => {
    state.textContent = "Live: connected.";
    state.dataset.state = "open";
  });
  stream.addEventListener("error", () => {
    // The browser reconnects by itself, unless the server refused.
    const closed = stream.readyState === EventSource.CLOSED;
    state.textContent = closed ? "Disconnected: reload the page to try again." : "Reconnecting…";
    state.dataset.state = closed ? "closed" : "connecting";
  });
  stream.addEventListener("call", (event) => {
    const { key, value } = JSON.parse(event.data);
    rows.prepend(row(key, value));
    while (rows.children.length > KEPT) rows.lastElementChild.remove();
  });
  for (const kind of ["lagged", "unreadable"]) {
    stream.addEventListener(kind, (event) => notes.replaceChildren(notice("info", event.data)));
  }
  return () => stream.close();
}

function row(key, call) {
  const kind = call.status === "succeeded" ? "good" : call.status === "failed" ? "bad" : "neutral";
  return h(
    "tr",
    { "data-key": key },
    [
      when(call.finished_at_ms),
      h("code", {}, call.tool),
      call.category,
      call.caller || "(local)",
      call.agent_id || "—",
      badge(call.status, kind),
      ms(call.latency_ms),
      recordLink(key),
    ].map((cell) => h("td", {}, cell)),
  );
}
