// The auth types beside token (basic, digest, OAuth 2.0, cookie session,
// none): their fields, which show for the type and grant chosen, and their
// values. Secrets are write-only, like the token: left empty on an edited
// connection, the saved one is kept.

import { h, show } from "./dom.js";
import { field, secretInput, select, textInput } from "./fields.js";
import { MEDIA_TYPES } from "./format.js";

export const AUTH_TYPES = [
  ["token", "Token"],
  ["basic", "Basic"],
  ["digest", "Digest"],
  ["oauth2", "OAuth 2.0"],
  ["cookie", "Cookie session"],
  ["none", "None (custom headers)"],
];

const code = (text) => h("code", {}, text);

function secret(label, editing, hint) {
  return field(label, secretInput(), {
    required: !editing,
    hint: editing
      ? `${hint} Write-only: leave it empty to keep the saved value.`
      : `${hint} Write-only: stored encrypted and never shown again.`,
  });
}

function setSecret(f, isSet) {
  f.control.value = "";
  f.control.dataset.saved = String(Boolean(isSet));
  f.control.placeholder = isSet ? "unchanged" : "";
}

export function buildAuthFields({ editing }) {
  // -- basic and digest -----------------------------------------------------
  const username = field("Username", textInput({ autocomplete: "off" }), {
    required: true, hint: "The user the API knows this integration as.",
  });
  const password = secret("Password", editing, "The user's password.");

  // -- OAuth 2.0 --------------------------------------------------------------
  const grantType = field("Grant type", select([
    ["client_credentials", "Client credentials"],
    ["password", "Password (resource owner)"],
    ["refresh_token", "Refresh token"],
  ]), { required: true, hint: "How the relay gets an access token from the token endpoint." });
  const tokenUri = field("Token URI", textInput({ type: "url", inputmode: "url" }), {
    required: true,
    hint: ["The token endpoint, any host, e.g. ", code("https://login.example.com/oauth2/token"),
      ". On-premise, it is reached through the agent: allow it there too."],
  });
  const clientId = field("Client ID", textInput(), {
    hint: "The client registered with the provider.",
  });
  const clientSecret = secret("Client secret", editing, "The client's secret.");
  const credentialsLocation = field("Send client credentials via", select([
    ["basic_header", "HTTP Basic header (recommended)"], ["body", "Request body"],
  ]));
  const scope = field("Scope", textInput(), {
    hint: "Space-separated, e.g. orders:read orders:write.",
  });
  const audience = field("Audience", textInput(), { hint: "Only for providers that ask for one." });
  const oauthUsername = field("Resource owner username", textInput(), { required: true });
  const oauthPassword = secret("Resource owner password", editing,
    "The resource owner's password.");
  const refreshToken = secret("Refresh token", editing,
    "A rotated refresh token from the provider replaces it automatically.");

  // -- cookie session ---------------------------------------------------------------
  const loginUri = field("Login URI", textInput(), {
    required: true,
    hint: ["Relative to the base URI, or absolute, e.g. ", code("/auth/login"), "."],
  });
  const loginMethod = field("Login HTTP method",
    select(["POST", "PUT", "PATCH", "GET"].map((m) => [m, m])));
  const loginBody = field("Login request body", h("textarea", { rows: "3", spellcheck: "false" }), {
    hint: ["e.g. ", code('{"user": "ops", "password": "{{connection.http.encrypted.password}}"}'),
      ": keep the password in an encrypted custom field."],
  });
  const loginMedia = field("Login media type", select(
    [["", "Same as the connection"], ...MEDIA_TYPES]));
  const successStatus = field("Success status", textInput({ inputmode: "numeric" }), {
    hint: "The login answer's status when it worked; its Set-Cookie headers are kept.",
  });

  const basicFields = [username, password];
  const oauthFields = [grantType, tokenUri, clientId, clientSecret, credentialsLocation, scope,
    audience, oauthUsername, oauthPassword, refreshToken];
  const cookieFields = [loginUri, loginMethod, loginBody, loginMedia, successStatus];
  const noneNote = h("p", { class: "hint" },
    "The relay adds no credentials of its own; configure headers above if the API needs them.");

  function sync(type) {
    for (const f of basicFields) show(f.wrapper, type === "basic" || type === "digest");
    for (const f of oauthFields) show(f.wrapper, type === "oauth2");
    for (const f of cookieFields) show(f.wrapper, type === "cookie");
    show(noneNote, type === "none");
    if (type === "oauth2") {
      const grant = grantType.control.value;
      show(oauthUsername.wrapper, grant === "password");
      show(oauthPassword.wrapper, grant === "password");
      show(refreshToken.wrapper, grant === "refresh_token");
    }
  }

  return {
    wrappers: [...basicFields, ...oauthFields, ...cookieFields].map((f) => f.wrapper)
      .concat([noneNote]),
    onChange(fn) {
      grantType.control.addEventListener("change", fn);
    },
    sync,
    read() {
      return {
        username: username.control.value,
        password: password.control.value,
        passwordSet: password.control.dataset.saved === "true",
        oauth: {
          grantType: grantType.control.value,
          tokenUri: tokenUri.control.value,
          clientId: clientId.control.value,
          clientSecret: clientSecret.control.value,
          clientSecretSet: clientSecret.control.dataset.saved === "true",
          location: credentialsLocation.control.value,
          scope: scope.control.value,
          audience: audience.control.value,
          username: oauthUsername.control.value,
          password: oauthPassword.control.value,
          passwordSet: oauthPassword.control.dataset.saved === "true",
          refreshToken: refreshToken.control.value,
          refreshTokenSet: refreshToken.control.dataset.saved === "true",
        },
        cookie: {
          uri: loginUri.control.value,
          method: loginMethod.control.value,
          body: loginBody.control.value,
          mediaType: loginMedia.control.value,
          successStatus: successStatus.control.value,
        },
      };
    },
    fill(v) {
      username.control.value = v.username;
      setSecret(password, v.passwordSet);
      const o = v.oauth;
      grantType.control.value = o.grantType;
      tokenUri.control.value = o.tokenUri;
      clientId.control.value = o.clientId;
      setSecret(clientSecret, o.clientSecretSet);
      credentialsLocation.control.value = o.location;
      scope.control.value = o.scope;
      audience.control.value = o.audience;
      oauthUsername.control.value = o.username;
      setSecret(oauthPassword, o.passwordSet);
      setSecret(refreshToken, o.refreshTokenSet);
      loginUri.control.value = v.cookie.uri;
      loginMethod.control.value = v.cookie.method;
      loginBody.control.value = v.cookie.body;
      loginMedia.control.value = v.cookie.mediaType;
      successStatus.control.value = v.cookie.successStatus;
    },
    /** [API field path, field] for the type chosen. */
    errorTargets(type) {
      if (type === "basic" || type === "digest") {
        return [["http.auth.username", username], ["http.auth.password", password]];
      }
      if (type === "oauth2") {
        return [["http.auth.grant_type", grantType], ["http.auth.token_uri", tokenUri],
          ["http.auth.client_id", clientId], ["http.auth.client_secret", clientSecret],
          ["http.auth.client_credentials_location", credentialsLocation],
          ["http.auth.scope", scope], ["http.auth.audience", audience],
          ["http.auth.username", oauthUsername], ["http.auth.password", oauthPassword],
          ["http.auth.refresh_token", refreshToken]];
      }
      if (type === "cookie") {
        return [["http.auth.uri", loginUri], ["http.auth.method", loginMethod],
          ["http.auth.body", loginBody], ["http.auth.media_type", loginMedia],
          ["http.auth.success_status", successStatus]];
      }
      return [];
    },
    forgetSecrets() {
      for (const f of [password, clientSecret, oauthPassword, refreshToken]) f.control.value = "";
    },
  };
}
