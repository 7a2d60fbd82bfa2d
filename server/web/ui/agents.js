// The agents page: every agent with its live status (polled every 2 s),
// create, rotate token, delete.

import { ApiError, NetworkError, call } from "./api.js";
import { tokenPanel } from "./agent_install.js";
import { confirmAction } from "./dialogs.js";
import { h, replaceChildren } from "./dom.js";
import { errorSummary, field, setError, textInput } from "./fields.js";
import { ago, fullTime } from "./format.js";
import { announce, clearBanner, showBanner } from "./notify.js";
import { poll } from "./poll.js";

const POLL_MS = 2000;

let relayInfo = null;

/** GET /v1/relay ({ssh_fingerprint, version}) once per page load; {} when the relay has none. */
async function loadRelayInfo() {
  if (!relayInfo) {
    try {
      relayInfo = await call("GET", "/v1/relay");
    } catch {
      relayInfo = {};
    }
  }
  return relayInfo;
}

const COLUMNS = [
  "Name", "Status", "Replicas", "Peer address", "Agent version", "Connected since",
  "Last seen", "Actions",
];

/** Text for a time cell, with the full time in a <time> element. */
function timeCell(cell, iso, nowText) {
  if (nowText) {
    replaceChildren(cell, nowText);
    return;
  }
  replaceChildren(cell, iso ? h("time", { datetime: iso, title: fullTime(iso) }, ago(iso)) : "—");
}

function statusBadge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

