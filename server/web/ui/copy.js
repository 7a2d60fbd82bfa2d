// Copy buttons: the Clipboard API where the page may use it, else a selection.

import { h } from "./dom.js";
import { announce } from "./notify.js";

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // Permission refused: fall through to the selection way.
    }
  }
  const area = h("textarea", { readonly: true, class: "offscreen", "aria-hidden": "true" });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** copyButton("Copy token", () => token): a button that copies and says so. */
export function copyButton(label, text) {
  const button = h("button", { type: "button", class: "copy" }, label);
  let timer = null;
  button.addEventListener("click", async () => {
    const ok = await copyText(text());
    button.textContent = ok ? "Copied" : "Copy failed: select the text and copy it";
    announce(ok ? "Copied to the clipboard" : "Copy failed: select the text and copy it");
    window.clearTimeout(timer);
    timer = window.setTimeout(() => {
      button.textContent = label;
    }, 2500);
  });
  return button;
}
