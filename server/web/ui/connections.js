// The connections page: each connection with its mode, agent, health, base
// URI and last test; test, activity, edit and delete; "+ Create connection"
// opens the form.

import { ApiError, call } from "./api.js";
import { healthBadge } from "./connection_activity.js";
import { confirmAction } from "./dialogs.js";
import { h, replaceChildren } from "./dom.js";
import { MODE_LABELS, ago, fullTime, testSummary } from "./format.js";
import { announce, clearBanner, showBanner, takeFlash } from "./notify.js";
import { poll } from "./poll.js";
import { openImportDialog } from "./import_dialog.js";

const AGENT_POLL_MS = 2000;
const COLUMNS = ["Name", "Mode", "Agent", "Health", "Base URI", "Last test", "Actions"];

function lastTestCell(cell, result) {
  if (!result) {
    replaceChildren(cell, h("span", { class: "muted" }, "never tested"));
    return;
  }
  replaceChildren(
    cell,
    h("span", { class: `badge ${result.ok ? "ok" : "failed"}` }, result.ok ? "ok" : "failed"),
    " ",
    testSummary(result),
    result.at
      ? [" · ", h("time", { datetime: result.at, title: fullTime(result.at) }, ago(result.at))]
      : null,
    !result.ok && result.message ? h("div", { class: "reason" }, result.message) : null,
  );
}

function healthCell(cell, conn) {
  replaceChildren(
    cell,
    healthBadge(conn),
    conn.last_checked_at
      ? [" · ", h("time", { datetime: conn.last_checked_at, title: fullTime(conn.last_checked_at) },
        ago(conn.last_checked_at))]
      : null,
    conn.status === "offline" && conn.last_error
      ? h("div", { class: "reason" }, conn.last_error) : null,
  );
}

export function connectionsView(root) {
  const flash = takeFlash();
  const notice = h("p", { class: "flash", role: "status", hidden: !flash }, flash || "");
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "list connections", hidden: true },
    h("caption", { class: "visually-hidden" }, "Connections"),
    h("thead", {}, h("tr", {}, COLUMNS.map((c) => h("th", { scope: "col" }, c)))),
    tbody,
  );
  const empty = h("p", { class: "empty", hidden: true },
    "No connections yet. Create one to reach a REST API, in the cloud or through an agent.");
  const agentCells = []; // [cell, agent id] kept current by the agent poll
  const healthCells = new Map(); // connection id -> cell, kept current by the same poll
  let agents = new Map();

  function agentCell(cell, agentId) {
    if (!agentId) {
      replaceChildren(cell, h("span", { class: "muted" }, "none (cloud)"));
      return;
    }
    const agent = agents.get(agentId);
    replaceChildren(
      cell,
      agent ? agent.name : agentId,
      " ",
      h("span", { class: `badge ${agent ? agent.status : "offline"}` },
        agent ? agent.status : "unknown"),
    );
  }

  async function test(conn, cell, button) {
    button.disabled = true;
    replaceChildren(cell, "Testing…");
    try {
      const result = await call("POST", `/v1/connections/${conn.id}/test`);
      lastTestCell(cell, { ...result, at: new Date().toISOString() });
      announce(`Test of ${conn.name}: ${result.ok ? "ok" : "failed"}`);
    } catch (err) {
      lastTestCell(cell, conn.last_test);
      showBanner(err.message);
    } finally {
      button.disabled = false;
    }
  }

  async function remove(conn) {
    const ok = await confirmAction({
      title: `Delete connection ${conn.name}?`,
      message: "Integrations that use it stop working. This cannot be undone.",
      confirm: "Delete connection",
    });
    if (!ok) return;
    try {
      await call("DELETE", `/v1/connections/${conn.id}`);
      announce(`Connection ${conn.name} deleted`);
      await load();
    } catch (err) {
      showBanner(err.message);
    }
  }

  function row(conn) {
    const cells = COLUMNS.map((label) => h("td", { dataset: { label } }));
    cells[0] = h("th", { scope: "row", dataset: { label: "Name" } },
      h("a", { href: `#/connections/${conn.id}` }, conn.name));
    cells[1].textContent = MODE_LABELS[conn.mode] || conn.mode;
    agentCell(cells[2], conn.agent_id);
    agentCells.push([cells[2], conn.agent_id]);
    healthCell(cells[3], conn);
    healthCells.set(conn.id, cells[3]);
    cells[4].append(h("code", { class: "uri" }, conn.http.base_uri));
    lastTestCell(cells[5], conn.last_test);
    const testButton = h("button", { type: "button", "aria-label": `Test ${conn.name}` }, "Test");
    testButton.addEventListener("click", () => test(conn, cells[5], testButton));
    cells[6].append(h("div", { class: "row-actions" },
      testButton,
      h("a", { class: "button", href: `#/connections/${conn.id}/activity`,
        "aria-label": `Activity of ${conn.name}` }, "Activity"),
      h("a", { class: "button", href: `#/connections/${conn.id}`,
        "aria-label": `Edit ${conn.name}` }, "Edit"),
      h("button", { type: "button", class: "danger", onclick: () => remove(conn),
        "aria-label": `Delete ${conn.name}` }, "Delete")));
    return h("tr", { dataset: { connectionId: conn.id } }, cells);
  }

  function importExport() {
    openImportDialog({
      agents: [...agents.values()],
      onCreated: async (view, unmapped) => {
        notice.textContent = `Imported connection ${view.name}`
          + (unmapped.length ? `; ${unmapped.length} field(s) not carried over.` : ".");
        notice.hidden = false;
        announce(notice.textContent);
        await load();
      },
    });
  }

  async function refreshAgents() {
    try {
      const answer = await call("GET", "/v1/agents");
      agents = new Map(answer.agents.map((a) => [a.id, a]));
      for (const [cell, agentId] of agentCells) agentCell(cell, agentId);
      if (healthCells.size) {
        const { connections } = await call("GET", "/v1/connections");
        for (const conn of connections) {
          const cell = healthCells.get(conn.id);
          if (cell) healthCell(cell, conn);
        }
      }
    } catch (err) {
      showBanner(err.message);
    }
  }

  async function load() {
    try {
      const { connections } = await call("GET", "/v1/connections");
      clearBanner();
      agentCells.length = 0;
      healthCells.clear();
      replaceChildren(tbody, connections.map(row));
      table.hidden = connections.length === 0;
      empty.hidden = connections.length > 0;
    } catch (err) {
      showBanner(err instanceof ApiError ? `${err.title}: ${err.detail}` : err.message);
    }
  }

  root.append(
    h("div", { class: "title-row" },
      h("h1", { tabindex: "-1" }, "Connections"),
      h("div", { class: "row-actions" },
        h("button", { type: "button", onclick: importExport }, "Import from integrator.io"),
        h("a", { class: "button primary", href: "#/connections/new" }, "+ Create connection"))),
    h("p", { class: "lead" },
      "REST API connections: where an API is, how to authenticate to it, and whether it "
      + "is reached directly (cloud) or through an agent (on-premise)."),
    notice,
    empty,
    h("div", { class: "table-wrap" }, table),
  );
  // Agents first, so the first rows already show their agents' names.
  let stopPolling = () => {};
  let stopped = false;
  refreshAgents().then(load).then(() => {
    if (!stopped) stopPolling = poll(refreshAgents, AGENT_POLL_MS);
  });
  return () => {
    stopped = true;
    stopPolling();
  };
}
