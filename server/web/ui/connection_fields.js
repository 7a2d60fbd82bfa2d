// The connection form's fields, grouped as the product guide's sections, and
// which of them show for the choices made (Mode, Send token via, token
// refresh, refresh method).

import { h, show, uid } from "./dom.js";
import { checkbox, field, group, radios, secretInput, select, textInput } from "./fields.js";
import { PING_BODY_METHODS } from "./connection_doc.js";
import { MEDIA_TYPES } from "./format.js";
import { rowsEditor } from "./rows.js";
import { AUTH_TYPES, buildAuthFields } from "./connection_auth.js";
import { buildTlsFields } from "./connection_tls.js";

const code = (text) => h("code", {}, text);

function section(title, ...content) {
  const id = uid("section");
  return h("section", { class: "form-section", "aria-labelledby": id },
    h("h2", { id }, title), content);
}

function textarea(attrs = {}) {
  return h("textarea", { rows: "3", spellcheck: "false", ...attrs });
}

export function buildFields({ editing }) {
  // -- B. general ------------------------------------------------------------
  const name = field("Name", textInput({ maxlength: "200" }), {
    required: true,
    hint: "A clear name to tell this connection apart when you pick it later.",
  });
  const applicationId = uid("application");
  const application = h("div", { class: "field static" },
    h("span", { class: "label", id: applicationId }, "Application"),
    h("p", { "aria-labelledby": applicationId }, "REST API"));
  const mode = radios("Mode", "mode", [
    ["cloud", "Cloud", "A publicly accessible API."],
    ["on_premise", "On-premise", "An API behind a firewall, reached through an agent."],
  ], { required: true });
  const agent = field("Agent", select([["", "Choose an agent…"]]), {
    required: true,
    hint: [
      "The agent installed in the API's network; its status is shown live. ",
      h("a", { href: "#/agents" }, "Manage agents"),
    ],
  });

  // -- C. application details ------------------------------------------------
  const baseUri = field("Base URI", textInput({ type: "url", inputmode: "url" }), {
    required: true,
    hint: ["The common part of every endpoint's URL, e.g. ",
      code("https://inventory.internal:8443/api"), "."],
  });
  const headers = rowsEditor({
    legend: "HTTP headers", item: "Header", keyLabel: "Name", valueLabel: "Value",
    addLabel: "Add header",
    hint: "Optional: only for APIs that need headers beyond the media type and the token.",
  });
  const mediaType = field("Media type", select(MEDIA_TYPES), {
    required: true,
    hint: "The format of request and response bodies; it sets Content-Type and Accept.",
  });

  // -- D. token auth ----------------------------------------------------------
  const authType = field("Auth type", select(AUTH_TYPES), {
    required: true,
    hint: "How the API knows the caller: the relay adds it to every request.",
  });
  const other = buildAuthFields({ editing });
  const tls = buildTlsFields({ editing });
  const token = field("Token", secretInput(), {
    required: !editing,
    hint: editing
      ? "Write-only. Leave it empty to keep the saved token unchanged."
      : "Write-only: stored encrypted (AES-256-GCM) and never shown again.",
  });
  const location = field("Send token via", select([
    ["header", "HTTP header"], ["url", "URL parameter"],
  ]), { required: true });
  const headerName = field("Header name", textInput(), {
    required: true,
    hint: "The header that carries the token, if the API expects one other than Authorization.",
  });
  const schemesId = uid("schemes");
  const scheme = field("Header scheme", textInput({ list: schemesId }), {
    hint: ["Bearer sends ", code("Authorization: Bearer <token>"),
      ". Leave empty to send the token alone."],
  });
  const schemes = h("datalist", { id: schemesId },
    ["Bearer", "Basic", "Token", "MAC"].map((s) => h("option", { value: s })));
  const paramName = field("Parameter name", textInput(), {
    required: true,
    hint: ["Requests are sent with ", code("?<parameter name>=<token>"), "."],
  });
  const refreshOn = checkbox("Configure token refresh", {
    hint: "For tokens that expire: on a 401 the relay asks for a new one and retries once.",
  });
  const refreshMethod = field("HTTP method", select(
    ["GET", "POST", "PUT", "PATCH"].map((m) => [m, m])), { required: true });
  const refreshUri = field("Relative URI", textInput(), {
    hint: ["Relative to the base URI. Handlebars placeholders such as ",
      code("{{connection.http.encrypted.refresh_token}}"), " may be used."],
  });
  const refreshHeaders = rowsEditor({
    legend: "HTTP headers", item: "Refresh header", keyLabel: "Name", valueLabel: "Value",
    addLabel: "Add header", hint: "Optional; placeholders may be used.",
  });
  const refreshBody = field("HTTP request body", textarea(), {
    hint: "Sent with POST only; placeholders may be used.",
  });
  const refreshMedia = field("Override media type", select(
    [["", "Same as the connection"], ...MEDIA_TYPES]));
  const tokenPath = field("Path to token field in HTTP response body", textInput(), {
    hint: ["e.g. ", code("access_token"), " or ", code("data.access_token"),
      ". No value there means the refresh failed."],
  });
  const refresh = group("Token refresh", [refreshMethod.wrapper, refreshUri.wrapper,
    refreshHeaders.wrapper, refreshBody.wrapper, refreshMedia.wrapper, tokenPath.wrapper],
  { className: "nested" });
  const refreshGroup = refresh.wrapper;

  // -- custom fields -------------------------------------------------------------
  const encrypted = rowsEditor({
    legend: "Encrypted", item: "Encrypted field", keyLabel: "Key", valueLabel: "Value",
    addLabel: "Add encrypted field", secret: true,
    hint: ["Passwords, refresh tokens: stored encrypted, never shown again. Templates use ",
      code("{{connection.http.encrypted.<key>}}"), "."],
  });
  const unencrypted = rowsEditor({
    legend: "Unencrypted", item: "Unencrypted field", keyLabel: "Key", valueLabel: "Value",
    addLabel: "Add unencrypted field",
    hint: ["Settings that are not secret, e.g. a client id: ",
      code("{{connection.http.unencrypted.<key>}}"), "."],
  });

  // -- E. test -------------------------------------------------------------------
  const pingMethod = field("HTTP method", select(
    ["GET", "HEAD", "POST", "PUT", "PATCH"].map((m) => [m, m])));
  const pingUri = field("Relative URI", textInput(), {
    required: true,
    hint: ["A resource to request, relative to the base URI, e.g. ", code("/health"),
      ". Needed to test the connection."],
  });
  const successPath = field("Path to success field in HTTP response body", textInput(), {
    hint: ["Only for APIs that report errors with status 200, e.g. ", code("ok"), " for Slack."],
  });
  const successValues = field("Success values", textarea(), {
    hint: "One per line. The value at the path must equal one of them exactly (case-sensitive).",
  });
  const pingBody = field("Ping request body", textarea(), {
    hint: ["For GraphQL or SOAP health checks, e.g. ", code('{"query": "{ health }"}'),
      "; placeholders may be used."],
  });
  const failPath = field("Path to failure field in HTTP response body", textInput(), {
    hint: "A 2xx answer fails when the value here is one of the failure values.",
  });
  const failValues = field("Failure values", textarea(), { hint: "One per line." });
  const errorPath = field("Path to error message in HTTP response body", textInput(), {
    hint: ["When the ping fails, the value here is the test's message, e.g. ",
      code("errors[0].message"), "."],
  });

  // -- traffic and health ----------------------------------------------------------
  const concurrency = field("Concurrency level", textInput({ type: "number", min: "1",
    max: "100", inputmode: "numeric" }), {
    hint: "At most this many requests in flight to the API (1-100). Empty: no cap.",
  });
  const queueTimeout = field("Queue timeout (seconds)", textInput({ type: "number", min: "0",
    step: "any" }), {
    hint: "How long a request over the cap waits for its turn before it is refused.",
  });
  const healthInterval = field("Health check every (seconds)", textInput({ type: "number",
    min: "30", inputmode: "numeric" }), {
    hint: "The relay pings the connection on this schedule (at least 30). Empty: off.",
  });
  const rateLimitOn = checkbox("Wait out rate limits", {
    hint: "Retry a request the API refused as too many, after the wait it names.",
  });
  const failStatus = field("Rate-limit status", textInput({ type: "number", min: "400",
    max: "599" }), { hint: "Usually 429." });
  const rlFailPath = field("Path to rate-limit field in a 200 answer", textInput(), {
    hint: ["For APIs that say it in the body, e.g. ", code("error"), "."],
  });
  const rlFailValues = field("Rate-limit values", textarea(), { hint: "One per line." });
  const retryHeader = field("Retry header", textInput(), {
    hint: ["Seconds or an HTTP-date, e.g. ", code("Retry-After"),
      ". Without one the relay backs off exponentially."],
  });
  const maxRetries = field("Most retries", textInput({ type: "number", min: "0", max: "10" }));
  const maxWait = field("Longest wait (seconds)", textInput({ type: "number", min: "1",
    step: "any" }));
  const rateLimit = group("Rate limits", [failStatus.wrapper, rlFailPath.wrapper,
    rlFailValues.wrapper, retryHeader.wrapper, maxRetries.wrapper, maxWait.wrapper],
  { className: "nested" });

  // -- what shows when -------------------------------------------------------------
  function sync() {
    show(agent.wrapper, mode.value() === "on_premise");
    const type = authType.control.value;
    const isToken = type === "token";
    const viaHeader = location.control.value === "header";
    show(token.wrapper, isToken);
    show(location.wrapper, isToken);
    show(headerName.wrapper, isToken && viaHeader);
    show(scheme.wrapper, isToken && viaHeader);
    show(paramName.wrapper, isToken && !viaHeader);
    show(refreshOn.wrapper, isToken);
    show(refreshGroup, isToken && refreshOn.control.checked);
    show(refreshBody.wrapper, refreshMethod.control.value === "POST");
    show(pingBody.wrapper, PING_BODY_METHODS.includes(pingMethod.control.value));
    show(rateLimit.wrapper, rateLimitOn.control.checked);
    other.sync(type);
  }
  mode.onChange(sync);
  other.onChange(sync);
  for (const c of [authType.control, location.control, refreshOn.control, refreshMethod.control,
    pingMethod.control, rateLimitOn.control]) {
    c.addEventListener("change", sync);
  }

  const sections = [
    section("General", name.wrapper, application, mode.wrapper, agent.wrapper),
    section("Application details", baseUri.wrapper, headers.wrapper, mediaType.wrapper),
    section("Authentication", authType.wrapper, token.wrapper, location.wrapper,
      headerName.wrapper, scheme.wrapper, schemes, paramName.wrapper, refreshOn.wrapper,
      refreshGroup, other.wrappers),
    section("Client certificate", tls.wrappers),
    section("Custom fields", h("p", { class: "hint" },
      "Values that templates in URIs, headers and bodies can refer to."),
    encrypted.wrapper, unencrypted.wrapper),
    section("Test the connection", h("p", { class: "hint" },
      "The ping request that Test sends before you save."),
    pingMethod.wrapper, pingUri.wrapper, pingBody.wrapper, successPath.wrapper,
    successValues.wrapper, failPath.wrapper, failValues.wrapper, errorPath.wrapper),
    section("Traffic and health", h("p", { class: "hint" },
      "What a fragile API can bear: how many requests at once, rate limits waited out, "
      + "and a health check on a schedule."),
    concurrency.wrapper, queueTimeout.wrapper, healthInterval.wrapper, rateLimitOn.wrapper,
    rateLimit.wrapper),
  ];

  const lines = (text) => text.split("\n").map((s) => s.trim()).filter(Boolean);

  return {
    sections,
    read() {
      return {
        name: name.control.value,
        mode: mode.value(),
        agentId: agent.control.value,
        baseUri: baseUri.control.value,
        headers: headers.rows(),
        mediaType: mediaType.control.value,
        authType: authType.control.value,
        ...other.read(),
        clientCertificate: tls.document(),
        tlsKeeps: tls.keepsSaved(),
        token: token.control.value,
        tokenSet: token.control.dataset.saved === "true",
        location: location.control.value,
        headerName: headerName.control.value,
        scheme: scheme.control.value,
        paramName: paramName.control.value,
        refreshOn: refreshOn.control.checked,
        refresh: {
          method: refreshMethod.control.value,
          relativeUri: refreshUri.control.value,
          headers: refreshHeaders.rows(),
          body: refreshBody.control.value,
          mediaType: refreshMedia.control.value,
          tokenPath: tokenPath.control.value,
        },
        encrypted: encrypted.rows(),
        unencrypted: unencrypted.rows(),
        ping: {
          method: pingMethod.control.value,
          relativeUri: pingUri.control.value,
          successPath: successPath.control.value,
          successValues: lines(successValues.control.value),
          body: pingBody.control.value,
          failPath: failPath.control.value,
          failValues: lines(failValues.control.value),
          errorPath: errorPath.control.value,
        },
        traffic: {
          concurrency: concurrency.control.value,
          queueTimeout: queueTimeout.control.value,
          healthInterval: healthInterval.control.value,
          rateLimitOn: rateLimitOn.control.checked,
          rateLimit: {
            failStatus: failStatus.control.value,
            failPath: rlFailPath.control.value,
            failValues: lines(rlFailValues.control.value),
            retryHeader: retryHeader.control.value,
            maxRetries: maxRetries.control.value,
            maxWait: maxWait.control.value,
          },
        },
      };
    },
    fill(v) {
      name.control.value = v.name;
      mode.set(v.mode);
      agent.control.value = v.agentId;
      baseUri.control.value = v.baseUri;
      headers.set(v.headers);
      mediaType.control.value = v.mediaType;
      authType.control.value = v.authType;
      other.fill(v);
      tls.fill(v.clientCertificateView);
      token.control.value = "";
      token.control.dataset.saved = String(v.tokenSet);
      token.control.placeholder = v.tokenSet ? "unchanged" : "";
      location.control.value = v.location;
      headerName.control.value = v.headerName;
      scheme.control.value = v.scheme;
      paramName.control.value = v.paramName;
      refreshOn.control.checked = v.refreshOn;
      refreshMethod.control.value = v.refresh.method;
      refreshUri.control.value = v.refresh.relativeUri;
      refreshHeaders.set(v.refresh.headers);
      refreshBody.control.value = v.refresh.body;
      refreshMedia.control.value = v.refresh.mediaType;
      tokenPath.control.value = v.refresh.tokenPath;
      encrypted.set(v.encrypted);
      unencrypted.set(v.unencrypted);
      pingMethod.control.value = v.ping.method;
      pingUri.control.value = v.ping.relativeUri;
      successPath.control.value = v.ping.successPath;
      successValues.control.value = v.ping.successValues.join("\n");
      pingBody.control.value = v.ping.body;
      failPath.control.value = v.ping.failPath;
      failValues.control.value = v.ping.failValues.join("\n");
      errorPath.control.value = v.ping.errorPath;
      const t = v.traffic;
      concurrency.control.value = t.concurrency;
      queueTimeout.control.value = t.queueTimeout;
      healthInterval.control.value = t.healthInterval;
      rateLimitOn.control.checked = t.rateLimitOn;
      failStatus.control.value = t.rateLimit.failStatus;
      rlFailPath.control.value = t.rateLimit.failPath;
      rlFailValues.control.value = t.rateLimit.failValues.join("\n");
      retryHeader.control.value = t.rateLimit.retryHeader;
      maxRetries.control.value = t.rateLimit.maxRetries;
      maxWait.control.value = t.rateLimit.maxWait;
      sync();
    },
    /** Agents for the drop-down, "name (online)"; the choice made is kept. */
    setAgents(agents) {
      const control = agent.control;
      const chosen = control.value;
      const options = [["", "Choose an agent…"],
        ...agents.map((a) => [a.id, `${a.name} (${a.status})`])];
      if (chosen && !agents.some((a) => a.id === chosen)) {
        options.push([chosen, `${chosen} (unknown)`]);
      }
      const same = options.length === control.options.length && options.every(
        ([value, label], i) =>
          control.options[i].value === value && control.options[i].text === label);
      if (same) return;
      control.replaceChildren(...options.map(([value, label]) => h("option", { value }, label)));
      control.value = chosen;
    },
    /** [API field path, field] for every place an error can be shown. */
    errorTargets() {
      const targets = [
        ["name", name], ["mode", mode], ["agent_id", agent],
        ["http.base_uri", baseUri], ["http.headers", headers.group],
        ["http.media_type", mediaType], ["http.auth.type", authType], ["http.auth", authType],
        ["http.auth.token", token], ["http.auth.location", location],
        ["http.auth.header_name", headerName], ["http.auth.scheme", scheme],
        ["http.auth.param_name", paramName], ["http.auth.refresh", refresh],
        ["http.auth.refresh.method", refreshMethod],
        ["http.auth.refresh.relative_uri", refreshUri],
        ["http.auth.refresh.headers", refreshHeaders.group],
        ["http.auth.refresh.body", refreshBody], ["http.auth.refresh.media_type", refreshMedia],
        ["http.auth.refresh.token_path", tokenPath],
        ["http.encrypted", encrypted.group], ["http.unencrypted", unencrypted.group],
        ["http.ping", pingUri], ["http.ping.method", pingMethod],
        ["http.ping.relative_uri", pingUri], ["http.ping.success_path", successPath],
        ["http.ping.success_values", successValues], ["http.ping.body", pingBody],
        ["http.ping.fail_path", failPath], ["http.ping.fail_values", failValues],
        ["http.ping.error_path", errorPath],
        ["http.concurrency_level", concurrency], ["http.queue_timeout_seconds", queueTimeout],
        ["http.health", healthInterval], ["http.health.interval_seconds", healthInterval],
        ["http.rate_limit", rateLimit], ["http.rate_limit.fail_status", failStatus],
        ["http.rate_limit.fail_path", rlFailPath], ["http.rate_limit.fail_values", rlFailValues],
        ["http.rate_limit.retry_header", retryHeader],
        ["http.rate_limit.max_retries", maxRetries],
        ["http.rate_limit.max_wait_seconds", maxWait],
      ];
      const rowTargets = (path, editor) => editor.rows().flatMap((row, i) => [
        [`${path}[${i}].name`, row.keyField], [`${path}[${i}].value`, row.valueField],
      ]);
      const keyTargets = (path, editor) => editor.rows().filter((row) => row.key.trim())
        .map((row) => [`${path}.${row.key.trim()}`, row.valueField]);
      return [
        ...targets,
        ...other.errorTargets(authType.control.value),
        ...tls.errorTargets(),
        ...rowTargets("http.headers", headers),
        ...rowTargets("http.auth.refresh.headers", refreshHeaders),
        ...keyTargets("http.encrypted", encrypted),
        ...keyTargets("http.unencrypted", unencrypted),
      ];
    },
    /** Empty every write-only input (after saving). */
    forgetSecrets() {
      token.control.value = "";
      other.forgetSecrets();
      tls.forgetSecrets();
      for (const row of encrypted.rows()) row.valueField.control.value = "";
    },
  };
}
