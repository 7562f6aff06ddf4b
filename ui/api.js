// The UI's one way to the server: the JSON API, with the session cookie the
// browser attaches by itself and, on writes, the CSRF token the server gave
// for it. The credential itself never passes through this script after
// sign-in (the cookie is HttpOnly).

export const session = {
  caller: null,
  scopes: [],
  roles: [],
  credentialRequired: true,
  csrf: "",
  has(scope) {
    return this.scopes.includes("admin") || this.scopes.includes(scope);
  },
};

// An answer the server refused, with the API's error code and message.
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Listeners learn here that the session ended (the server answered 401).
export const signedOut = new EventTarget();

function adopt(info) {
  session.caller = info.caller;
  session.scopes = info.scopes;
  session.roles = info.roles;
  session.credentialRequired = info.credential_required;
  session.csrf = info.csrf_token;
}

async function answer(response) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  if (response.ok) return body;
  const error = body && body.error ? body.error : { code: "http_" + response.status, message: text };
  if (response.status === 401) signedOut.dispatchEvent(new Event("signed-out"));
  throw new ApiError(response.status, error.code, error.message);
}

// One API call: api("GET", "/v1/agents"), api("PUT", "/v1/policies/x", {source}).
export async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["x-csrf-token"] = session.csrf;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  return answer(response);
}

// A path with query parameters, leaving out empty ones.
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) query.set(name, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

// Whether this browser is signed in (or needs no sign-in): learns the
// caller's scopes and CSRF token.
export async function resume() {
  try {
    adopt(await api("GET", "/ui/session"));
    return true;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return false;
    throw e;
  }
}

// Signs in with a token or JWT: sent once, in a header, and kept by the
// browser as an HttpOnly cookie from the answer.
export async function signIn(credential) {
  const response = await fetch("/ui/session", {
    method: "POST",
    headers: { authorization: `Bearer ${credential}`, accept: "application/json" },
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401) {
    const body = await response.json().catch(() => null);
    throw new ApiError(401, "unauthorized", body && body.error ? body.error.message : "refused");
  }
  adopt(await answer(response));
}

export async function signOut() {
  await fetch("/ui/session", { method: "DELETE", credentials: "same-origin" });
  session.caller = null;
  session.scopes = [];
  session.csrf = "";
}
