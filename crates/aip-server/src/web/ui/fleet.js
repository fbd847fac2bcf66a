// The fleet: every client the server has (plus those seen going offline while this page
// is open), filtered by text, platform and tag; online/offline changes and live session
// counts follow the event stream in place (the list is reloaded when the stream connects).

import { api } from "./api.js";
import { badge, debounce, errorBox, field, fill, h, link, time } from "./util.js";

export function fleetView(root, _param, query) {
  const known = new Map(); // client_id → {client, online, offlineAt}
  let error = "";
  const text = h("input", { type: "search", placeholder: "id, tag, platform…", value: query.get("q") || "" });
  const platform = h("select", {}, h("option", { value: "" }, "any"));
  const tag = h("select", {}, h("option", { value: "" }, "any"));
  const offline = h("input", { type: "checkbox", checked: true });
  const summary = h("p", { class: "summary", role: "status", "aria-live": "polite" });
  const body = h("tbody");
  const errors = h("div");
  const hasNode = () => [...known.values()].some((k) => k.client.node);

  fill(root,
    h("div", { class: "title" }, h("h1", {}, "Fleet"),
      link("/ui/dispatch", "Dispatch a task")),
    h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
      field("Search", text), field("Platform", platform), field("Tag", tag),
      h("div", { class: "field check" }, h("label", {}, offline, " show offline"))),
    summary, errors,
    h("div", { class: "scroll" },
      h("table", { id: "fleet" },
        h("caption", { class: "sr" }, "Connected clients"),
        h("thead", {}, h("tr", {}, ...["Client", "Status", "Role", "Platform", "Tags",
          "Connected", "Last seen", "Live sessions"].map((c, i) =>
          h("th", { scope: "col", class: i === 2 || i === 5 || i === 6 ? "wide" : null }, c)),
          h("th", { scope: "col", class: "node-col", hidden: true }, "Node"))),
        body)));

  function tagsOf(c) {
    return Object.entries(c.tags || {}).map(([k, v]) => `${k}=${v}`);
  }

  function options(select, values) {
    const chosen = select.value;
    fill(select, h("option", { value: "" }, "any"),
      [...values].sort().map((v) => h("option", { value: v, selected: v === chosen }, v)));
  }

  function matches(k) {
    const c = k.client;
    if (!offline.checked && !k.online) return false;
    if (platform.value && (c.platform || "") !== platform.value) return false;
    if (tag.value && !tagsOf(c).includes(tag.value)) return false;
    const q = text.value.trim().toLowerCase();
    if (!q) return true;
    return [c.client_id, c.platform, c.type, c.node, ...tagsOf(c)]
      .some((v) => v && String(v).toLowerCase().includes(q));
  }

  function row(k) {
    const c = k.client;
    const isDevice = c.type === "device";
    return h("tr", { class: k.online ? null : "offline", dataset: { client: c.client_id } },
      h("th", { scope: "row" }, isDevice && k.online
        ? link(`/ui/dispatch?target=${encodeURIComponent(c.client_id)}`, c.client_id)
        : c.client_id),
      h("td", {}, badge(k.online ? "online" : "offline"),
        k.online ? null : h("small", { class: "muted" }, " ", time(k.offlineAt))),
      h("td", { class: "wide" }, c.type),
      h("td", {}, c.platform || h("span", { class: "muted" }, "—")),
      h("td", {}, tagsOf(c).map((t) => h("span", { class: "tag" }, t))),
      h("td", { class: "wide" }, time(c.connected_at)),
      h("td", { class: "wide" }, k.online ? time(c.last_seen) : "—"),
      h("td", {}, k.online && c.sessions
        ? link(`/ui/sessions?client=${encodeURIComponent(c.client_id)}`, String(c.sessions))
        : String(k.online ? c.sessions ?? 0 : 0)),
      h("td", { class: "node-col", hidden: !hasNode() }, c.node || "—"));
  }

  function draw() {
    const all = [...known.values()];
    options(platform, new Set(all.map((k) => k.client.platform).filter(Boolean)));
    options(tag, new Set(all.flatMap((k) => tagsOf(k.client))));
    for (const th of root.querySelectorAll("th.node-col")) th.hidden = !hasNode();
    const shown = all.filter(matches)
      .sort((a, b) => (b.online - a.online) || a.client.client_id.localeCompare(b.client.client_id));
    const online = all.filter((k) => k.online);
    const devices = online.filter((k) => k.client.type === "device").length;
    const n = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;
    summary.textContent = `${online.length} online (${n(devices, "device")}, ${n(online.length - devices, "constellation")})`
      + `${all.length > online.length ? `, ${all.length - online.length} gone offline` : ""}`
      + ` · showing ${shown.length}`;
    fill(errors, errorBox(error));
    fill(body, shown.length ? shown.map(row)
      : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No client matches.")));
  }

  async function reload() {
    try {
      const list = await api("/api/clients");
      const now = new Date().toISOString();
      const online = new Set();
      for (const c of list.clients) {
        online.add(c.client_id);
        known.set(c.client_id, { client: c, online: true });
      }
      for (const [id, k] of known) {
        if (!online.has(id) && k.online) known.set(id, { ...k, online: false, offlineAt: now });
      }
      error = "";
    } catch (e) {
      error = e.message;
    }
    draw();
  }

  const later = debounce(draw, 250);

  /** A live session more (+1) or fewer (-1) for the clients of a session event. */
  function count(d, delta) {
    for (const id of new Set([d.client_id, d.requester])) {
      const k = id && known.get(id);
      if (k?.online) k.client = { ...k.client, sessions: Math.max(0, (k.client.sessions || 0) + delta) };
    }
    later();
  }
  for (const el of [text, platform, tag, offline]) el.addEventListener("input", draw);
  reload();

  return {
    reload,
    onEvent(ev) {
      const d = ev.data;
      if (ev.event === "client_disconnected") {
        const k = known.get(d.client_id);
        if (k) known.set(d.client_id, { ...k, online: false, offlineAt: new Date().toISOString() });
        draw();
      } else if (ev.event === "client_connected") {
        known.set(d.client_id, {
          client: { client_id: d.client_id, type: d.client_type, platform: d.platform, tags: d.tags,
            connected_at: d.connected_at, last_seen: d.connected_at, sessions: 0, node: d.node },
          online: true,
        });
        draw();
      } else if (ev.event === "session_created") {
        count(d, 1);
      } else if (ev.event === "session_ended") {
        count(d, -1);
      }
    },
  };
}