export function agentsView(root) {
  const summary = h("p", { class: "summary", "aria-live": "polite" }, "Loading agents…");
  const panelSlot = h("div");
  const rows = new Map(); // agent id -> {tr, cells}
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "list agents" },
    h("caption", { class: "visually-hidden" }, "Agents and their status"),
    h("thead", {}, h("tr", {}, COLUMNS.map((c) => h("th", { scope: "col" }, c)))),
    tbody,
  );
  const empty = h("p", { class: "empty", hidden: true },
    "No agents yet. Create one, then install it inside the private network.");

  // -- create ------------------------------------------------------------------
  const name = field("Agent name", textInput({ name: "name", maxlength: "200" }), {
    required: true,
    hint: "Where it runs, e.g. warehouse-dc1.",
  });
  const errors = errorSummary();
  const createButton = h("button", { type: "submit", class: "primary" }, "Create agent");
  const createForm = h(
    "form",
    { class: "panel create-agent", novalidate: true, "aria-label": "Create an agent" },
    h("h2", {}, "Create an agent"),
    errors.el,
    h("div", { class: "inline" }, name.wrapper, createButton),
  );
  createForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    setError(name, "");
    errors.clear();
    createButton.disabled = true;
    try {
      const agent = await call("POST", "/v1/agents", { name: name.control.value });
      name.control.value = "";
      await showToken(agent, agent.token, false);
      await refresh();
    } catch (err) {
      if (err instanceof ApiError && err.errors.length) {
        const message = err.errors.map((e) => e.message).join("; ");
        setError(name, message);
        errors.show([{ label: "Agent name", message, focus: () => name.control.focus() }]);
      } else {
        showBanner(err.message);
      }
    } finally {
      createButton.disabled = false;
    }
  });

  async function showToken(agent, token, rotated) {
    const info = await loadRelayInfo();
    const panel = tokenPanel({
      agent,
      token,
      rotated,
      fingerprint: info.ssh_fingerprint,
      onDone: () => {
        panel.remove();
        createForm.querySelector("h2").focus();
      },
    });
    replaceChildren(panelSlot, panel);
    panel.querySelector("h2").focus();
  }

  // -- actions -----------------------------------------------------------------
  async function rotate(agent) {
    const ok = await confirmAction({
      title: `Rotate the token of ${agent.name}?`,
      message: "The current token stops working at once and its live tunnels close. "
        + "The agent needs the new token to connect again.",
      confirm: "Rotate token",
    });
    if (!ok) return;
    try {
      const answer = await call("POST", `/v1/agents/${agent.id}/rotate-token`);
      await showToken(agent, answer.token, true);
      await refresh();
    } catch (err) {
      showBanner(err.message);
    }
  }

  async function remove(agent) {
    const ok = await confirmAction({
      title: `Delete agent ${agent.name}?`,
      message: "Its token stops working and its live tunnels close. This cannot be undone.",
      confirm: "Delete agent",
    });
    if (!ok) return;
    try {
      await call("DELETE", `/v1/agents/${agent.id}`);
      announce(`Agent ${agent.name} deleted`);
      await refresh();
    } catch (err) {
      showBanner(err instanceof ApiError ? `${err.title}: ${err.detail}` : err.message);
    }
  }

  // -- the live table ----------------------------------------------------------
  function rowFor(agent) {
    let row = rows.get(agent.id);
    if (!row) {
      const cells = COLUMNS.map((label) => h("td", { dataset: { label } }));
      cells[0] = h("th", { scope: "row", dataset: { label: "Name" } });
      const tr = h("tr", { dataset: { agentId: agent.id } }, cells);
      row = { tr, cells, agent };
      const current = row;
      replaceChildren(
        cells[7],
        h("div", { class: "row-actions" },
          h("button", { type: "button", onclick: () => rotate(current.agent),
            "aria-label": `Rotate token of ${agent.name}` }, "Rotate token"),
          h("button", { type: "button", class: "danger", onclick: () => remove(current.agent),
            "aria-label": `Delete ${agent.name}` }, "Delete")),
      );
      rows.set(agent.id, row);
    }
    return row;
  }

  function update(row, agent) {
    row.agent = agent;
    const [nameCell, status, replicas, peer, version, since, seen] = row.cells;
    const live = agent.replicas.filter((r) => !r.draining).length;
    nameCell.textContent = agent.name;
    nameCell.title = agent.id;
    if (status.textContent !== agent.status) replaceChildren(status, statusBadge(agent.status));
    replicas.textContent = String(live);
    peer.textContent = agent.peer || "—";
    version.textContent = agent.agent_version || "—";
    timeCell(since, agent.connected_since);
    timeCell(seen, agent.last_seen_at, agent.status === "online" ? "now" : null);
  }

  async function refresh() {
    try {
      const { agents } = await call("GET", "/v1/agents");
      clearBanner();
      const seen = new Set();
      agents.forEach((agent, index) => {
        const row = rowFor(agent);
        update(row, agent);
        seen.add(agent.id);
        // Keep the API's order without re-inserting rows that are in place
        // (re-inserting would take focus away from their buttons).
        const here = tbody.children[index];
        if (here !== row.tr) tbody.insertBefore(row.tr, here || null);
      });
      for (const [id, row] of rows) {
        if (!seen.has(id)) {
          row.tr.remove();
          rows.delete(id);
        }
      }
      const online = agents.filter((a) => a.status === "online").length;
      const text = `${agents.length} agent${agents.length === 1 ? "" : "s"}, ${online} online`;
      if (summary.textContent !== text) summary.textContent = text;
      empty.hidden = agents.length > 0;
      table.hidden = agents.length === 0;
    } catch (err) {
      if (err instanceof NetworkError) showBanner(`${err.message} Retrying…`);
      else showBanner(err.message);
    }
  }

  root.append(
    h("h1", { tabindex: "-1" }, "Agents"),
    h("p", { class: "lead" },
      "An agent runs inside a private network and dials out to this relay, so on-premise "
      + "connections can reach internal APIs without an inbound port."),
    panelSlot,
    createForm,
    h("section", { "aria-labelledby": "agents-list-title" },
      h("h2", { id: "agents-list-title" }, "All agents"),
      summary,
      empty,
      h("div", { class: "table-wrap" }, table)),
  );
  return poll(refresh, POLL_MS);
}
