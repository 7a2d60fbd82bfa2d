// One connection at a glance: its health, its traffic over the last hour
// (charts), and its debug log (start/stop, a live list, entries opened to
// request and answer).  #/connections/con_…/activity

import { ApiError, call } from "./api.js";
import { lineChart } from "./charts.js";
import { h, replaceChildren, uid } from "./dom.js";
import { MODE_LABELS, ago, fullTime } from "./format.js";
import { announce, clearBanner, showBanner } from "./notify.js";
import { poll } from "./poll.js";

const TRAFFIC_POLL_MS = 10000;
const DEBUG_POLL_MS = 2000;

function message(err) {
  return err instanceof ApiError ? `${err.title}: ${err.detail}` : err.message;
}

export function healthBadge(conn) {
  const status = conn.status || "unknown";
  return h("span", { class: `badge ${status}` }, status);
}

function healthPanel(conn) {
  return h("section", { class: "panel health", "aria-labelledby": "health-title" },
    h("h2", { id: "health-title" }, "Health"),
    h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", {}, healthBadge(conn)),
      h("dt", {}, "Last checked"),
      h("dd", {}, conn.last_checked_at
        ? h("time", { datetime: conn.last_checked_at, title: fullTime(conn.last_checked_at) },
          ago(conn.last_checked_at))
        : "never"),
      h("dt", {}, "Schedule"),
      h("dd", {}, conn.http.health
        ? `every ${conn.http.health.interval_seconds} s` : "off (Test checks it once)"),
      conn.last_error ? [h("dt", {}, "Last error"), h("dd", { class: "reason" }, conn.last_error)]
        : null));
}

function trafficCharts(minutes) {
  const errorRate = minutes.map((m) => (m.requests ? (100 * m.errors) / m.requests : null));
  return [
    lineChart({ title: "Requests per minute", values: minutes.map((m) => m.requests),
      unit: "req/min" }),
    lineChart({ title: "Error rate", values: errorRate, unit: "%", digits: 1 }),
    lineChart({ title: "Latency p50", values: minutes.map((m) => m.p50_ms), unit: "ms" }),
    lineChart({ title: "Latency p99", values: minutes.map((m) => m.p99_ms), unit: "ms" }),
  ];
}

// Whose requests the charts count: a cluster's relays, naming any that did
// not answer in time (their requests are missing from the charts).
function trafficScope(relays) {
  if (!relays) return "The last hour, minute by minute.";
  const missing = relays.filter((r) => !r.answered).map((r) => r.ssh);
  const counted = relays.length - missing.length;
  const text = `The last hour, minute by minute, over ${counted} of the cluster's `
    + `${relays.length} relays.`;
  return missing.length
    ? `${text} Not answering (their requests are missing): ${missing.join(", ")}.`
    : text;
}

function headersText(headers) {
  return (headers || []).map(([name, value]) => `${name}: ${value}`).join("\n");
}

function entryView(entry) {
  const req = entry.request;
  const ans = entry.answer;
  const status = ans ? String(ans.status) : "failed";
  const ok = ans && ans.status < 400;
  return h("details", { class: "debug-entry", dataset: { entryId: String(entry.id) } },
    h("summary", {},
      h("time", { datetime: entry.at, title: fullTime(entry.at) },
        new Date(entry.at).toLocaleTimeString()),
      " ", h("strong", {}, req.method), " ",
      h("code", { class: "uri" }, req.url || req.relative), " ",
      h("span", { class: `badge ${ok ? "ok" : "failed"}` }, status),
      ` · ${Math.round(entry.elapsed_ms)} ms`,
      entry.retries ? ` · ${entry.retries} retries` : ""),
    h("div", { class: "exchange" },
      h("section", { "aria-label": "Request" },
        h("h3", {}, "Request"),
        h("pre", { class: "wire" }, `${req.method} ${req.url || req.relative}\n`
          + `${headersText(req.headers)}\n\n${req.body || ""}`)),
      h("section", { "aria-label": "Answer" },
        h("h3", {}, "Answer"),
        ans
          ? h("pre", { class: "wire" }, `${ans.status}\n${headersText(ans.headers)}\n\n`
            + `${ans.body || ""}`)
          : h("p", { class: "reason" }, entry.error || "no answer"))));
}

