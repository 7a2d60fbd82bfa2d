// An editable list of name/value rows (HTTP headers, custom fields), with
// add and remove buttons. Every input has its own label ("Header 2 value").

import { h } from "./dom.js";
import { field, group, secretInput, textInput } from "./fields.js";

/**
 * rowsEditor({legend, item: "Header", keyLabel: "Name", valueLabel: "Value",
 *             addLabel: "Add header", secret: false, hint})
 * -> {wrapper, group, rows(), set(list)}; list items are {key, value, saved}:
 * a saved secret row keeps its key fixed and its value write-only.
 */
export function rowsEditor({ legend, item, keyLabel, valueLabel, addLabel, secret = false, hint }) {
  let rows = [];
  const list = h("div", { class: "rows-list" });
  const addButton = h("button", { type: "button", class: "add" }, `+ ${addLabel}`);
  const heads = h(
    "div",
    { class: "rows-head", "aria-hidden": "true", hidden: true },
    h("span", {}, keyLabel),
    h("span", {}, valueLabel),
  );
  const g = group(legend, [heads, list, addButton], { hint, className: "rows" });

  function labelRow(row, index) {
    const n = index + 1;
    for (const [f, part] of [[row.keyField, keyLabel], [row.valueField, valueLabel]]) {
      f.label = `${item} ${n} ${part.toLowerCase()}`;
      f.wrapper.querySelector("label").textContent = f.label;
    }
    row.remove.textContent = "Remove";
    row.remove.setAttribute("aria-label", `Remove ${item.toLowerCase()} ${n}`);
  }

  function renumber() {
    rows.forEach(labelRow);
    heads.hidden = rows.length === 0;
  }

  function addRow({ key = "", value = "", saved = false } = {}) {
    const keyInput = textInput({ value: key, readonly: saved || null });
    const valueInput = secret
      ? secretInput({ placeholder: saved ? "unchanged" : null })
      : textInput({ value });
    const row = {
      saved,
      keyField: field(keyLabel, keyInput, { className: "field row-field" }),
      valueField: field(valueLabel, valueInput, { className: "field row-field" }),
      remove: h("button", { type: "button", class: "remove quiet" }, "Remove"),
    };
    row.el = h("div", { class: "row" }, row.keyField.wrapper, row.valueField.wrapper, row.remove);
    row.remove.addEventListener("click", () => {
      const index = rows.indexOf(row);
      rows.splice(index, 1);
      row.el.remove();
      renumber();
      const next = rows[index] || rows[index - 1];
      (next ? next.keyField.control : addButton).focus();
    });
    rows.push(row);
    list.append(row.el);
    renumber();
    return row;
  }

  addButton.addEventListener("click", () => addRow().keyField.control.focus());

  return {
    wrapper: g.wrapper,
    group: g,
    /** [{key, value, saved, keyField, valueField}] in page order. */
    rows: () =>
      rows.map((row) => ({
        key: row.keyField.control.value,
        value: row.valueField.control.value,
        saved: row.saved,
        keyField: row.keyField,
        valueField: row.valueField,
      })),
    set(entries) {
      rows = [];
      list.replaceChildren();
      for (const entry of entries) addRow(entry);
      renumber();
    },
  };
}
