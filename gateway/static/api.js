// The gateway's agent API as the inbox page uses it: JSON over fetch, and the live stream.
// Nothing here touches the DOM, so the page's logic and the wire format stay apart.

/** An API answer that was not 2xx, with the gateway's machine-readable error code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A random id for Idempotency-Key; crypto.randomUUID needs a secure context, this does not. */
export function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Milliseconds an API request may take before it counts as the network failing (a reply
 * that timed out goes again under the same Idempotency-Key: sent once). */
export const REQUEST_TIMEOUT = 15000;

export class Api {
  constructor(token, timeout = REQUEST_TIMEOUT / 1000) {
    this.token = token;
    this.timeout = timeout * 1000;
  }

  async call(method, path, body, extraHeaders) {
    const headers = { Authorization: "Bearer " + this.token, ...(extraHeaders || {}) };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    // A network that drops packets without a word (a cut cable, a laptop's Wi-Fi) leaves a
    // request waiting for minutes: give up after REQUEST_TIMEOUT, as for a refused connection.
    init.signal = AbortSignal.timeout(this.timeout);
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "network", "The gateway cannot be reached; retrying when it is back.");
    }
    if (resp.status === 204) return null;
    let data = null;
    try {
      data = await resp.json();
    } catch (err) {
      data = null;
    }
    if (!resp.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(resp.status, error.code || "error", error.message || resp.statusText);
    }
    return data;
  }

  get(path) {
    return this.call("GET", path);
  }

  post(path, body, headers) {
    return this.call("POST", path, body === undefined ? {} : body, headers);
  }

  /** An attachment's bytes (a Blob, with the type the gateway served), fetched with the token:
   * a plain link cannot carry the Authorization header. */
  async attachment(conversationId, messageId, index) {
    const path = this.conversationPath(conversationId, "messages") + "/" +
      encodeURIComponent(messageId) + "/attachments/" + index;
    let resp;
    try {
      resp = await fetch(path, { headers: { Authorization: "Bearer " + this.token }, cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, "network", "The gateway cannot be reached; retrying when it is back.");
    }
    if (!resp.ok) {
      let error = {};
      try {
        error = ((await resp.json()) || {}).error || {};
      } catch (err) {
        error = {};
      }
      throw new ApiError(resp.status, error.code || "error", error.message || resp.statusText);
    }
    return resp.blob();
  }

  conversationPath(id, action) {
    return "/api/v1/conversations/" + encodeURIComponent(id) + (action ? "/" + action : "");
  }
}

/**
 * The agent's live WebSocket (/api/v1/stream). Its open connection is the agent's presence, so
 * it reconnects by itself with capped exponential backoff and `after=` the last cursor seen:
 * the gateway replays what was missed, in order, before going live again.
 */
/** Seconds between the stream's keep-alive pings; a ping unanswered for as long again means
 * the network dropped the socket without closing it (a proxy, a laptop's Wi-Fi), and the
 * stream reconnects instead of showing "live" while nothing arrives: within 10 s, before the
 * gateway itself counts the agent gone (15 s), so the page never says "live" for an agent
 * the gateway has already set offline. */
export const KEEPALIVE = 5;

export class Stream {
  constructor(token, { onEvent, onHello, onState, keepalive = KEEPALIVE }) {
    this.keepalive = keepalive * 1000;
    this.token = token;
    this.onEvent = onEvent;
    this.onHello = onHello;
    this.onState = onState;
    this.cursor = null;
    this.retry = 0;
    this.opens = 0; // sockets opened: a hello after the first one's is a catch-up
    this.ws = null;
    this.timer = null;
    this.checking = false; // a closed socket's cursor is being checked (see `closed`)
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  /** Try again now instead of after the back-off: the network is back (the browser says so,
   * or a request just went through), and the agent's disconnect grace is running. */
  reconnectNow() {
    // Not while a closed socket's cursor is being checked: that ends in a connect of its own.
    if (this.stopped || this.ws || this.checking) return;
    clearTimeout(this.timer);
    this.retry = 0;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, "signed out");
    this.ws = null;
  }

  connect() {
    if (this.ws || this.stopped) return; // one socket at a time
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = scheme + "//" + location.host + "/api/v1/stream?access_token=" +
      encodeURIComponent(this.token);
    if (this.cursor) url += "&after=" + encodeURIComponent(this.cursor);
    const ws = new WebSocket(url);
    const resumeFrom = this.cursor;
    let opened = false;
    let pinger = null;
    let answer = null;
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      this.opens++;
      this.retry = 0;
      this.onState("live");
      pinger = setInterval(() => {
        if (ws.readyState !== WebSocket.OPEN) return;
        ws.send("ping");
        if (!answer) {
          answer = setTimeout(() => {
            // Silent past its keep-alive: drop it without waiting for a close handshake that
            // a dead network never completes, and reconnect from our cursor.
            ws.onmessage = null;
            ws.onclose = null;
            try { ws.close(); } catch (err) { /* already closing */ }
            closed();
          }, this.keepalive);
        }
      }, this.keepalive);
    };
    ws.onmessage = (e) => {
      clearTimeout(answer);
      answer = null;
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      if (frame.type === "hello") {
        // Only the first connection starts from "now"; later ones resume from our own cursor.
        if (!this.cursor && frame.cursor) this.cursor = frame.cursor;
        // A reconnection, even when the first socket died before its own hello came.
        this.onHello(this.opens > 1);
        return;
      }
      if (frame.type === "pong") return;
      if (frame.cursor) this.cursor = frame.cursor; // typing events have none: not in the log
      this.onEvent(frame);
    };
    const closed = async () => {
      clearInterval(pinger);
      clearTimeout(answer);
      if (this.ws !== ws || this.stopped) return;
      this.ws = null;
      this.onState("reconnecting");
      // Refused before the upgrade while resuming: a browser does not say why. If the gateway
      // no longer knows our cursor (its store was replaced), resuming from it would be
      // refused forever, and the agent would be offline the whole time: start from now (the
      // page reloads its lists on every hello, so nothing is missed).
      if (!opened && resumeFrom) {
        this.checking = true;
        try {
          if ((await this.cursorRefused(resumeFrom)) && this.cursor === resumeFrom) {
            this.cursor = null;
          }
        } finally {
          this.checking = false;
        }
      }
      if (this.stopped || this.ws) return;
      // At most 5 s apart: the agent's disconnect grace (30 s by default) runs meanwhile.
      const delay = Math.min(5000, 500 * 2 ** this.retry++) * (0.5 + Math.random() / 2);
      this.timer = setTimeout(() => this.connect(), delay);
    };
    ws.onclose = closed;
  }

  /** Whether the gateway answers 400 for this cursor (one it never issued), by the event log,
   * which checks a cursor the same way the stream does. False when it cannot be asked. */
  async cursorRefused(cursor) {
    try {
      const resp = await fetch("/api/v1/events?limit=1&after=" + encodeURIComponent(cursor), {
        headers: { Authorization: "Bearer " + this.token },
      });
      return resp.status === 400;
    } catch (err) {
      return false; // the gateway is unreachable: keep the cursor and retry
    }
  }
}
