// The dashboard's entry point: sign-in, the router (paths under /ui/, so a session's page
// can be shared as a link), the one live event stream every view listens to.

import { api, follow, getKey, onAuthLost, setKey } from "./api.js";
import { refreshTimes } from "./util.js";
import { fleetView } from "./fleet.js";
import { sessionsView } from "./sessions.js";
import { detailView } from "./detail.js";
import { dispatchView } from "./dispatch.js";
import { jobView, jobsView } from "./jobs.js";

const $ = (id) => document.getElementById(id);
let current = null; // the mounted view
let stopEvents = null;

/** The view for a path: [factory, parameter]. */
function route(path) {
  const p = path.replace(/\/+$/, "");
  if (p === "/ui" || p === "") return [fleetView];
  if (p === "/ui/sessions") return [sessionsView];
  if (p === "/ui/dispatch") return [dispatchView];
  if (p === "/ui/jobs") return [jobsView];
  const m = p.match(/^\/ui\/sessions\/([^/]+)$/);
  if (m) return [detailView, decodeURIComponent(m[1])];
  const j = p.match(/^\/ui\/jobs\/([^/]+)$/);
  if (j) return [jobView, decodeURIComponent(j[1])];
  return [notFound];
}

function notFound(root) {
  root.replaceChildren();
  const h1 = document.createElement("h1");
  h1.textContent = "Page not found";
  root.append(h1);
  return {};
}

/** Shows the view of the current location. */
function render() {
  current?.unmount?.();
  const [factory, param] = route(location.pathname);
  // A fresh element per view: a view's late answers (a reply to a call made before the
  // user moved on) then land in a detached element instead of the next view.
  const root = document.createElement("div");
  $("view").replaceChildren(root);
  current = factory(root, param, new URLSearchParams(location.search)) || {};
  for (const a of document.querySelectorAll("[data-nav]")) {
    const active = a.getAttribute("href").replace(/\/$/, "") === location.pathname.replace(/\/$/, "")
      || (a.dataset.nav === "sessions" && location.pathname.startsWith("/ui/sessions/"))
      || (a.dataset.nav === "jobs" && location.pathname.startsWith("/ui/jobs/"));
    if (active) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const heading = root.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    document.title = `${heading.textContent} · aip`;
  }
}

/** Goes to `href` (under /ui/) without reloading the page. */
export function navigate(href, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", href);
  else history.pushState(null, "", href);
  render();
  $("view").querySelector("h1")?.focus();
}

function onEvent(ev) {
  current?.onEvent?.(ev);
}

function onStreamState(state) {
  const el = $("live");
  el.dataset.state = state;
  el.textContent = state === "live" ? "Live" : state === "connecting" ? "Connecting…" : "Reconnecting…";
  // Whatever may have been missed is reloaded on every (re)connection.
  if (state === "live") current?.reload?.();
}

function signedIn() {
  $("login").hidden = true;
  $("view").hidden = false;
  $("nav").hidden = false;
  $("logout").hidden = !getKey();
  render();
  stopEvents?.();
  stopEvents = follow((ev) => {
    if (ev.event === "resync") current?.reload?.();
    else onEvent(ev);
  }, onStreamState);
}

function signedOut(message = "") {
  stopEvents?.();
  stopEvents = null;
  current?.unmount?.();
  current = null;
  $("view").hidden = true;
  $("view").replaceChildren();
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("live").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message;
  document.title = "Sign in · aip";
  $("key").focus();
}

async function login(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  const button = $("login").querySelector("button");
  button.disabled = true;
  try {
    await api("/api/clients", { key });
    setKey(key);
    $("key").value = "";
    signedIn();
  } catch (e) {
    $("login-error").textContent = e.status === 401 ? "Wrong API key." : e.message;
    $("key").select();
  } finally {
    button.disabled = false;
  }
}

async function start() {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", () => {
    setKey(null);
    signedOut("Signed out.");
  });
  onAuthLost(() => {
    setKey(null);
    signedOut("The API key was refused; sign in again.");
  });
  // Links under /ui/ are handled here, without a page load.
  document.addEventListener("click", (e) => {
    const a = e.target.closest?.("a[href^='/ui']");
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(a.getAttribute("href"));
  });
  window.addEventListener("popstate", render);
  setInterval(() => refreshTimes(), 15000);
  try {
    // Without a stored key this succeeds only on a server that needs none.
    await api("/api/clients", { key: getKey() ?? "" });
    signedIn();
  } catch (e) {
    signedOut(e.status === 401 ? "" : e.message);
  }
}

start();
