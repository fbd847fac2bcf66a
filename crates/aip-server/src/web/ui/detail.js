// One session: request, requester and executor, timeline, each round's results (output
// shown as a terminal's), an agent's steps, tool calls, answer and tokens; a cancel
// button while it is live. Its address (/ui/sessions/<id>) can be shared.

import { api } from "./api.js";
import { badge, between, clock, debounce, duration, ended, errorBox, fill, h, link, time } from "./util.js";

export function detailView(root, id) {
  const live = []; // events received while this page is open: [at, text]
  let session = null;
  let error = "";
  let cancelling = false;

  async function reload() {
    try {
      session = await api(`/api/sessions/${encodeURIComponent(id)}`);
      error = "";
    } catch (e) {
      error = e.status === 404 ? "No such session (it may have expired)." : e.message;
    }
    draw();
  }

  async function cancel() {
    if (!confirm(`Cancel session ${session.task_name}?`)) return;
    cancelling = true;
    draw();
    try {
      session = await api(`/api/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
      error = "";
    } catch (e) {
      error = e.message;
    }
    cancelling = false;
    draw();
    root.querySelector("h1")?.focus();
  }

  async function copyLink(e) {
    try {
      await navigator.clipboard.writeText(location.href);
      e.target.textContent = "Link copied";
    } catch {
      e.target.textContent = "Copy the address bar";
    }
  }

  function draw() {
    const focused = document.activeElement?.id;
    if (!session) {
      fill(root, h("h1", {}, "Session"), errorBox(error), error ? null : h("p", { class: "muted" }, "Loading…"));
      return;
    }
    const s = session;
    const isLive = !ended(s.state);
    fill(root,
      h("div", { class: "title" },
        h("h1", {}, s.task_name, " ", badge(s.state)),
        h("div", { class: "actions" },
          isLive ? h("button", { id: "cancel", class: "danger", type: "button", onclick: cancel, disabled: cancelling },
            cancelling ? "Cancelling…" : "Cancel session") : null,
          h("button", { type: "button", onclick: copyLink }, "Copy link"))),
      errorBox(error),
      h("p", { class: "live-state", role: "status", "aria-live": "polite" },
        isLive ? (s.step ? `Running step ${s.step.round}: ${s.step.tools.join(", ")}`
          : s.state === "created" ? "Waiting for the device to accept the task…" : "Running…")
          : `Ended ${s.state}${s.reason ? ` (${s.reason})` : ""}.`),
      h("div", { class: "detail" },
        h("div", { class: "main-col" },
          s.request !== undefined ? h("section", {}, h("h2", {}, "Request"), h("pre", { class: "request" }, s.request)) : null,
          results(s.result)),
        h("aside", { class: "side-col", "aria-label": "About this session" },
          h("dl", { class: "facts" },
            fact("Session", h("span", { class: "mono" }, s.session_id)),
            fact("Executor", link(`/ui/sessions?client=${encodeURIComponent(s.client_id)}`, s.client_id)),
            fact("Requester", s.requester ? `${s.requester} (${s.origin})` : `HTTP API (${s.origin})`),
            fact("Duration", duration(between(s.started_at || s.created_at, s.finished_at))),
            s.error ? fact("Error", h("span", { class: "error-text" }, s.error)) : null),
          h("h2", {}, "Timeline"), timeline(s))));
    if (focused) document.getElementById(focused)?.focus();
  }

  function fact(name, value) {
    return [h("dt", {}, name), h("dd", {}, value)];
  }

  function timeline(s) {
    const steps = [["created", s.created_at], ["running", s.started_at], [s.state, ended(s.state) ? s.finished_at : null]]
      .filter(([, at]) => at);
    return h("ol", { class: "timeline" },
      steps.map(([state, at]) => h("li", {}, badge(state), " ", time(at), h("small", { class: "muted" }, ` ${clock(at)}`))),
      live.map(([at, text]) => h("li", { class: "event" }, h("small", { class: "muted" }, `${clock(at)} `), text)));
  }

  const later = debounce(reload, 200);
  reload();

  return {
    reload,
    onEvent(ev) {
      if (ev.data.session_id !== id) return;
      const d = ev.data;
      const text = ev.event === "session_round" ? `round ${d.round}: ${d.statuses.join(", ")}`
        : ev.event === "session_ended" ? `ended ${d.state}${d.reason ? ` (${d.reason})` : ""}`
        : `${ev.event.replace("session_", "")}: ${d.state}`;
      live.push([new Date().toISOString(), text]);
      later();
    },
  };
}

/** The rounds, an agent's transcript and answer, a device's own result. */
function results(result) {
  if (!result || typeof result !== "object") return null;
  const parts = [];
  const rounds = Array.isArray(result.rounds) ? result.rounds : [];
  parts.push(h("section", {}, h("h2", {}, `Rounds (${rounds.length})`),
    rounds.length ? rounds.map((r, i) => h("article", { class: "round" },
      h("h3", {}, `Round ${i + 1}`),
      (r.action_results || []).map(action))) : h("p", { class: "muted" }, "No results yet.")));
  const own = result.result && typeof result.result === "object" ? result.result : null;
  const agent = result.transcript ? result : own?.transcript ? own : null;
  if (agent) parts.push(transcript(agent));
  else if (result.result !== undefined && result.result !== null) {
    parts.push(h("section", {}, h("h2", {}, "Device's result"), h("pre", {}, JSON.stringify(result.result, null, 2))));
  }
  return parts;
}

/** One action's result: status, command, exit code, duration, output as a terminal's. */
function action(a) {
  const r = a.result && typeof a.result === "object" ? a.result : null;
  const meta = [];
  if (r?.exit_code !== undefined && r.exit_code !== null) meta.push(`exit ${r.exit_code}`);
  if (r?.duration_ms !== undefined) meta.push(duration(r.duration_ms));
  if (r?.timed_out) meta.push("timed out");
  return h("div", { class: `action s-${a.status}` },
    h("p", {}, badge(a.status), " ",
      r?.command ? h("code", {}, `$ ${r.command}`) : h("span", { class: "muted" }, a.namespace || ""),
      meta.length ? h("small", { class: "muted" }, ` · ${meta.join(" · ")}`) : null),
    a.error ? h("p", { class: "error-text" }, a.error) : null,
    r && typeof r.stdout === "string" ? terminal("stdout", r.stdout, r.stdout_truncated) : null,
    r && typeof r.stderr === "string" && r.stderr ? terminal("stderr", r.stderr, r.stderr_truncated) : null,
    r && r.stdout === undefined && a.result !== null
      ? h("pre", { class: "json" }, JSON.stringify(a.result, null, 2)) : null,
    !r && a.result !== null && a.result !== undefined ? h("pre", { class: "json" }, String(a.result)) : null);
}

function terminal(name, text, truncated) {
  return h("figure", { class: "terminal" },
    h("figcaption", {}, name, truncated ? " (truncated by the device)" : ""),
    h("pre", { class: name, tabindex: 0 }, text || h("span", { class: "muted" }, "(empty)")));
}

/** An agent's steps: text, tool calls, token usage; then its answer and total tokens. */
function transcript(agent) {
  const steps = Array.isArray(agent.transcript) ? agent.transcript : [];
  let prompt = 0, completion = 0;
  for (const s of steps) {
    prompt += s.usage?.prompt_tokens || 0;
    completion += s.usage?.completion_tokens || 0;
  }
  return h("section", {}, h("h2", {}, "Agent"),
    h("ol", { class: "steps" }, steps.map((s) => h("li", {},
      h("p", {}, h("strong", {}, `Step ${s.step ?? ""}`),
        s.usage ? h("small", { class: "muted" }, ` · ${s.usage.prompt_tokens ?? 0} + ${s.usage.completion_tokens ?? 0} tokens`) : null),
      s.text ? h("p", { class: "model-text" }, s.text) : null,
      (s.tool_calls || []).map((c) => h("p", { class: "call" }, "→ ", h("code", {}, c.name),
        " ", h("code", { class: "args" }, typeof c.arguments === "string" ? c.arguments : JSON.stringify(c.arguments)))),
      s.note ? h("p", { class: "muted" }, s.note) : null))),
    agent.answer !== undefined ? h("div", { class: "answer" }, h("h3", {}, "Answer"), h("p", {}, String(agent.answer))) : null,
    h("p", { class: "muted" }, `Tokens: ${prompt} prompt + ${completion} completion`));
}
