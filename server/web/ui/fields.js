// Form controls with a label, an optional hint and an error slot each.
// An error is shown under its control, marked aria-invalid and linked with
// aria-describedby, so a screen reader reads it with the field.

import { h, uid } from "./dom.js";

function describe(f) {
  const ids = [f.hintEl && f.hintEl.id, f.errorEl.hidden ? null : f.errorEl.id].filter(Boolean);
  if (ids.length) f.control.setAttribute("aria-describedby", ids.join(" "));
  else f.control.removeAttribute("aria-describedby");
}

function requiredMark(required) {
  // Screen readers hear aria-required instead; the words are for the eye.
  return required ? h("span", { class: "required", "aria-hidden": "true" }, " (required)") : null;
}

/** Show *message* as this field's error, or clear it with "". */
export function setError(f, message) {
  f.errorEl.textContent = message || "";
  f.errorEl.hidden = !message;
  if (message) f.control.setAttribute("aria-invalid", "true");
  else f.control.removeAttribute("aria-invalid");
  describe(f);
}

/** A labelled control: {wrapper, control, label, errorEl, focus()}. */
export function field(label, control, { hint, required = false, className = "field" } = {}) {
  if (!control.id) control.id = uid("field");
  const hintEl = hint ? h("p", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  const errorEl = h("p", { class: "field-error", id: `${control.id}-error`, hidden: true });
  if (required) control.setAttribute("aria-required", "true");
  const labelEl = h("label", { for: control.id }, label);
  const f = { label, control, hintEl, errorEl, focus: () => control.focus() };
  f.wrapper = h("div", { class: className }, labelEl, requiredMark(required), hintEl, control,
    errorEl);
  describe(f);
  return f;
}

/** A <fieldset> with a legend around *content*, with its own hint and error slot. */
export function group(legend, content, { hint, required = false, className = "" } = {}) {
  const id = uid("group");
  const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  const errorEl = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
  const control = h(
    "fieldset",
    { id, class: `group ${className}`.trim() },
    h("legend", {}, legend, requiredMark(required)),
    hintEl,
    content,
    errorEl,
  );
  const f = { label: legend, control, hintEl, errorEl, wrapper: control };
  f.focus = () => {
    const first = control.querySelector("input, select, textarea, button");
    (first || control).focus();
  };
  describe(f);
  return f;
}

export function textInput(attrs = {}) {
  return h("input", { type: "text", autocomplete: "off", spellcheck: "false", ...attrs });
}

/** A write-only input: the browser neither fills it in nor offers to save it. */
export function secretInput(attrs = {}) {
  return h("input", {
    type: "password", autocomplete: "new-password", spellcheck: "false", ...attrs,
  });
}

/** select([["json", "JSON"], …]) */
export function select(options, attrs = {}) {
  return h(
    "select",
    attrs,
    options.map(([value, label]) => h("option", { value }, label)),
  );
}

/**
 * Radio buttons in a fieldset: radios("Mode", "mode", [["cloud", "Cloud"], …]).
 * Returns a group field with value(), set(value) and onChange(fn).
 */
export function radios(legend, name, options, { hint, required = false } = {}) {
  const groupName = uid(name);
  const inputs = options.map(([value, label, description]) => {
    const input = h("input", { type: "radio", name: groupName, value, id: uid(name) });
    const descId = description ? `${input.id}-desc` : null;
    if (descId) input.setAttribute("aria-describedby", descId);
    return {
      input,
      el: h(
        "div",
        { class: "choice" },
        input,
        h("label", { for: input.id }, label),
        description ? h("span", { class: "hint", id: descId }, description) : null,
      ),
    };
  });
  const f = group(legend, h("div", { class: "choices" }, inputs.map((i) => i.el)), {
    hint,
    required,
    className: "radios",
  });
  f.control.setAttribute("role", "radiogroup");
  if (required) f.control.setAttribute("aria-required", "true");
  f.value = () => (inputs.find((i) => i.input.checked) || { input: { value: "" } }).input.value;
  f.set = (value) => {
    for (const { input } of inputs) input.checked = input.value === value;
  };
  f.onChange = (fn) => {
    for (const { input } of inputs) input.addEventListener("change", fn);
  };
  f.focus = () => (inputs.find((i) => i.input.checked) || inputs[0]).input.focus();
  return f;
}

/** A checkbox with its label after it. */
export function checkbox(label, { hint } = {}) {
  const control = h("input", { type: "checkbox", id: uid("check") });
  const f = field(label, control, { hint, className: "field checkbox" });
  // Box first, then the label, as people expect for checkboxes.
  f.wrapper.prepend(control);
  return f;
}

/**
 * The list of errors at the top of a form: each names its field and moves
 * focus there when followed. show([{label, message, focus}]).
 */
export function errorSummary() {
  const list = h("ul");
  const title = h("h2", { id: uid("errors") }, "Please fix these fields");
  const el = h("div", { class: "error-summary", tabindex: "-1", hidden: true }, title, list);
  el.setAttribute("aria-labelledby", title.id);
  return {
    el,
    show(items, heading) {
      title.textContent = heading || "Please fix these fields";
      list.replaceChildren(
        ...items.map((item) =>
          h(
            "li",
            {},
            item.focus
              ? h("button", { type: "button", class: "link", onclick: item.focus }, item.label)
              : h("strong", {}, item.label),
            `: ${item.message}`,
          ),
        ),
      );
      el.hidden = false;
      el.focus();
    },
    clear() {
      el.hidden = true;
      list.replaceChildren();
    },
  };
}
