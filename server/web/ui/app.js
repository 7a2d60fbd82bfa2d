// The console's entry point: a hash router between the views, and sign-out.
//   #/agents              agents with live status
//   #/connections         connections with their last test
//   #/connections/new     the connection form (create)
//   #/connections/con_…   the connection form (edit)
//   #/connections/con_…/activity   health, traffic charts and the debug log

import { signOut } from "./api.js";
import { agentsView } from "./agents.js";
import { connectionActivityView } from "./connection_activity.js";
import { connectionsView } from "./connections.js";
import { connectionFormView } from "./connection_form.js";
import { clearBanner } from "./notify.js";

const ROUTES = [
  { pattern: /^#\/agents$/, nav: "agents", title: "Agents", view: (root) => agentsView(root) },
  {
    pattern: /^#\/connections$/,
    nav: "connections",
    title: "Connections",
    view: (root) => connectionsView(root),
  },
  {
    pattern: /^#\/connections\/new$/,
    nav: "connections",
    title: "Create connection",
    view: (root) => connectionFormView(root, null),
  },
  {
    pattern: /^#\/connections\/(con_[a-z0-9]+)$/,
    nav: "connections",
    title: "Edit connection",
    view: (root, id) => connectionFormView(root, id),
  },
  {
    pattern: /^#\/connections\/(con_[a-z0-9]+)\/activity$/,
    nav: "connections",
    title: "Connection activity",
    view: (root, id) => connectionActivityView(root, id),
  },
];

let stopCurrent = () => {};

function route() {
  const hash = window.location.hash;
  // In-page anchors such as the skip link are not routes.
  if (hash && !hash.startsWith("#/")) return;
  const match = ROUTES.map((r) => [r, r.pattern.exec(hash)]).find(([, m]) => m);
  if (!match) {
    window.location.replace("#/agents");
    return;
  }
  const [spec, found] = match;
  stopCurrent();
  clearBanner();
  const main = document.getElementById("main");
  main.replaceChildren();
  document.title = `${spec.title} · Sluice console`;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === spec.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  stopCurrent = spec.view(main, found[1]) || (() => {});
  // Move focus to the new view's heading, as a page load would.
  const heading = main.querySelector("h1");
  if (heading) heading.focus({ preventScroll: true });
}

document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  window.location.reload();
});
window.addEventListener("hashchange", route);
route();
