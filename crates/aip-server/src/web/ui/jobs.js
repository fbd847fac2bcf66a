// Fleet jobs: the list (GET /api/jobs, newest first) and one job's page (/ui/jobs/<id>):
// the aggregate, counts by state, one row per device with a link to its session; polled
// every second while the job runs, stopped when it ends or the view is left; Cancel.

import { api } from "./api.js";
import { badge, between, debounce, duration, errorBox, fill, h, link, time } from "./util.js";

const MEMBER_STATES = ["pending", "running", "completed", "failed", "cancelled", "skipped"];

/** "client_ids: web-* · platform: linux · role=web". */
function selectorText(sel) {
  if (!sel || typeof sel !== "object") return "";
  const list = (v) => (Array.isArray(v) ? v.join(", ") : String(v));
  const parts = [];
  if (sel.client_ids !== undefined && sel.client_ids !== null) parts.push(`client_ids: ${list(sel.client_ids)}`);
  if (sel.platform) parts.push(`platform: ${sel.platform}`);
  for (const [k, v] of Object.entries(sel.tags || {})) parts.push(`${k}=${list(v)}`);
  return parts.join(" · ");
}

/** The job's request on one line. */
function requestText(job) {
  const text = (job.request || "").replace(/\s*\n\s*/g, "; ");
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

/** Counts as badges, and a bar of the members' states. */
function counts(job) {
  const c = job.counts || {};
  const total = job.total || 0;
  return [
    h("ul", { class: "counts", "aria-label": "Devices by state" },
      MEMBER_STATES.map((s) => h("li", { dataset: { state: s } }, badge(s), " ", h("strong", {}, String(c[s] || 0))))),
    total ? h("div", { class: "bar", "aria-hidden": "true" },
      MEMBER_STATES.filter((s) => c[s]).map((s) => {
        const seg = h("span", { class: `seg g-${s}` });
        seg.style.width = `${(100 * c[s]) / total}%`; // CSSOM: the CSP forbids style attributes
        return seg;
      })) : null,
  ];
}

function countsText(job) {
  const c = job.counts || {};
  return MEMBER_STATES.filter((s) => c[s]).map((s) => `${c[s]} ${s}`).join(", ") || "no device";
}

export function jobsView(root) {
  const errors = h("div");
  const body = h("tbody");
  let jobs = [];
  let error = "";

  fill(root,
    h("div", { class: "title" }, h("h1", {}, "Jobs")),
    h("p", { class: "summary" }, "Fleet jobs, newest first: one task over every device a selector picks (",
      h("code", {}, "POST /api/jobs"), ", ", h("code", {}, "aip job"), ")."),
    errors,
    h("div", { class: "scroll" },
      h("table", { id: "jobs" },
        h("caption", { class: "sr" }, "Jobs, newest first"),
        h("thead", {}, h("tr", {}, ["Created", "Job", "State", "Devices", "Selector", "Request"]
          .map((c, i) => h("th", { scope: "col", class: i >= 4 ? "wide" : null }, c)))),
        body)));

  function draw() {
    fill(errors, errorBox(error));
    fill(body, jobs.length ? jobs.map((j) => h("tr", { dataset: { job: j.job_id } },
      h("td", {}, time(j.created_at)),
      h("th", { scope: "row" }, link(`/ui/jobs/${encodeURIComponent(j.job_id)}`, h("span", { class: "mono" }, j.job_id.slice(0, 8))),
        j.task_name ? ` ${j.task_name}` : null),
      h("td", {}, badge(j.state)),
      h("td", {}, `${j.total}: ${countsText(j)}`),
      h("td", { class: "wide" }, selectorText(j.selector)),
      h("td", { class: "wide mono" }, requestText(j))))
      : h("tr", {}, h("td", { colspan: 6, class: "muted" }, error ? "—" : "No job yet.")));
  }

  async function reload() {
    try {
      jobs = (await api("/api/jobs?limit=200")).jobs;
      error = "";
    } catch (e) {
      error = e.message;
    }
    draw();
  }

  // A job's members are sessions: their events are when the list may have changed.
  const later = debounce(reload, 1000);
  reload();
  return {
    reload,
    onEvent(ev) {
      if (ev.event === "session_created" || ev.event === "session_ended") later();
    },
  };
}

export function jobView(root, id) {
  let job = null;
  let error = "";
  let cancelling = false;
  let left = false; // the view was left: no more polling
  let timer = null;

  async function reload() {
    clearTimeout(timer);
    timer = null;
    try {
      job = await api(`/api/jobs/${encodeURIComponent(id)}`);
      error = "";
    } catch (e) {
      error = e.status === 404 ? "No such job." : e.message;
    }
    if (left) return;
    draw();
    // Polled while it runs (jobs have no events of their own), also after an error.
    if (!timer && (!job || job.state === "running")) timer = setTimeout(reload, 1000);
  }

  async function cancel() {
    if (!confirm(`Cancel job ${id.slice(0, 8)} on every device?`)) return;
    cancelling = true;
    draw();
    try {
      job = await api(`/api/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
      error = "";
    } catch (e) {
      error = e.message;
    }
    cancelling = false;
    if (left) return;
    draw();
    root.querySelector("h1")?.focus();
  }

  function draw() {
    // Redrawn every second while it runs: the focus stays where it was.
    const a = root.contains(document.activeElement) ? document.activeElement : null;
    const focused = !a ? null : a.id ? `#${CSS.escape(a.id)}` : a.tagName === "H1" ? "h1"
      : a.tagName === "A" ? `a[href="${CSS.escape(a.getAttribute("href"))}"]` : null;
    if (!job) {
      fill(root, h("h1", {}, "Job"), errorBox(error), error ? null : h("p", { class: "muted" }, "Loading…"));
      return;
    }
    const j = job;
    const running = j.state === "running";
    fill(root,
      h("div", { class: "title" },
        h("h1", { tabindex: -1 }, "Job ", h("span", { class: "mono" }, j.job_id.slice(0, 8)), " ", badge(j.state)),
        running ? h("div", { class: "actions" },
          h("button", { id: "cancel", class: "danger", type: "button", onclick: cancel, disabled: cancelling },
            cancelling ? "Cancelling…" : "Cancel job")) : null),
      errorBox(error),
      h("p", { class: "live-state", role: "status", "aria-live": "polite" },
        running ? `Running: ${countsText(j)} of ${j.total}.`
          : `Ended ${j.state}${j.reason ? ` (${j.reason})` : ""}: ${countsText(j)}.`),
      counts(j),
      h("dl", { class: "facts" },
        fact("Job", h("span", { class: "mono" }, j.job_id)),
        fact("Selector", selectorText(j.selector)),
        fact("Request", h("pre", { class: "mono" }, j.request || "")),
        j.task_name ? fact("Task name", j.task_name) : null,
        fact("Rollout", [`batch ${j.batch ?? "all"}`,
          j.max_failures ? `max failures ${j.max_failures}` : null,
          j.timeout ? `timeout ${duration(j.timeout * 1000)}` : null].filter(Boolean).join(" · ")),
        fact("Created", time(j.created_at)),
        fact("Duration", duration(between(j.created_at, j.finished_at)))),
      h("h2", {}, `Devices (${j.total})`),
      h("div", { class: "scroll" },
        h("table", { id: "members" },
          h("caption", { class: "sr" }, "Devices, in rollout order"),
          h("thead", {}, h("tr", {}, ["Device", "State", "Reason", "Exit", "Duration", "Output", "Session"]
            .map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, (j.members || []).map((m) => h("tr", { dataset: { client: m.client_id } },
            h("th", { scope: "row" }, m.client_id),
            h("td", {}, badge(m.state)),
            h("td", {}, m.reason || ""),
            h("td", {}, m.exit_code ?? ""),
            h("td", {}, m.started_at ? duration(between(m.started_at, m.finished_at)) : ""),
            h("td", { class: "output mono" }, m.output || ""),
            h("td", {}, m.session_id
              ? link(`/ui/sessions/${encodeURIComponent(m.session_id)}`, h("span", { class: "mono" }, m.session_id.slice(0, 8)))
              : "")))))));
    if (focused) root.querySelector(focused)?.focus();
  }

  function fact(name, value) {
    return [h("dt", {}, name), h("dd", {}, value)];
  }

  reload();
  return {
    reload,
    unmount() {
      left = true;
      clearTimeout(timer);
    },
  };
}
