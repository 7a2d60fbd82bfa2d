// The connection document (DESIGN.md, "Connections") <-> the form's values.
// Pure functions: no DOM, no API calls.

/** The form's values for a new connection. */
export function emptyValues() {
  return {
    name: "",
    mode: "cloud",
    agentId: "",
    baseUri: "",
    headers: [],
    mediaType: "json",
    authType: "token",
    username: "",
    password: "",
    passwordSet: false,
    oauth: {
      grantType: "client_credentials", tokenUri: "", clientId: "", clientSecret: "",
      clientSecretSet: false, location: "basic_header", scope: "", audience: "", username: "",
      password: "", passwordSet: false, refreshToken: "", refreshTokenSet: false,
    },
    cookie: { uri: "", method: "POST", body: "", mediaType: "", successStatus: "200" },
    clientCertificateView: null, // as the relay shows it (secrets as *_set)
    clientCertificate: undefined, // what to send: object, null (remove), undefined (keep)
    tlsKeeps: false,
    token: "",
    tokenSet: false,
    location: "header",
    headerName: "Authorization",
    scheme: "Bearer",
    paramName: "",
    refreshOn: false,
    refresh: {
      method: "POST", relativeUri: "", headers: [], body: "", mediaType: "", tokenPath: "",
    },
    encrypted: [],
    unencrypted: [],
    ping: {
      method: "GET", relativeUri: "", successPath: "", successValues: [],
      body: "", failPath: "", failValues: [], errorPath: "",
    },
    traffic: {
      concurrency: "", queueTimeout: "30", healthInterval: "", rateLimitOn: false,
      rateLimit: {
        failStatus: "429", failPath: "", failValues: [], retryHeader: "Retry-After",
        maxRetries: "3", maxWait: "60",
      },
    },
  };
}

// Methods whose ping may carry a body (GraphQL, SOAP health checks).
export const PING_BODY_METHODS = ["POST", "PUT", "PATCH"];

const text = (value) => (value === null || value === undefined ? "" : String(value));

/** A number typed in a field, or null when left empty. */
function number(value) {
  const trimmed = String(value).trim();
  return trimmed === "" ? null : Number(trimmed);
}

/** The form's values for a saved connection, as GET /v1/connections/{id} shows it. */
export function fromView(view) {
  const values = emptyValues();
  const http = view.http;
  const auth = http.auth || {};
  Object.assign(values, {
    name: view.name,
    mode: view.mode,
    agentId: view.agent_id || "",
    baseUri: http.base_uri,
    headers: http.headers.map(({ name, value }) => ({ key: name, value })),
    mediaType: http.media_type,
    authType: auth.type || "none",
    clientCertificateView: (http.tls && http.tls.client_certificate) || null,
    tokenSet: Boolean(auth.token_set),
    location: auth.location || "header",
    headerName: auth.header_name || "Authorization",
    scheme: auth.location === "url" ? "Bearer" : auth.scheme || "",
    paramName: auth.param_name || "",
    refreshOn: Boolean(auth.refresh),
    encrypted: Object.keys(http.encrypted || {}).map((key) => ({ key, value: "", saved: true })),
    unencrypted: Object.entries(http.unencrypted || {}).map(([key, value]) => ({ key, value })),
  });
  if (auth.type === "basic" || auth.type === "digest") {
    values.username = auth.username || "";
    values.passwordSet = Boolean(auth.password_set);
  } else if (auth.type === "oauth2") {
    values.oauth = {
      grantType: auth.grant_type,
      tokenUri: auth.token_uri || "",
      clientId: auth.client_id || "",
      clientSecret: "",
      clientSecretSet: Boolean(auth.client_secret_set),
      location: auth.client_credentials_location || "basic_header",
      scope: auth.scope || "",
      audience: auth.audience || "",
      username: auth.username || "",
      password: "",
      passwordSet: Boolean(auth.password_set),
      refreshToken: "",
      refreshTokenSet: Boolean(auth.refresh_token_set),
    };
  } else if (auth.type === "cookie") {
    values.cookie = {
      uri: auth.uri || "",
      method: auth.method || "POST",
      body: auth.body || "",
      mediaType: auth.media_type || "",
      successStatus: String(auth.success_status || 200),
    };
  }
  if (auth.refresh) {
    const r = auth.refresh;
    values.refresh = {
      method: r.method,
      relativeUri: r.relative_uri || "",
      headers: (r.headers || []).map(({ name, value }) => ({ key: name, value })),
      body: r.body || "",
      mediaType: r.media_type || "",
      tokenPath: r.token_path || "",
    };
  }
  if (http.ping) {
    values.ping = {
      method: http.ping.method,
      relativeUri: http.ping.relative_uri || "",
      successPath: http.ping.success_path || "",
      successValues: http.ping.success_values || [],
      body: http.ping.body || "",
      failPath: http.ping.fail_path || "",
      failValues: http.ping.fail_values || [],
      errorPath: http.ping.error_path || "",
    };
  }
  const rl = http.rate_limit;
  values.traffic = {
    concurrency: text(http.concurrency_level),
    queueTimeout: text(http.queue_timeout_seconds ?? 30),
    healthInterval: http.health ? text(http.health.interval_seconds) : "",
    rateLimitOn: Boolean(rl),
    rateLimit: rl
      ? {
          failStatus: text(rl.fail_status),
          failPath: rl.fail_path || "",
          failValues: rl.fail_values || [],
          retryHeader: rl.retry_header || "",
          maxRetries: text(rl.max_retries),
          maxWait: text(rl.max_wait_seconds),
        }
      : values.traffic.rateLimit,
  };
  return values;
}

