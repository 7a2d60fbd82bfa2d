// A modal confirmation (native <dialog>: focus stays inside, Escape cancels).

import { h } from "./dom.js";

/**
 * await confirmAction({title, message, confirm: "Delete"}) -> true when confirmed.
 * Focus starts on Cancel, so Enter never destroys anything by accident.
 */
export function confirmAction({ title, message, confirm, danger = true }) {
  return new Promise((resolve) => {
    const titleId = "confirm-title";
    const cancelButton = h("button", { type: "button", onclick: () => close(false) }, "Cancel");
    const okButton = h(
      "button",
      { type: "button", class: danger ? "danger" : "primary", onclick: () => close(true) },
      confirm,
    );
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": titleId, "aria-describedby": "confirm-message" },
      h("h2", { id: titleId }, title),
      h("p", { id: "confirm-message" }, message),
      h("div", { class: "actions" }, cancelButton, okButton),
    );
    let settled = false;
    function close(result) {
      if (settled) return;
      settled = true;
      dialog.close();
      dialog.remove();
      resolve(result);
    }
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancelButton.focus();
  });
}
