// "Import from integrator.io": paste a connection's JSON export, preview what
// carries over and what does not (and why), then create it. The relay does
// the mapping (POST /v1/connections/import, first with dry_run=true).

import { ApiError, call } from "./api.js";
import { h, replaceChildren } from "./dom.js";
import { field, select, setError } from "./fields.js";

const AUTH_LABELS = {
  token: "Token", basic: "Basic", digest: "Digest", oauth2: "OAuth 2.0",
  cookie: "Cookie session", none: "None",
};

function problemList(errors) {
  return h("ul", { class: "import-errors" }, errors.map((e) =>
    h("li", {}, h("code", {}, e.field || "(export)"), `: ${e.message}`)));
}

function previewView(preview) {
  const c = preview.connection;
  const auth = c.http.auth ? AUTH_LABELS[c.http.auth.type] || c.http.auth.type : "None";
  return h("div", { class: "import-preview" },
    h("h3", {}, "Carried over"),
    h("dl", {},
      h("dt", {}, "Name"), h("dd", {}, c.name),
      h("dt", {}, "Mode"), h("dd", {}, c.mode === "on_premise" ? "On-premise" : "Cloud"),
      h("dt", {}, "Base URI"), h("dd", {}, h("code", {}, c.http.base_uri)),
      h("dt", {}, "Auth type"), h("dd", { class: "import-auth" }, auth)),
    h("h3", {}, "Not carried over"),
    preview.unmapped.length
      ? h("ul", { class: "import-unmapped" }, preview.unmapped.map((u) =>
        h("li", {}, h("code", {}, u.field), `: ${u.reason}`)))
      : h("p", {}, "Everything was carried over."));
}

/** Open the dialog; *onCreated(view)* runs after a connection is created. */
export function openImportDialog({ agents, onCreated }) {
  const titleId = "import-title";
  const json = field("Connection JSON", h("textarea", {
    rows: "10", spellcheck: "false", class: "import-json",
  }), {
    required: true,
    hint: "The connection as integrator.io exports it (an object with \"type\": \"http\").",
  });
  const agent = field("Agent", select([["", "None (cloud)"],
    ...agents.map((a) => [a.id, `${a.name} (${a.status})`])]), {
    hint: "For an on-premise connection (the export names an _agentId): the Sluice agent to use.",
  });
  const result = h("div", { class: "import-result", role: "status", "aria-live": "polite" });
  const previewButton = h("button", { type: "button" }, "Preview");
  const createButton = h("button", { type: "button", class: "primary", disabled: true }, "Create");
  const cancelButton = h("button", { type: "button" }, "Cancel");
  const dialog = h("dialog", { class: "import", "aria-labelledby": titleId },
    h("h2", { id: titleId }, "Import from integrator.io"),
    json.wrapper, agent.wrapper, result,
    h("div", { class: "actions" }, cancelButton, previewButton, createButton));

  let parsed = null;

  function path(dryRun) {
    const query = new URLSearchParams();
    if (agent.control.value) query.set("agent_id", agent.control.value);
    if (dryRun) query.set("dry_run", "true");
    const text = query.toString();
    return `/v1/connections/import${text ? `?${text}` : ""}`;
  }

  function read() {
    setError(json, "");
    try {
      const value = JSON.parse(json.control.value);
      if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error("object");
      return value;
    } catch {
      setError(json, "Not a JSON object: paste the whole export, from { to }.");
      json.focus();
      return null;
    }
  }

  function showProblem(err) {
    if (err instanceof ApiError && err.errors.length) {
      replaceChildren(result, h("h3", {}, "This export cannot be imported"),
        problemList(err.errors));
    } else {
      replaceChildren(result, h("p", { class: "field-error" }, err.message));
    }
  }

  async function preview() {
    createButton.disabled = true;
    parsed = read();
    if (!parsed) return;
    replaceChildren(result, h("p", { class: "pending" }, "Checking…"));
    try {
      replaceChildren(result, previewView(await call("POST", path(true), parsed)));
      createButton.disabled = false;
    } catch (err) {
      showProblem(err);
    }
  }

  async function create() {
    createButton.disabled = true;
    try {
      const answer = await call("POST", path(false), parsed);
      close();
      onCreated(answer.connection, answer.unmapped);
    } catch (err) {
      showProblem(err);
    }
  }

  function close() {
    dialog.close();
    dialog.remove();
  }

  previewButton.addEventListener("click", preview);
  createButton.addEventListener("click", create);
  cancelButton.addEventListener("click", close);
  for (const control of [json.control, agent.control]) {
    control.addEventListener("input", () => { createButton.disabled = true; });
  }
  dialog.addEventListener("cancel", (event) => {
    event.preventDefault();
    close();
  });
  document.body.append(dialog);
  dialog.showModal();
  json.focus();
}
