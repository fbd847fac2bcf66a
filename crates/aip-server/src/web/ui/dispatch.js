// The dispatch form: a device (searchable), a natural-language request or a command plan
// (one command per line, or JSON), an optional task name; then the new session's page.

import { api } from "./api.js";
import { errorBox, field, fill, h } from "./util.js";
import { navigate } from "./app.js";

const TASK_NAME = "^[A-Za-z0-9_\\-][A-Za-z0-9._\\-]{0,127}$";

export function dispatchView(root, _param, query) {
  const devices = h("datalist", { id: "devices" });
  const target = h("input", { id: "target", list: "devices", required: true, autocomplete: "off",
    value: query.get("target") || "", placeholder: "search devices" });
  const mode = (value, label, checked) => h("label", {},
    h("input", { type: "radio", name: "mode", value, checked }), ` ${label}`);
  const text = h("textarea", { id: "request", rows: 8, required: true, spellcheck: "false" });
  const taskName = h("input", { id: "task-name", pattern: TASK_NAME, placeholder: "optional" });
  const hint = h("small", { class: "muted", id: "request-hint" });
  const errors = h("div");
  const submit = h("button", { type: "submit" }, "Dispatch");

  fill(root,
    h("h1", {}, "Dispatch a task"),
    h("form", { id: "dispatch", class: "card", onsubmit: send },
      field("Device", target), devices,
      h("fieldset", { class: "modes" }, h("legend", {}, "Kind"),
        mode("plan", "Command plan", true), mode("request", "Natural-language request", false)),
      h("div", { class: "field" }, h("label", { for: "request" }, "Task"), text, hint),
      field("Task name", taskName, "Letters, digits, . _ - (a name to find the result by)"),
      errors, submit));

  const chosenMode = () => root.querySelector("input[name=mode]:checked").value;
  function describe() {
    hint.textContent = chosenMode() === "plan"
      ? "One shell command per line (each an execute_command step), or a JSON list of commands / a {\"steps\": …} plan."
      : "What the device should do, in plain words (planned by the server's model, or by the device's own).";
  }
  root.querySelector(".modes").addEventListener("change", describe);
  describe();

  api("/api/clients").then((list) => {
    fill(devices, list.clients.filter((c) => c.type === "device").map((c) =>
      h("option", { value: c.client_id },
        [c.platform, ...Object.entries(c.tags || {}).map(([k, v]) => `${k}=${v}`)].filter(Boolean).join(" "))));
  }).catch(() => {});

  /** The dispatch body for what was typed; throws a message when the plan is not valid. */
  function body() {
    const out = { target_id: target.value.trim() };
    if (taskName.value.trim()) out.task_name = taskName.value.trim();
    const raw = text.value.trim();
    if (chosenMode() === "request") return { ...out, request: raw };
    if (raw.startsWith("[") || raw.startsWith("{")) {
      let plan;
      try { plan = JSON.parse(raw); } catch (e) { throw new Error(`The plan is not valid JSON: ${e.message}`); }
      return Array.isArray(plan) ? { ...out, request: "plan", commands: plan } : { ...out, request: raw };
    }
    const lines = raw.split("\n").map((l) => l.trim()).filter(Boolean);
    return {
      ...out, request: lines.join("\n"),
      commands: lines.map((command) => ({ tool_name: "execute_command", tool_type: "action", parameters: { command } })),
    };
  }

  async function send(e) {
    e.preventDefault();
    fill(errors);
    let payload;
    try { payload = body(); } catch (err) { fill(errors, errorBox(err.message)); return; }
    submit.disabled = true;
    submit.textContent = "Dispatching…";
    try {
      const r = await api("/api/dispatch", { method: "POST", body: payload });
      navigate(`/ui/sessions/${encodeURIComponent(r.session_id)}`);
    } catch (err) {
      fill(errors, errorBox(err.message));
      submit.disabled = false;
      submit.textContent = "Dispatch";
      errors.querySelector("[role=alert]")?.focus();
    }
  }

  return {};
}
