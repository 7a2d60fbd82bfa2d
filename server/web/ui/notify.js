// Page-wide messages: the alert banner and the polite screen-reader announcer.

const banner = () => document.getElementById("banner");
const announcer = () => document.getElementById("announce");

/** Show an alert at the top of the page (e.g. the relay cannot be reached). */
export function showBanner(message) {
  const el = banner();
  if (el.textContent !== message) el.textContent = message;
  el.hidden = false;
}

export function clearBanner() {
  const el = banner();
  el.hidden = true;
  el.textContent = "";
}

/** Tell screen-reader users about something that changed without moving focus. */
export function announce(message) {
  const el = announcer();
  el.textContent = "";
  // A fresh text node after clearing makes repeated messages heard again.
  window.setTimeout(() => { el.textContent = message; }, 50);
}

let flash = null;

/** A message for the next view to show (e.g. "Saved" after leaving a form). */
export function setFlash(message) {
  flash = message;
}

export function takeFlash() {
  const message = flash;
  flash = null;
  return message;
}
