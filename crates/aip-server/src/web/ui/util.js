// Small DOM and formatting helpers shared by the views. Everything shown is built with
// text nodes (never innerHTML), so no value from the server can inject markup.

/** An element: h("a", {href: "/ui/"}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const STEPS = [
  [60, "second"], [60, "minute"], [24, "hour"], [7, "day"], [4.35, "week"], [12, "month"],
  [Infinity, "year"],
];

/** "3 minutes ago" for an ISO time. */
export function relative(iso, now = Date.now()) {
  let v = (new Date(iso).getTime() - now) / 1000;
  for (const [size, unit] of STEPS) {
    if (Math.abs(v) < size) return rtf.format(Math.round(v), unit);
    v /= size;
  }
  return "";
}

/** The viewer's local date and time. */
export function local(iso) {
  return new Date(iso).toLocaleString(undefined, {
    dateStyle: "medium", timeStyle: "medium",
  });
}

/** The viewer's local time of day, to the millisecond. */
export function clock(iso) {
  return new Date(iso).toLocaleTimeString(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3,
  });
}

/** A <time> showing the relative time, the local time on hover and kept fresh. */
export function time(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: local(iso), dataset: { rel: "1" } }, relative(iso));
}

/** Refreshes every relative time on the page. */
export function refreshTimes(root = document) {
  for (const t of root.querySelectorAll("time[data-rel]")) {
    t.textContent = relative(t.getAttribute("datetime"));
  }
}

/** "1.2 s", "340 ms", "3 min 4 s". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Milliseconds between two ISO times (the second defaults to now). */
export function between(a, b) {
  if (!a) return null;
  return (b ? new Date(b).getTime() : Date.now()) - new Date(a).getTime();
}

/** A state badge: created, running, completed, failed, cancelled, online, offline... */
export function badge(state) {
  return h("span", { class: `badge b-${state}` }, state);
}

/** True for the states a session ends in. */
export function ended(state) {
  return state === "completed" || state === "failed" || state === "cancelled";
}

/** Calls `fn` at most once per `ms`, trailing: bursts of events cause one reload. */
export function debounce(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
}

/** An <a> that the app's router handles. */
export function link(href, ...children) {
  return h("a", { href }, ...children);
}

/** A labelled form control: h("label") around text and the control. */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2)}`;
  control.id = id;
  return h("div", { class: "field" },
    h("label", { for: id }, label), control, hint ? h("small", { class: "muted" }, hint) : null);
}

/** An error message (role=alert) or nothing. */
export function errorBox(message) {
  return message ? h("p", { class: "error", role: "alert" }, message) : null;
}
