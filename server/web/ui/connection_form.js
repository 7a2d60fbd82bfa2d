// The REST API connection form, section by section as the product guide
// lays it out (B general, C application details, D token auth, E test), plus
// the custom fields templates use. Test runs on the unsaved form; Save
// creates or updates; each error from the API is shown at its field.

import { ApiError, call } from "./api.js";
import { keepsSavedSecrets, emptyValues, fromView, toDocument } from "./connection_doc.js";
import { h, replaceChildren } from "./dom.js";
import { buildFields } from "./connection_fields.js";
import { errorSummary, setError } from "./fields.js";
import { testSummary } from "./format.js";
import { setFlash, showBanner } from "./notify.js";
import { poll } from "./poll.js";

const AGENT_POLL_MS = 2000;

/** "http.headers[1].name" -> "http.headers[1]" -> "http.headers" -> "http" -> null */
function parentPath(path) {
  const shorter = path.replace(/(\.[^.[\]]+|\[\d+\])$/, "");
  return shorter === path ? null : shorter;
}

function resultView(result) {
  const ok = result.ok;
  return h(
    "div",
    { class: `test-result ${ok ? "ok" : "failed"}` },
    h("h3", {}, ok ? "Test passed" : "Test failed"),
    h(
      "dl",
      {},
      h("dt", {}, "Result"), h("dd", { class: "result-word" }, ok ? "ok" : "failed"),
      h("dt", {}, "Status"), h("dd", {}, result.status ?? "no answer"),
      h("dt", {}, "Time"), h("dd", {}, `${Math.round(result.elapsed_ms)} ms`),
      result.message ? [h("dt", {}, ok ? "Details" : "Reason"), h("dd", {}, result.message)] : null,
    ),
  );
}

export function connectionFormView(root, id) {
  const editing = Boolean(id);
  let saved = null; // the view being edited
  let initialDoc = null;
  let stopped = false;
  const title = editing ? "Edit connection" : "Create connection";
  const heading = h("h1", { tabindex: "-1", id: "form-title" }, title);
  const status = h("p", { class: "lead" }, "Loading…");
  root.append(heading, status);

  const f = buildFields({ editing });
  const errors = errorSummary();
  const testResult = h("div", { class: "test-slot", role: "status", "aria-live": "polite" });
  const testButton = h("button", { type: "button" }, "Test");
  const saveButton = h("button", { type: "submit", class: "primary" }, "Save");
  const form = h(
    "form",
    { class: "connection-form", novalidate: true, "aria-labelledby": "form-title" },
    errors.el,
    f.sections,
    testResult,
    h("div", { class: "actions sticky" },
      testButton, saveButton, h("a", { href: "#/connections", class: "button quiet" }, "Cancel")),
  );

  function clearErrors() {
    errors.clear();
    for (const [, field] of f.errorTargets()) setError(field, "");
  }

  /** Show each {field, message} at its field (or the nearest enclosing one). */
  function showErrors(list, heading = "Please fix these fields") {
    const targets = new Map(f.errorTargets());
    const items = [];
    for (const { field: path, message } of list) {
      let at = path;
      while (at && !targets.has(at)) at = parentPath(at);
      const target = at ? targets.get(at) : null;
      if (target) {
        const previous = target.errorEl.hidden ? "" : `${target.errorEl.textContent}; `;
        setError(target, previous + message);
        items.push({ label: target.label, message, focus: () => target.focus() });
      } else {
        items.push({ label: path || "Connection", message });
      }
    }
    errors.show(items, heading);
  }

  function showProblem(err) {
    if (err instanceof ApiError && err.errors.length) {
      showErrors(err.errors);
    } else if (err instanceof ApiError) {
      errors.show([{ label: err.title, message: err.detail || `HTTP ${err.status}` }],
        "The relay refused this");
    } else {
      showBanner(err.message);
    }
  }

  async function runTest() {
    clearErrors();
    replaceChildren(testResult, h("p", { class: "pending" }, "Testing…"));
    testButton.disabled = true;
    try {
      const values = f.read();
      let result;
      if (editing && keepsSavedSecrets(values)) {
        if (JSON.stringify(toDocument(values, { saved })) !== initialDoc) {
          replaceChildren(testResult, h("p", { class: "notice" },
            "The relay never sends saved secrets back, so changed settings can be tested only "
            + "with the token and encrypted values entered again. Enter them, or Save first "
            + "and then test."));
          return;
        }
        result = await call("POST", `/v1/connections/${id}/test`);
      } else {
        result = await call("POST", "/v1/connections/test", toDocument(values, { forTest: true }));
      }
      replaceChildren(testResult, resultView(result));
    } catch (err) {
      replaceChildren(testResult);
      showProblem(err);
    } finally {
      testButton.disabled = false;
    }
  }

  async function save(event) {
    event.preventDefault();
    clearErrors();
    saveButton.disabled = true;
    try {
      const document = toDocument(f.read(), { saved });
      const view = editing
        ? await call("PATCH", `/v1/connections/${id}`, document)
        : await call("POST", "/v1/connections", document);
      f.forgetSecrets();
      let note = "";
      if (view.http.ping) {
        // Record a test of what was saved, so the list shows its result.
        try {
          const result = await call("POST", `/v1/connections/${view.id}/test`);
          note = ` Test ${result.ok ? "passed" : "failed"} (${testSummary(result)}).`;
        } catch {
          note = "";
        }
      }
      setFlash(`Saved connection ${view.name}.${note}`);
      window.location.hash = "#/connections";
    } catch (err) {
      showProblem(err);
    } finally {
      saveButton.disabled = false;
    }
  }

  testButton.addEventListener("click", runTest);
  form.addEventListener("submit", save);

  async function load() {
    try {
      const agentsAnswer = await call("GET", "/v1/agents");
      let values = emptyValues();
      if (editing) {
        saved = await call("GET", `/v1/connections/${id}`);
        values = fromView(saved);
        heading.textContent = `Edit connection ${saved.name}`;
      }
      if (stopped) return;
      f.setAgents(agentsAnswer.agents);
      f.fill(values);
      initialDoc = JSON.stringify(toDocument(f.read(), { saved }));
      status.textContent = "A REST API connection: where the API is, how to authenticate, and "
        + "how to test it. Fields marked (required) must be filled in.";
      root.append(form);
      stopPolling = poll(async () => {
        try {
          f.setAgents((await call("GET", "/v1/agents")).agents);
        } catch {
          // The list keeps the last statuses; the next poll tries again.
        }
      }, AGENT_POLL_MS);
    } catch (err) {
      status.textContent = err instanceof ApiError && err.status === 404
        ? "No such connection: it may have been deleted."
        : err.message;
    }
  }

  let stopPolling = () => {};
  load();
  return () => {
    stopped = true;
    stopPolling();
  };
}
