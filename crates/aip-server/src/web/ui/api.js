// The HTTP API as the dashboard uses it: the key (typed by the user, kept in this tab's
// sessionStorage, sent as X-API-Key, never put in a URL), JSON calls, and the live event
// stream read with fetch() and a ReadableStream (EventSource cannot send a header).

const KEY = "aip.apiKey";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

let authLost = () => {};

/** `fn` runs when the server answers 401: the key is gone or wrong. */
export function onAuthLost(fn) {
  authLost = fn;
}

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const h = new Headers(extra);
  const key = getKey();
  if (key) h.set("X-API-Key", key);
  return h;
}

/** A call to the API; the answer's JSON, or an ApiError with the server's `detail`. */
export async function api(path, { method = "GET", body, key } = {}) {
  const h = headers(body ? { "Content-Type": "application/json" } : {});
  if (key !== undefined) h.set("X-API-Key", key);
  let resp;
  try {
    resp = await fetch(path, {
      method, headers: h, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "The server cannot be reached");
  }
  let json = null;
  try { json = await resp.json(); } catch { /* not JSON */ }
  if (resp.status === 401 && key === undefined) authLost();
  if (!resp.ok) throw new ApiError(resp.status, json?.detail || `HTTP ${resp.status}`);
  return json;
}

/** Splits an SSE block into {id, event, data}; comments and retry lines give null. */
export function parseBlock(block) {
  let id = null, event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const name = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (name === "id") id = value;
    else if (name === "event") event = value;
    else if (name === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { id, event, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}

/**
 * Follows GET /api/events: `onEvent({id, event, data})` per event, `onState(s)` with
 * "connecting", "live" (also after every reconnect: reload what you show) or
 * "reconnecting". Reconnects with Last-Event-ID and backoff. Returns a stop function.
 */
export function follow(onEvent, onState) {
  let stopped = false, lastId = null, delay = 1000, ctrl = null;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  (async () => {
    onState("connecting");
    while (!stopped) {
      ctrl = new AbortController();
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (lastId) h.set("Last-Event-ID", lastId);
        const resp = await fetch("/api/events", { headers: h, signal: ctrl.signal, cache: "no-store" });
        if (resp.status === 401) { authLost(); return; }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        delay = 1000;
        onState("live");
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buf.indexOf("\n\n")) >= 0) {
            const ev = parseBlock(buf.slice(0, end));
            buf = buf.slice(end + 2);
            if (!ev) continue;
            if (ev.id) lastId = ev.id;
            onEvent(ev);
          }
        }
      } catch {
        /* dropped, aborted or refused: retried below unless stopped */
      }
      if (stopped) return;
      onState("reconnecting");
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  })();
  return () => {
    stopped = true;
    ctrl?.abort();
  };
}
