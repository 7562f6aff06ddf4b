// Building the page. Every text that came from the server goes in through
// textContent or an attribute, never as markup: a tool description or a
// record's arguments can hold anything.

// An element: h("a", {href: "/ui/"}, "Overview", h("span", {}, "…")).
// Attributes starting with "on" are listeners; false/null/undefined skip.
export function h(tag, attributes = {}, ...children) {
  const svg = ["svg", "polyline", "line", "title", "g", "text"].includes(tag);
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

// Replaces everything in `el` with `children`.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// A table with a header row; each row is an array of cells (text or nodes).
// Wrapped so a wide table scrolls on its own on a narrow window.
export function table(caption, headers, rows, empty = "Nothing yet.") {
  if (rows.length === 0) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))),
    ),
  );
}

// A section with a heading.
export function section(title, ...children) {
  return h("section", {}, h("h2", {}, title), ...children);
}

// A notice: "info", "error" (read out by screen readers) or "ok".
export function notice(kind, ...children) {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...children);
}

// Milliseconds since the epoch as local date and time.
export function when(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(
    d.getMinutes(),
  )}:${pad(d.getSeconds())}`;
}

// A latency in milliseconds, to a sensible precision.
export function ms(value) {
  if (value === null || value === undefined) return "—";
  return value < 10 ? `${value.toFixed(2)} ms` : `${Math.round(value)} ms`;
}

// Pretty JSON in a <pre>.
export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

// A status word with a class the style sheet colours.
export function badge(text, kind = text) {
  return h("span", { class: `badge ${kind}` }, text);
}

// A link to a record's own page.
export function recordLink(key, text = "Open") {
  return h("a", { href: `/ui/record?key=${encodeURIComponent(key)}`, "aria-label": `${text} ${key}` }, text);
}
