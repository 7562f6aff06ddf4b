// Tokens (admin scope): issue one (POST /v1/tokens; its secret is shown
// here once and kept nowhere), list them (GET /v1/tokens), revoke one
// (DELETE /v1/tokens/{id}).

import { api, ApiError } from "./api.js";
import { badge, fill, h, notice, section, table, when } from "./dom.js";

export async function render(view) {
  const list = h("div", { id: "token-list" });
  const issued = h("div", { id: "token-issued", "aria-live": "polite" });
  const draw = async () => fill(list, tokenTable(await api("GET", "/v1/tokens"), draw, issued));
  fill(view, h("h1", {}, "Tokens"), section("Issue a token", createForm(issued, draw), issued), section("Issued tokens", list));
  await draw();
}

function createForm(issued, redraw) {
  const scope = (name) =>
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "scopes", value: name, id: `scope-${name}` }), ` ${name}`);
  const form = h(
    "form",
    { class: "filters", id: "token-form" },
    h("label", {}, "Name", h("input", { name: "name", id: "token-name", required: true, maxlength: "128" })),
    h("fieldset", {}, h("legend", {}, "Scopes"), scope("admin"), scope("invoke"), scope("audit")),
    h("label", {}, "Roles (comma-separated)", h("input", { name: "roles", id: "token-roles", spellcheck: "false" })),
    h("label", {}, "Expires in (seconds, optional)", h("input", { name: "expires", id: "token-expires", type: "number", min: "1" })),
    h("div", { class: "buttons" }, h("button", { type: "submit", id: "token-create" }, "Issue")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const roles = String(data.get("roles") || "").split(",").map((r) => r.trim()).filter(Boolean);
    const expires = data.get("expires");
    try {
      const created = await api("POST", "/v1/tokens", {
        name: data.get("name"),
        scopes: data.getAll("scopes"),
        roles,
        ...(expires ? { expires_in_secs: Number(expires) } : {}),
      });
      form.reset();
      showSecret(issued, created);
      await redraw();
    } catch (e) {
      fill(issued, notice("error", e instanceof ApiError ? e.message : String(e)));
    }
  });
  return form;
}

function showSecret(el, created) {
  const secret = h("code", { id: "token-secret" }, created.secret);
  fill(
    el,
    h(
      "div",
      { class: "secret" },
      h("p", {}, `Token ${created.token.name} (${created.token.caller}) is issued. Its secret is shown this once and stored nowhere: copy it now.`),
      secret,
      h(
        "button",
        {
          type: "button",
          onclick: async (event) => {
            await navigator.clipboard.writeText(created.secret);
            event.target.textContent = "Copied";
          },
        },
        "Copy",
      ),
      h("button", { type: "button", onclick: () => el.replaceChildren() }, "Done: hide it"),
    ),
  );
}

function tokenTable(tokens, redraw, issued) {
  return table(
    "Issued tokens",
    ["Name", "Caller", "Scopes", "Roles", "Issued", "Expires", "State", ""],
    tokens.map((t) => [
      t.name,
      h("code", {}, t.caller),
      t.scopes.join(", "),
      t.roles.join(", ") || "—",
      `${when(t.created_at_ms)}${t.created_by ? ` by ${t.created_by}` : ""}`,
      t.expires_at_ms ? when(t.expires_at_ms) : "never",
      t.active ? badge("active", "good") : badge(t.revoked_at_ms ? `revoked ${when(t.revoked_at_ms)}` : "expired", "bad"),
      t.active
        ? h(
            "button",
            {
              type: "button",
              class: "danger",
              "data-token": t.token_id,
              "aria-label": `Revoke ${t.name}`,
              onclick: async () => {
                if (!confirm(`Revoke token ${t.name}? Requests with it are refused from now on.`)) return;
                try {
                  await api("DELETE", `/v1/tokens/${encodeURIComponent(t.token_id)}`);
                  fill(issued, notice("ok", `Revoked ${t.name}.`));
                  await redraw();
                } catch (e) {
                  fill(issued, notice("error", e.message));
                }
              },
            },
            "Revoke",
          )
        : "",
    ]),
    "No token is issued.",
  );
}
