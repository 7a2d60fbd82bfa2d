// The panel shown once after creating an agent or rotating its token: the
// token, a copy button, and ready-to-paste Docker and systemd commands.

import { h, uid } from "./dom.js";
import { copyButton } from "./copy.js";
import { field, textInput } from "./fields.js";

const RELAY_PLACEHOLDER = "RELAY_HOST:2222";
const FINGERPRINT_PLACEHOLDER = "SHA256:RELAY_FINGERPRINT";
const ALLOW_PLACEHOLDER = "INTERNAL_HOST:PORT";

/** A single-quoted shell word: 'it'\''s'. */
export function shellQuote(value) {
  return `'${String(value).replaceAll("'", "'\\''")}'`;
}

function allowRules(allow) {
  return allow.split(",").map((rule) => rule.trim()).filter(Boolean);
}

/** Write the token file; the same for Docker and systemd (docs/DEPLOY.md). */
function tokenFileLines(token) {
  return [
    "install -d -m 0755 /etc/sluice",
    `( umask 077; printf '%s' ${shellQuote(token)} > /etc/sluice/agent.token )`,
  ];
}

export function dockerCommands({ token, relay, fingerprint, allow }) {
  return [
    ...tokenFileLines(token),
    "chown 10001 /etc/sluice/agent.token",
    "docker run -d --name sluice-agent --restart unless-stopped \\",
    "  --init --stop-timeout 45 \\",
    `  -e SLUICE_AGENT_RELAY=${shellQuote(relay)} \\`,
    `  -e SLUICE_AGENT_RELAY_FINGERPRINT=${shellQuote(fingerprint)} \\`,
    `  -e SLUICE_AGENT_ALLOW=${shellQuote(allowRules(allow).join(","))} \\`,
    "  -v /etc/sluice/agent.token:/run/secrets/sluice_agent_token:ro \\",
    "  sluice-agent",
  ].join("\n");
}

export function systemdCommands({ token, relay, fingerprint, allow }) {
  // JSON strings are valid TOML basic strings for these one-line values.
  const toml = (value) => JSON.stringify(value);
  return [
    "# Needs sluice-agent and its unit installed first (docs/DEPLOY.md).",
    ...tokenFileLines(token),
    "cat > /etc/sluice/agent.toml <<'TOML'",
    `relay = [${toml(relay)}]`,
    `relay_fingerprint = ${toml(fingerprint)}`,
    `allow = [${allowRules(allow).map(toml).join(", ")}]`,
    "TOML",
    "systemctl enable --now sluice-agent.service",
  ].join("\n");
}

function snippet(title, hint, code, copyLabel, text) {
  const id = uid("snippet");
  return h(
    "div",
    { class: "snippet" },
    h("h3", { id }, title),
    hint ? h("p", { class: "hint" }, hint) : null,
    h("pre", { "aria-labelledby": id, tabindex: "0" }, code),
    copyButton(copyLabel, text),
  );
}

/**
 * tokenPanel({agent, token, rotated, fingerprint, onDone}): the token is in the
 * page only while this panel is; onDone removes it. Without the relay's
 * fingerprint the commands hold a placeholder the operator replaces.
 */
export function tokenPanel({ agent, token, rotated, fingerprint: known, onDone }) {
  const titleId = uid("token-title");
  const relay = field("Relay SSH address", textInput({ value: RELAY_PLACEHOLDER }), {
    hint: "host:port where agents reach the relay's SSH endpoint (not this web address).",
  });
  const fingerprintInput = textInput({ value: known || FINGERPRINT_PLACEHOLDER });
  const fingerprint = field("Relay fingerprint", fingerprintInput, {
    hint: ["The output of ", h("code", {}, "sluice-server fingerprint"), " on the relay."],
  });
  const allow = field("Allowed destinations", textInput({ value: ALLOW_PLACEHOLDER }), {
    hint: "Internal host:port rules the agent may open, separated by commas.",
  });
  const values = () => ({
    token,
    relay: relay.control.value.trim(),
    fingerprint: fingerprint.control.value.trim(),
    allow: allow.control.value,
  });
  const docker = h("code");
  const systemd = h("code");
  const render = () => {
    docker.textContent = dockerCommands(values());
    systemd.textContent = systemdCommands(values());
  };
  for (const f of [relay, fingerprint, allow]) f.control.addEventListener("input", render);
  render();

  const tokenId = uid("token");
  return h(
    "section",
    { class: "panel token-panel", "aria-labelledby": titleId },
    h(
      "h2",
      { id: titleId, tabindex: "-1" },
      rotated ? `New token for ${agent.name}` : `Agent ${agent.name} created`,
    ),
    h(
      "p",
      { class: "warning" },
      "Copy the access token now: it is shown only this once. The relay keeps only a hash of it.",
    ),
    rotated
      ? h("p", {}, "The old token no longer works; agents that used it were disconnected. "
          + "Give them this one.")
      : null,
    h(
      "div",
      { class: "token-row" },
      h("span", { class: "label", id: `${tokenId}-label` }, "Access token"),
      h("code", { class: "token", id: tokenId, "aria-labelledby": `${tokenId}-label` }, token),
      copyButton("Copy token", () => token),
    ),
    h("div", { class: "install-settings" }, relay.wrapper, fingerprint.wrapper, allow.wrapper),
    snippet("Docker", null, docker, "Copy Docker commands", () => docker.textContent),
    snippet("systemd", null, systemd, "Copy systemd commands", () => systemd.textContent),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "primary", onclick: onDone },
        "Done: I have copied the token")),
  );
}