export function connectionActivityView(root, id) {
  const heading = h("h1", { tabindex: "-1" }, "Connection activity");
  const facts = h("p", { class: "lead" });
  const health = h("div");
  const charts = h("div", { class: "charts" });
  const scope = h("p", { class: "hint" }, trafficScope(null));
  const debugState = h("p", { class: "debug-state", role: "status" });
  const minutesId = uid("debug-minutes");
  const minutes = h("input", { id: minutesId, type: "number", min: "1", max: "60",
    value: "15", inputmode: "numeric" });
  const startButton = h("button", { type: "button", class: "primary" }, "Start debug log");
  const stopButton = h("button", { type: "button", hidden: true }, "Stop debug log");
  const entries = h("div", { class: "debug-entries", "aria-live": "polite" });
  const seen = new Set();

  const tabs = [
    { key: "traffic", label: "Traffic" },
    { key: "debug", label: "Debug" },
  ].map((t) => ({ ...t, tabId: uid("tab"), panelId: uid("panel") }));
  const tabButtons = tabs.map((t, i) => h("button", {
    type: "button", role: "tab", id: t.tabId, "aria-controls": t.panelId,
    "aria-selected": i === 0 ? "true" : "false", tabindex: i === 0 ? "0" : "-1",
  }, t.label));
  const panels = [
    h("section", { role: "tabpanel", id: tabs[0].panelId, "aria-labelledby": tabs[0].tabId },
      scope, charts),
    h("section", { role: "tabpanel", id: tabs[1].panelId, "aria-labelledby": tabs[1].tabId,
      hidden: true },
      h("p", { class: "hint" },
        "Records every request this connection makes and its answer (the first 8 KiB of "
        + "each body), with credentials, cookies and the connection's secrets masked."),
      debugState,
      h("div", { class: "debug-controls" },
        h("label", { for: minutesId }, "Minutes"), minutes, startButton, stopButton),
      entries),
  ];
  let selected = 0;
  function select(index, focus = false) {
    selected = index;
    tabButtons.forEach((b, i) => {
      b.setAttribute("aria-selected", i === index ? "true" : "false");
      b.tabIndex = i === index ? 0 : -1;
      panels[i].hidden = i !== index;
    });
    if (focus) tabButtons[index].focus();
  }
  tabButtons.forEach((b, i) => {
    b.addEventListener("click", () => select(i));
    b.addEventListener("keydown", (event) => {
      if (event.key === "ArrowRight") select((i + 1) % tabs.length, true);
      if (event.key === "ArrowLeft") select((i + tabs.length - 1) % tabs.length, true);
    });
  });

  async function refreshConnection() {
    const conn = await call("GET", `/v1/connections/${id}`);
    heading.textContent = `Activity: ${conn.name}`;
    replaceChildren(facts, MODE_LABELS[conn.mode] || conn.mode, " · ",
      h("code", { class: "uri" }, conn.http.base_uri), " · ",
      h("a", { href: `#/connections/${id}` }, "Edit settings"));
    replaceChildren(health, healthPanel(conn));
  }

  async function refreshTraffic() {
    try {
      await refreshConnection();
      const traffic = await call("GET", `/v1/connections/${id}/traffic`);
      replaceChildren(charts, trafficCharts(traffic.minutes));
      scope.textContent = trafficScope(traffic.relays);
      clearBanner();
    } catch (err) {
      showBanner(message(err));
    }
  }

  async function refreshDebug() {
    if (selected !== 1) return;
    try {
      const log = await call("GET", `/v1/connections/${id}/debug-log?limit=50`);
      if (log.active) {
        replaceChildren(debugState, "Recording until ",
          h("time", { datetime: log.window.until }, fullTime(log.window.until)), ".");
      } else {
        replaceChildren(debugState, log.window ? "Not recording (the window ended)."
          : "Not recording.");
      }
      startButton.hidden = log.active;
      stopButton.hidden = !log.active;
      // Newest first; entries already shown keep their open/closed state.
      for (const entry of [...log.entries].reverse()) {
        if (seen.has(entry.id)) continue;
        seen.add(entry.id);
        entries.prepend(entryView(entry));
      }
      if (!log.entries.length && !seen.size) {
        replaceChildren(entries, h("p", { class: "empty" }, "No requests recorded yet."));
      } else {
        for (const p of entries.querySelectorAll("p.empty")) p.remove();
      }
    } catch (err) {
      showBanner(message(err));
    }
  }

  startButton.addEventListener("click", async () => {
    startButton.disabled = true;
    try {
      await call("POST", `/v1/connections/${id}/debug`, { minutes: Number(minutes.value) });
      announce("Debug log started");
      await refreshDebug();
    } catch (err) {
      showBanner(message(err));
    } finally {
      startButton.disabled = false;
    }
  });
  stopButton.addEventListener("click", async () => {
    try {
      await call("DELETE", `/v1/connections/${id}/debug`);
      announce("Debug log stopped");
      await refreshDebug();
    } catch (err) {
      showBanner(message(err));
    }
  });
  tabButtons[1].addEventListener("click", refreshDebug);

  root.append(
    h("p", {}, h("a", { href: "#/connections" }, "← Connections")),
    heading, facts, health,
    h("div", { class: "tabs", role: "tablist", "aria-label": "Connection activity" }, tabButtons),
    ...panels,
  );
  const stopTraffic = poll(refreshTraffic, TRAFFIC_POLL_MS);
  const stopDebug = poll(refreshDebug, DEBUG_POLL_MS);
  return () => {
    stopTraffic();
    stopDebug();
  };
}
