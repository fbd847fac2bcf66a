// Sessions, newest first: filtered by state and client (on the server) and by task name
// and time (here); counts by state; kept up to date from the event stream (reloaded only
// when the stream (re)connects).

import { api } from "./api.js";
import { badge, between, debounce, duration, errorBox, field, fill, h, link, time } from "./util.js";

const STATES = ["created", "running", "completed", "failed", "cancelled"];
const SINCE = [["", "any time"], ["3600", "last hour"], ["86400", "last 24 hours"], ["604800", "last 7 days"]];

export function sessionsView(root, _param, query) {
  const state = h("select", {}, h("option", { value: "" }, "any"),
    STATES.map((s) => h("option", { value: s, selected: query.get("state") === s }, s)));
  const client = h("input", { type: "search", value: query.get("client") || "", placeholder: "exact client id" });
  const task = h("input", { type: "search", value: query.get("task") || "", placeholder: "part of a task name" });
  const since = h("select", {}, SINCE.map(([v, l]) => h("option", { value: v, selected: query.get("since") === v }, l)));
  const counts = h("ul", { class: "counts", "aria-label": "Sessions by state" });
  const errors = h("div");
  const body = h("tbody");
  let sessions = [];
  let error = "";

  fill(root,
    h("div", { class: "title" }, h("h1", {}, "Sessions"), link("/ui/dispatch", "Dispatch a task")),
    h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
      field("State", state), field("Client", client), field("Task name", task), field("Created", since)),
    counts, errors,
    h("div", { class: "scroll" },
      h("table", { id: "sessions" },
        h("caption", { class: "sr" }, "Sessions, newest first"),
        h("thead", {}, h("tr", {}, ["Created", "Task", "Client", "State", "Duration", "Session"]
          .map((c, i) => h("th", { scope: "col", class: i === 5 ? "wide" : null }, c)))),
        body)));

  function visible() {
    const q = task.value.trim().toLowerCase();
    const cutoff = since.value ? Date.now() - Number(since.value) * 1000 : null;
    return sessions.filter((s) => (!q || s.task_name.toLowerCase().includes(q))
      && (!cutoff || new Date(s.created_at).getTime() >= cutoff));
  }

  function draw() {
    const shown = visible();
    const by = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const s of shown) by[s.state] = (by[s.state] || 0) + 1;
    fill(counts, STATES.map((s) => h("li", {}, badge(s), " ", h("strong", {}, String(by[s])))));
    fill(errors, errorBox(error));
    fill(body, shown.length ? shown.map((s) => h("tr", { dataset: { session: s.session_id } },
      h("td", {}, time(s.created_at)),
      h("th", { scope: "row" }, link(`/ui/sessions/${encodeURIComponent(s.session_id)}`, s.task_name)),
      h("td", {}, s.client_id),
      h("td", {}, badge(s.state)),
      h("td", {}, duration(between(s.started_at || s.created_at, s.finished_at))),
      h("td", { class: "wide mono" }, s.session_id.slice(0, 8))))
      : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No session matches.")));
  }

  async function reload() {
    const params = new URLSearchParams({ limit: "200" });
    if (state.value) params.set("state", state.value);
    if (client.value.trim()) params.set("client_id", client.value.trim());
    try {
      sessions = (await api(`/api/sessions?${params}`)).sessions;
      error = "";
    } catch (e) {
      error = e.message;
    }
    draw();
  }

  /** Keeps the filters in the address, so a filtered list can be shared. */
  function remember() {
    const p = new URLSearchParams();
    if (state.value) p.set("state", state.value);
    if (client.value.trim()) p.set("client", client.value.trim());
    if (task.value.trim()) p.set("task", task.value.trim());
    if (since.value) p.set("since", since.value);
    history.replaceState(null, "", `/ui/sessions${p.size ? `?${p}` : ""}`);
  }

  /** The server's filters (state, client), applied to a session an event changed. */
  function kept(s) {
    const c = client.value.trim();
    return (!state.value || s.state === state.value)
      && (!c || s.client_id === c || s.requester === c);
  }

  /** Applies an event to the list in place: no reload per event on a busy server. */
  function apply(ev) {
    const d = ev.data;
    const i = sessions.findIndex((s) => s.session_id === d.session_id);
    if (i < 0) {
      if (ev.event !== "session_created") return;
      const s = { ...d, status: "pending" };
      delete s.type;
      delete s.request;
      if (kept(s)) sessions.unshift(s);
      if (sessions.length > 1000) sessions.length = 1000;
    } else if (ev.event !== "session_round") {
      const s = { ...sessions[i], state: d.state };
      if (d.started_at) s.started_at = d.started_at;
      if (d.finished_at) s.finished_at = d.finished_at;
      if (d.reason !== undefined) s.reason = d.reason;
      if (kept(s)) sessions[i] = s;
      else sessions.splice(i, 1);
    }
    later();
  }

  const later = debounce(draw, 250);
  state.addEventListener("change", () => { remember(); reload(); });
  client.addEventListener("change", () => { remember(); reload(); });
  for (const el of [task, since]) el.addEventListener("input", () => { remember(); draw(); });
  reload();

  return {
    reload,
    onEvent(ev) {
      if (ev.event.startsWith("session_")) apply(ev);
    },
  };
}