/** Rows left wholly empty are dropped; a value without a name is sent, so the API names it. */
function headerList(rows) {
  return rows
    .filter((row) => row.key.trim() || row.value.trim())
    .map((row) => ({ name: row.key.trim(), value: row.value }));
}

function pingBlank(ping) {
  return !ping.relativeUri.trim() && !ping.successPath.trim() && ping.successValues.length === 0
    && !ping.body && !ping.failPath.trim() && ping.failValues.length === 0
    && !ping.errorPath.trim();
}

/**
 * The document to send. With *saved* (the view being edited) it is a PATCH
 * body (RFC 7396): what was removed is sent as null, and a secret left empty
 * is left out, so the relay keeps it. *forTest* always includes the ping,
 * which the test needs.
 */
/** http.auth for the types beside token; an empty secret is left out (kept when editing). */
function otherAuth(v) {
  const put = (target, name, value) => {
    if (value) target[name] = value;
  };
  if (v.authType === "basic" || v.authType === "digest") {
    const auth = { type: v.authType, username: v.username.trim() };
    put(auth, "password", v.password);
    return auth;
  }
  if (v.authType === "oauth2") {
    const o = v.oauth;
    const auth = {
      type: "oauth2",
      grant_type: o.grantType,
      token_uri: o.tokenUri.trim(),
      client_id: o.clientId.trim() || null,
      client_credentials_location: o.location,
      scope: o.scope.trim() || null,
      audience: o.audience.trim() || null,
      username: o.grantType === "password" ? o.username.trim() || null : null,
    };
    put(auth, "client_secret", o.clientSecret);
    if (o.grantType === "password") put(auth, "password", o.password);
    if (o.grantType === "refresh_token") put(auth, "refresh_token", o.refreshToken);
    return auth;
  }
  if (v.authType === "cookie") {
    const c = v.cookie;
    const status = Number.parseInt(c.successStatus, 10);
    return {
      type: "cookie",
      uri: c.uri.trim(),
      method: c.method,
      body: c.method !== "GET" && c.body ? c.body : null,
      media_type: c.mediaType || null,
      success_status: Number.isNaN(status) ? c.successStatus : status,
    };
  }
  return { type: "none" };
}

