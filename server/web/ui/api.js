// The relay's JSON API, called with the admin token like any other client.
// The token is asked for once and kept in sessionStorage (this tab only).

const STORAGE_KEY = "sluice.adminToken";

/** A problem+json answer (RFC 9457): .status, .type, .title, .detail, .errors. */
export class ApiError extends Error {
  constructor(status, problem) {
    const body = problem && typeof problem === "object" ? problem : {};
    super(body.detail || body.title || `The relay answered HTTP ${status}`);
    this.status = status;
    this.type = body.type || "http_error";
    this.title = body.title || `HTTP ${status}`;
    this.detail = body.detail || "";
    this.errors = Array.isArray(body.errors) ? body.errors : [];
  }
}

/** The relay could not be reached at all. */
export class NetworkError extends Error {}

let pendingLogin = null;

export function signOut() {
  sessionStorage.removeItem(STORAGE_KEY);
}

function askForToken(message) {
  if (pendingLogin) return pendingLogin;
  const dialog = document.getElementById("login");
  const form = document.getElementById("login-form");
  const input = document.getElementById("login-token");
  const error = document.getElementById("login-error");
  error.textContent = message || "";
  error.hidden = !message;
  input.setAttribute("aria-invalid", message ? "true" : "false");
  pendingLogin = new Promise((resolve) => {
    const onSubmit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) {
        error.textContent = "Enter the admin token.";
        error.hidden = false;
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      input.value = "";
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      // Land on the page's heading, where a keyboard user would start.
      const heading = document.querySelector("main h1");
      if (heading) heading.focus({ preventScroll: true });
      sessionStorage.setItem(STORAGE_KEY, token);
      pendingLogin = null;
      resolve(token);
    };
    // Nothing works without the token: Escape must not close the dialog.
    const onCancel = (event) => event.preventDefault();
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
  return pendingLogin;
}

async function token() {
  return sessionStorage.getItem(STORAGE_KEY) || askForToken();
}

/**
 * call("GET", "/v1/agents") -> the parsed JSON answer (null for 204).
 * Throws ApiError for a problem answer and NetworkError when the relay is
 * unreachable. A refused token asks for a new one and retries once more.
 */
export async function call(method, path, body) {
  for (let attempt = 0; ; attempt += 1) {
    const bearer = await token();
    const headers = { Authorization: `Bearer ${bearer}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
      });
    } catch (err) {
      throw new NetworkError(`Cannot reach the relay (${err.message}).`);
    }
    if (response.status === 401 && attempt < 3) {
      sessionStorage.removeItem(STORAGE_KEY);
      await askForToken("The relay refused that token. Check it and try again.");
      continue;
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }
}
