// The admin UI's entry: sign-in, the navigation (only the pages the
// caller's scopes open), and which page module draws which address.
// Addresses are real paths under /ui/, so links, the back button, a new tab
// and a reload all work; the server answers each with this same page.

import { ApiError, resume, session, signIn, signOut, signedOut } from "./api.js";
import { fill, h, notice } from "./dom.js";
import * as overview from "./overview.js";
import * as tools from "./tools.js";
import * as calls from "./calls.js";
import * as audit from "./audit.js";
import * as policies from "./policies.js";
import * as tokens from "./tokens.js";

// The pages of the navigation: the scope that opens each (null: any caller).
const PAGES = [
  { path: "/ui/", title: "Overview", scope: null, module: overview },
  { path: "/ui/tools", title: "Tools", scope: null, module: tools },
  { path: "/ui/calls", title: "Live calls", scope: "audit", module: calls },
  { path: "/ui/audit", title: "Audit", scope: "audit", module: audit },
  { path: "/ui/policies", title: "Policies", scope: ["admin", "audit"], module: policies },
  { path: "/ui/tokens", title: "Tokens", scope: "admin", module: tokens },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
// What the page on screen asked to be done when it is left (timers, streams).
let leave = null;

function opens(page) {
  if (page.scope === null) return true;
  const scopes = Array.isArray(page.scope) ? page.scope : [page.scope];
  return scopes.some((scope) => session.has(scope));
}

// The page an address shows, and the part of the path after the page's own.
function route(pathname) {
  if (pathname === "/ui/record") return { page: { title: "Record", module: audit, view: "record" } };
  const match = PAGES.filter((page) => page.path !== "/ui/")
    .find((page) => pathname === page.path || pathname.startsWith(page.path + "/"));
  if (!match) return { page: PAGES[0] };
  return { page: match, rest: decodeURIComponent(pathname.slice(match.path.length + 1)) };
}

function drawNav(current) {
  fill(
    nav,
    h(
      "ul",
      {},
      PAGES.filter(opens).map((page) =>
        h("li", {}, h("a", { href: page.path, "aria-current": page === current ? "page" : false }, page.title)),
      ),
    ),
  );
  nav.hidden = false;
  fill(
    who,
    h("span", { class: "caller" }, session.caller ? `Signed in as ${session.caller}` : "Local operator (no credential required)"),
    h("span", { class: "scopes" }, ` · ${session.scopes.join(", ")}`),
    session.credentialRequired ? h("button", { type: "button", id: "sign-out", onclick: () => end() }, "Sign out") : null,
  );
  who.hidden = false;
}

// Draws the page of the address; after a navigation, moves the focus to
// it (where a screen reader or the keyboard goes on from).
async function show(focus = true) {
  if (leave) {
    leave();
    leave = null;
  }
  const { page, rest } = route(location.pathname);
  drawNav(page);
  document.title = `${page.title} · Switchboard`;
  const view = h("div", { class: "page" });
  fill(main, view);
  try {
    if (page.scope !== undefined && !opens(page)) {
      const needed = Array.isArray(page.scope) ? page.scope.join(" or ") : page.scope;
      fill(view, h("h1", {}, page.title), notice("info", `This page needs the ${needed} scope; this caller has ${session.scopes.join(", ") || "none"}.`));
      return;
    }
    leave = (await page.module.render(view, { rest, view: page.view, query: new URLSearchParams(location.search), go })) || null;
  } catch (e) {
    view.append(notice("error", e instanceof ApiError ? `${e.message} (${e.code})` : String(e)));
  }
  if (focus) main.focus({ preventScroll: true });
}

// Goes to `href` within the UI without reloading (pages get it in their
// render context rather than importing this module).
function go(href) {
  history.pushState(null, "", href);
  show();
}

function signInForm(message) {
  if (leave) {
    leave();
    leave = null;
  }
  nav.hidden = true;
  who.hidden = true;
  document.title = "Sign in · Switchboard";
  const input = h("input", { id: "credential", name: "credential", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const status = h("div", { id: "sign-in-status" });
  const form = h(
    "form",
    {
      class: "sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          await signIn(input.value.trim());
          input.value = "";
          show();
        } catch (e) {
          fill(status, notice("error", e.message));
          input.focus();
        }
      },
    },
    h("h1", {}, "Sign in"),
    h("label", { for: "credential" }, "API token or JWT"),
    input,
    h("button", { type: "submit" }, "Sign in"),
    status,
    h(
      "p",
      { class: "hint" },
      "The browser keeps it in an HttpOnly cookie for this session (never in an address). ",
      "`switchboard tokens create --name me --scopes admin` issues a token.",
    ),
  );
  fill(main, message ? notice("info", message) : null, form);
  input.focus();
}

async function end() {
  await signOut();
  signInForm("Signed out.");
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui/") || link.hasAttribute("download")) return;
  event.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener("popstate", () => show());
signedOut.addEventListener("signed-out", () => signInForm("The session ended (the credential was refused): sign in again."));

(async () => {
  try {
    if (await resume()) show(false);
    else signInForm();
  } catch (e) {
    fill(main, notice("error", `The server did not answer: ${e.message}`));
  }
})();