export function toDocument(v, { saved = null, forTest = false } = {}) {
  const refresh = v.refresh;
  const auth = v.authType !== "token" ? otherAuth(v) : {
    type: "token",
    location: v.location,
    header_name: v.location === "header" ? v.headerName.trim() : null,
    scheme: v.location === "header" ? v.scheme.trim() || null : null,
    param_name: v.location === "url" ? v.paramName.trim() : null,
    refresh: v.refreshOn
      ? {
          method: refresh.method,
          relative_uri: refresh.relativeUri.trim(),
          headers: headerList(refresh.headers),
          body: refresh.method === "POST" && refresh.body ? refresh.body : null,
          media_type: refresh.mediaType || null,
          token_path: refresh.tokenPath.trim() || null,
        }
      : null,
  };
  if (v.authType === "token" && v.token) auth.token = v.token;

  const encrypted = {};
  for (const row of v.encrypted) {
    const key = row.key.trim();
    if (!key && !row.value) continue;
    if (row.saved && !row.value) continue; // unchanged: the relay keeps it
    encrypted[key] = row.value;
  }
  const unencrypted = {};
  for (const row of v.unencrypted) {
    const key = row.key.trim();
    if (key || row.value) unencrypted[key] = row.value;
  }
  if (saved) {
    const keptSecrets = new Set(v.encrypted.filter((r) => r.saved).map((r) => r.key));
    for (const key of Object.keys(saved.http.encrypted || {})) {
      if (!keptSecrets.has(key)) encrypted[key] = null;
    }
    for (const key of Object.keys(saved.http.unencrypted || {})) {
      if (!(key in unencrypted)) unencrypted[key] = null;
    }
  }

  const ping = v.ping;
  const t = v.traffic;
  const rl = t.rateLimit;
  const health = number(t.healthInterval);
  const tls = v.clientCertificate === undefined
    ? {}
    : { tls: { client_certificate: v.clientCertificate } };
  return {
    name: v.name,
    mode: v.mode,
    agent_id: v.mode === "on_premise" ? v.agentId || null : null,
    http: {
      base_uri: v.baseUri.trim(),
      headers: headerList(v.headers),
      media_type: v.mediaType,
      auth,
      encrypted,
      unencrypted,
      ...tls,
      ping: pingBlank(ping) && !forTest
        ? null
        : {
            method: ping.method,
            relative_uri: ping.relativeUri.trim(),
            success_path: ping.successPath.trim() || null,
            success_values: ping.successValues,
            body: PING_BODY_METHODS.includes(ping.method) && ping.body ? ping.body : null,
            fail_path: ping.failPath.trim() || null,
            fail_values: ping.failValues,
            error_path: ping.errorPath.trim() || null,
          },
      concurrency_level: number(t.concurrency),
      queue_timeout_seconds: number(t.queueTimeout) ?? 30,
      health: health === null ? null : { interval_seconds: health },
      rate_limit: t.rateLimitOn
        ? {
            fail_status: number(rl.failStatus),
            fail_path: rl.failPath.trim() || null,
            fail_values: rl.failValues,
            retry_header: rl.retryHeader.trim() || null,
            max_retries: number(rl.maxRetries) ?? 3,
            max_wait_seconds: number(rl.maxWait) ?? 60,
          }
        : null,
    },
  };
}

/** Editing, and a saved secret is left unchanged (the relay never sends it back). */
export function keepsSavedSecrets(v) {
  const o = v.oauth;
  const kept = {
    token: v.tokenSet && !v.token,
    basic: v.passwordSet && !v.password,
    digest: v.passwordSet && !v.password,
    oauth2: (o.clientSecretSet && !o.clientSecret) || (o.passwordSet && !o.password)
      || (o.refreshTokenSet && !o.refreshToken),
  }[v.authType];
  return Boolean(kept) || Boolean(v.tlsKeeps)
    || v.encrypted.some((row) => row.saved && !row.value);
}
