/* Channel gateway web chat widget. No dependencies; embed with one tag:
 *   <script src="https://GATEWAY/webchat/widget.js" data-channel="site" async></script>
 * Optional attributes: data-gateway (base URL, default: where this script came from),
 * data-title, data-name (visitor display name), data-open="true" (start opened).
 * The session token (and any message not yet acknowledged) is kept in localStorage, so a reload
 * resumes the same conversation: the first socket of a page load asks for the whole history
 * (?after=0, lower than every message id), later reconnects for what came after the last message
 * shown. Unacknowledged messages are resent with the same client_id (never duplicated).
 * The token survives network failures and gateway restarts (reconnects back off, and resume after
 * the last message shown); only a 401 `invalid_token` from the session endpoint ends the visitor:
 * then a new session starts with nothing of the old one (no message id of another visitor).
 * Every customer or agent text is rendered with textContent: never as HTML.
 * It lives in a shadow root with a constructed stylesheet, so the host page's CSS does not
 * reach it and a strict Content-Security-Policy (style-src 'self') does not unstyle it.
 * Messages go one at a time, in order: a rate-limited one is resent after the wait the gateway
 * names, before any later one. A socket that stops answering its keep-alive (a silent network,
 * a proxy that dropped it) is replaced; data-keepalive="20" sets the interval in seconds.
 * Each agent reply shown while the panel is open and the page visible gets a read receipt;
 * while it is closed, the launcher counts unread replies.
 */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-channel]");
  if (!script) return;
  var channel = script.getAttribute("data-channel") || "site";
  var base = script.getAttribute("data-gateway") || new URL(script.src, location.href).origin;
  var title = script.getAttribute("data-title") || "Chat with us";
  var visitorName = (script.getAttribute("data-name") || "").slice(0, 80) || undefined;
  var keepalive = Math.max(1, Number(script.getAttribute("data-keepalive")) || 20) * 1000;
  var storeKey = "gw-webchat:" + base + ":" + channel;

  var state = load();
  var ws = null;
  var retry = 0;
  var pending = state.pending || {}; // client_id -> text, until acknowledged (survives reloads)
  var shown = {};   // message id -> element
  var lastId = null; // the last message the gateway sent this page: where a reconnect resumes
  var replayAll = false; // the gateway refused `after=lastId`: ask for the whole history once
  var typingTimer = null;
  var lastTyping = 0;
  var inFlight = null; // the client_id sent and not yet acknowledged: one at a time, in order
  var heldUntil = 0;   // rate limited: nothing is sent before this time (ms)
  var unread = {};     // agent reply id -> true, until a read receipt goes for it
  var stopped = false; // the gateway refused this site or this widget's settings for good
  var chatState = null; // the chat's state as last told (each socket says it on connecting)

  function load() {
    try { return JSON.parse(localStorage.getItem(storeKey)) || {}; } catch (e) { return {}; }
  }
  function save() {
    state.pending = pending;
    delete state.after; // older versions kept it; the history is replayed on each page load
    try { localStorage.setItem(storeKey, JSON.stringify(state)); } catch (e) { /* private mode */ }
  }
  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "c" + Date.now().toString(36) + Math.random().toString(36).slice(2);
  }
  // Set a node's text only when it changes: a live region re-announces any text set again.
  function say(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  }

  var css = "" +
    ".gwc-button{position:fixed;right:16px;bottom:16px;z-index:2147483000;border:0;border-radius:24px;" +
    "padding:12px 18px;background:#1f6feb;color:#fff;font:600 14px system-ui,sans-serif;cursor:pointer;box-shadow:0 2px 8px rgba(0,0,0,.25)}" +
    ".gwc-panel{position:fixed;right:16px;bottom:72px;z-index:2147483000;width:min(360px,calc(100vw - 32px));height:min(520px,calc(100vh - 96px));" +
    "display:none;flex-direction:column;background:#fff;border-radius:12px;box-shadow:0 4px 24px rgba(0,0,0,.25);font:14px system-ui,sans-serif;overflow:hidden}" +
    ".gwc-panel.gwc-open{display:flex}.gwc-head{background:#1f6feb;color:#fff;padding:12px 14px;font-weight:600;display:flex;justify-content:space-between}" +
    ".gwc-title{margin:0;font:inherit}.gwc-status{font-weight:400;font-size:12px}.gwc-log{flex:1;overflow-y:auto;padding:10px;background:#f6f8fa}" +
    ".gwc-msg{max-width:80%;margin:4px 0;padding:8px 10px;border-radius:10px;white-space:pre-wrap;word-wrap:break-word}" +
    ".gwc-in{background:#1f6feb;color:#fff;margin-left:auto}.gwc-out{background:#fff;border:1px solid #d0d7de}" +
    // Being sent: a hollow bubble (dark blue on white, 12:1), not faded text (2.4:1).
    ".gwc-msg.gwc-unsent{background:#fff;color:#0a3069;border:1px dashed #1f6feb}.gwc-note{text-align:center;color:#57606a;font-size:12px;margin:6px 0}" +
    ".gwc-typing{color:#57606a;font-size:12px;padding:0 10px 4px;min-height:16px;background:#f6f8fa}" +
    // The input shows where it is (its border, 4.8:1 on white) and when it has the focus (a
    // 2px ring, 4.6:1 on white): its own border is not enough of a change to see focus by.
    ".gwc-form{display:flex;gap:6px;padding:8px;border-top:1px solid #d0d7de}" +
    ".gwc-input{flex:1;min-width:0;border:1px solid #6e7781;border-radius:6px;padding:8px 10px;" +
    "font:inherit;color:#24292f;background:#fff}" +
    ".gwc-input:focus-visible{outline:2px solid #1f6feb;outline-offset:1px;border-color:#1f6feb}" +
    ".gwc-send{border:0;background:#fff;color:#1f6feb;font-weight:600;padding:0 14px;cursor:pointer}" +
    ".gwc-close{border:0;background:none;color:#fff;font:600 18px/1 system-ui,sans-serif;cursor:pointer;padding:0 0 0 10px}" +
    ".gwc-badge{display:inline-block;min-width:18px;margin-left:8px;padding:1px 5px;border-radius:9px;background:#cf222e;color:#fff;font-size:12px}" +
    ".gwc-badge:empty{display:none}" +
    // Not sent: said in words (red, below the struck text) and by a red border, at full contrast.
    ".gwc-msg.gwc-failed{background:#fff;color:#24292f;border:1px solid #cf222e}" +
    ".gwc-failed .gwc-text{text-decoration:line-through}" +
    // Read by screen readers, not shown: who wrote a message, whether it went.
    ".gwc-sr{position:absolute;width:1px;height:1px;margin:-1px;padding:0;border:0;overflow:hidden;" +
    "clip:rect(0 0 0 0);clip-path:inset(50%);white-space:nowrap}" +
    ".gwc-failed .gwc-state{position:static;display:block;width:auto;height:auto;margin:2px 0 0;" +
    "overflow:visible;clip:auto;clip-path:none;white-space:normal;color:#cf222e;font-size:12px;font-weight:600}" +
    ".gwc-failed .gwc-state::first-letter{text-transform:uppercase}" +
    ".gwc-files{display:block}.gwc-file{display:block;color:#0550ae;text-decoration:underline;overflow-wrap:anywhere}" +
    ".gwc-text:empty{display:none}";

  // The widget's own corner of the page: the host's stylesheets stop at the shadow root, and
  // a constructed stylesheet is not an inline <style> that a page's CSP may block.
  var host = document.createElement("div");
  host.setAttribute("data-gw-webchat", channel);
  host.style.setProperty("all", "initial");
  var root = host;
  if (host.attachShadow) {
    root = host.attachShadow({mode: "open"});
    try {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(css);
      root.adoptedStyleSheets = [sheet];
    } catch (e) {
      root.appendChild(el("style")).textContent = css;
    }
  } else {
    document.head.appendChild(el("style")).textContent = css;
  }

  var button = el("button", "gwc-button", title);
  button.type = "button";
  button.setAttribute("aria-label", title);
  button.setAttribute("aria-expanded", "false");
  var badge = button.appendChild(el("span", "gwc-badge"));
  var panel = el("section", "gwc-panel");
  panel.setAttribute("aria-label", title);
  panel.id = "gwc-panel";
  button.setAttribute("aria-controls", panel.id);
  var head = el("div", "gwc-head");
  head.appendChild(el("h2", "gwc-title", title)); // a heading screen readers can jump to
  // Both are announced when they change (politely); say() sets them only when they do.
  var status = el("span", "gwc-status", "connecting…");
  status.setAttribute("role", "status");
  var close = el("button", "gwc-close", "×");
  close.type = "button";
  close.setAttribute("aria-label", "Close chat");
  var tools = el("span");
  tools.appendChild(status);
  tools.appendChild(close);
  head.appendChild(tools);
  var log = el("div", "gwc-log");
  log.setAttribute("role", "log");
  var typing = el("div", "gwc-typing");
  typing.setAttribute("aria-live", "polite");
  var form = el("form", "gwc-form");
  var input = el("input", "gwc-input");
  input.placeholder = "Write a message…";
  input.setAttribute("aria-label", "Message");
  input.maxLength = 4096;
  var send = el("button", "gwc-send", "Send");
  send.type = "submit";
  form.appendChild(input);
  form.appendChild(send);
  panel.appendChild(head);
  panel.appendChild(log);
  panel.appendChild(typing);
  panel.appendChild(form);

  function mount() {
    root.appendChild(panel);
    root.appendChild(button);
    document.body.appendChild(host);
    Object.keys(pending).forEach(function (id) { render(null, id); });
    // Opened as remembered (or as the page asks), without taking the focus: the visitor came
    // to the page, not to the chat, and the page's own focus order starts at its top.
    if (script.getAttribute("data-open") === "true" || state.open) toggle(true, false);
  }
  // Open or close the panel. Only the visitor opening it (the launcher) moves focus into it.
  function toggle(open, focusInput) {
    var isOpen = open === undefined ? !panel.classList.contains("gwc-open") : open;
    panel.classList.toggle("gwc-open", isOpen);
    button.setAttribute("aria-expanded", String(isOpen));
    state.open = isOpen;
    save();
    if (isOpen) {
      if (focusInput) input.focus();
      receipts();
    } else {
      button.focus();
    }
  }
  button.addEventListener("click", function () { toggle(undefined, true); });
  close.addEventListener("click", function () { toggle(false); });
  panel.addEventListener("keydown", function (e) {
    if (e.key === "Escape") toggle(false);
  });
  document.addEventListener("visibilitychange", receipts);

  // Read receipts: an agent reply counts as read once shown with the panel open and the page
  // visible; until then the launcher shows how many wait.
  function receipts() {
    var ids = Object.keys(unread);
    var seen = panel.classList.contains("gwc-open") && document.visibilityState === "visible";
    if (seen && ws && ws.readyState === 1) {
      ids.forEach(function (id) {
        ws.send(JSON.stringify({type: "read", message_id: id}));
        delete unread[id];
      });
      ids = [];
    }
    badge.textContent = ids.length && !panel.classList.contains("gwc-open") ? String(ids.length) : "";
    button.setAttribute("aria-label", ids.length ? title + " (" + ids.length + " unread)" : title);
  }

  // Confirmed messages are shown in the order their frames come, which is the order the
  // gateway stored them (its replay, its pushes and its acks all follow it; ids need not:
  // they come from each gateway node's clock). Messages still being sent stay last.
  function place(node) {
    var unsent = log.querySelector(".gwc-unsent");
    if (unsent !== node) log.insertBefore(node, unsent);
  }

  // A message or note in the log: who wrote it (hidden, for screen readers: the log reads as
  // one run of text otherwise), its text, and whether it went (hidden while being sent).
  function entry(cls) {
    var node = el("div", cls);
    // Right-to-left text reads right, whatever the page is. The hidden parts have a direction
    // of their own, so "You:" does not make every message left-to-right.
    node.setAttribute("dir", "auto");
    node.appendChild(el("span", "gwc-sr gwc-who")).setAttribute("dir", "auto");
    node.appendChild(el("span", "gwc-text"));
    node.appendChild(el("span", "gwc-sr gwc-state")).setAttribute("dir", "auto");
    return node;
  }
  function fill(node, who, text, state) {
    say(node.querySelector(".gwc-who"), who + " ");
    say(node.querySelector(".gwc-text"), text);
    say(node.querySelector(".gwc-state"), state ? " " + state : "");
  }
  // An agent's files, as links the visitor opens (http and https only: nothing else is a file
  // a visitor should be sent to); null when there is none.
  function links(attachments) {
    var found = (attachments || []).filter(function (a) {
      return a && typeof a.url === "string" && /^https?:\/\//i.test(a.url);
    });
    if (!found.length) return null;
    var box = el("span", "gwc-files");
    found.forEach(function (a) {
      var link = el("a", "gwc-file", "📎 " + (a.filename || a.caption || a.kind || "file"));
      link.href = a.url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      box.appendChild(link);
    });
    return box;
  }
  function author(message) {
    return message.direction === "in" ? "You:" : "Agent:"; // visitors are not told agents' names
  }

  function render(message, clientId) {
    var key = message ? message.id : "pending:" + clientId;
    var ownId = message ? message.client_id || clientId : clientId;
    var node = shown[key] || (ownId && shown["pending:" + ownId]);
    if (!node) {
      node = entry("gwc-msg");
      log.insertBefore(node, message ? log.querySelector(".gwc-unsent") : null);
    }
    if (message) {
      if (!shown[message.id]) {
        node.className = "gwc-msg";  // no longer unsent: placed among the confirmed ones
        place(node);
      }
      delete shown["pending:" + ownId];
      shown[message.id] = node;
      node.className = "gwc-msg " + (message.direction === "in" ? "gwc-in" : "gwc-out");
      var files = links(message.attachments);
      fill(node, author(message), message.text || (files ? "" : "[" + message.kind + "]"));
      var old = node.querySelector(".gwc-files");
      if (old) node.removeChild(old);
      if (files) node.insertBefore(files, node.querySelector(".gwc-state"));
      node.setAttribute("data-id", message.id);
      if (message.direction === "out" && message.status !== "read") unread[message.id] = true;
      lastId = message.id; // where a reconnect resumes: the last one the gateway sent
    } else {
      shown[key] = node;
      node.className = "gwc-msg gwc-in gwc-unsent";
      fill(node, "You:", pending[clientId], "sending");
    }
    toBottom();
  }
  // Scroll to the newest once per frame: a replay of a long history renders hundreds of
  // messages at once, and a layout for each made the page load take seconds.
  var scrolling = false;
  function toBottom() {
    if (scrolling) return;
    scrolling = true;
    (window.requestAnimationFrame || setTimeout)(function () {
      scrolling = false;
      log.scrollTop = log.scrollHeight;
    });
  }
  function note(text) {
    var node = log.appendChild(entry("gwc-note"));
    fill(node, "Notice:", text);
    toBottom();
  }

  function post(path, body) {
    // A simple request (text/plain, no preflight): a site the gateway refuses can read why.
    return fetch(base + path, {method: "POST", body: JSON.stringify(body)}).then(function (r) {
      if (r.ok) return r.json();
      return r.json().catch(function () { return {}; }).then(function (body) {
        var err = new Error("session refused: " + r.status);
        err.status = r.status;
        err.code = body && body.error && body.error.code;
        throw err;
      });
    });
  }
  function session() {
    var resuming = !!state.token;
    var body = resuming ? {token: state.token} : {display_name: visitorName};
    return post("/webchat/" + encodeURIComponent(channel) + "/session", body).then(function (s) {
      if (state.visitor && s.visitor_id !== state.visitor) forget();
      state.token = s.token;
      state.visitor = s.visitor_id;
      save();
    }, function (err) {
      // A refused connection, a restarting gateway or a 5xx keeps the token: connect() backs
      // off and resumes the same visitor. Only the token itself being refused ends the visitor.
      if (resuming && err.status === 401 && err.code === "invalid_token") {
        forget();
        return session();
      }
      if (err.status === 403 || err.status === 400 || err.status === 404) {
        // This site, or this widget's settings, refused for good: retrying changes nothing.
        stopped = true;
        say(status, "unavailable");
        note(err.code === "origin_not_allowed"
          ? "Chat is not available on this site."
          : "Chat is not available right now.");
      }
      throw err;
    });
  }
  // A new visitor starts: nothing of the old one (its messages, or the id a reconnect resumes
  // after, which the new visitor's socket may not ask for) carries over. Unsent text does.
  function forget() {
    var hadHistory = lastId !== null;
    state.token = null;
    state.visitor = null;
    save();
    lastId = null;
    replayAll = false;
    shown = {};
    unread = {};
    inFlight = null;
    log.textContent = "";
    say(typing, "");
    if (hadHistory) note("Your chat session expired. Write to start a new conversation.");
    Object.keys(pending).forEach(function (id) { render(null, id); });
  }

  function connect() {
    session().then(function () {
      var after = replayAll ? "0" : lastId || "0";
      var url = base.replace(/^http/, "ws") + "/webchat/" + encodeURIComponent(channel) +
        "/ws?token=" + encodeURIComponent(state.token) + "&after=" + encodeURIComponent(after);
      var socket = new WebSocket(url);
      var opened = false;
      var healthy = null;
      var pinger = null;
      var answer = null; // the keep-alive deadline: any frame before it proves the socket
      ws = socket;
      socket.onopen = function () {
        opened = true;
        replayAll = false;
        // The backoff starts over once the socket proved itself: one the gateway closes at
        // once (1013 while its store is down) keeps backing off.
        healthy = setTimeout(function () { retry = 0; }, 5000);
        say(status, "online");
        pinger = setInterval(function () {
          if (socket.readyState !== 1) return;
          socket.send(JSON.stringify({type: "ping"}));
          if (!answer) answer = setTimeout(function () { ended(true); }, keepalive);
        }, keepalive);
        inFlight = null;
        next();
        receipts();
      };
      // The socket is over: closed, or silent past its keep-alive (then it is dropped without
      // waiting for a close handshake that a dead network never completes).
      function ended(silent) {
        if (ws !== socket) return;
        clearTimeout(healthy);
        clearInterval(pinger);
        clearTimeout(answer);
        socket.onclose = socket.onmessage = null;
        if (silent) {
          try { socket.close(); } catch (err) { /* already closing */ }
        }
        reconnect();
      }
      socket.onmessage = function (e) {
        clearTimeout(answer);
        answer = null;
        var frame;
        try { frame = JSON.parse(e.data); } catch (err) { return; }
        if (frame.type === "ack") {
          chatState = null; // a message may open a new chat: its end is news again
          delete pending[frame.client_id];
          save();
          render(frame.message, frame.client_id);
          if (inFlight === frame.client_id) inFlight = null;
          next();
        } else if (frame.type === "message") {
          render(frame.message);
          if (frame.message.direction === "out") say(typing, "");
          receipts();
        } else if (frame.type === "typing") {
          say(typing, frame.active ? "Agent is typing…" : "");
          clearTimeout(typingTimer);
          typingTimer = setTimeout(function () { say(typing, ""); }, 5000);
        } else if (frame.type === "conversation") {
          if (frame.state === chatState) return; // told again on reconnecting: said already
          chatState = frame.state;
          if (frame.state === "inactive") {
            note("This conversation ended. Write again to start a new one.");
          } else if (frame.state === "closed") {
            note("The agent closed this conversation.");
          }
        } else if (frame.type === "error") {
          refused(frame);
        }
      };
      socket.onclose = function (e) {
        // Refused before the upgrade after a session the gateway granted: most likely the 400
        // for an `after` it does not know (a browser does not tell the status). Ask for the
        // whole history next; messages already shown are not shown twice.
        if (!opened && after !== "0") replayAll = true;
        // Going away: this node shuts down, another one (or it, restarted) takes over.
        if (e.code === 1001) retry = 0;
        ended(false);
      };
    }).catch(function () {
      if (!stopped) reconnect();
    });
  }
  function reconnect() {
    say(status, "reconnecting…");
    ws = null;
    inFlight = null;
    var delay = Math.min(30000, 500 * Math.pow(2, retry++)) * (0.5 + Math.random() / 2);
    setTimeout(connect, delay);
  }
  // What the gateway refused. A rate-limited message goes again after the wait it names, and
  // nothing overtakes it; one it can never take (too long, its client_id used for another
  // text) is dropped, marked, so the messages after it still go.
  function refused(frame) {
    var clientId = frame.client_id;
    if (frame.code === "rate_limited" && clientId && pending[clientId]) {
      heldUntil = Date.now() + 1000 * (Number(frame.retry_after) || 1);
      if (inFlight === clientId) inFlight = null;
      setTimeout(next, heldUntil - Date.now());
      return;
    }
    if (clientId && pending[clientId] && frame.code !== "store_unavailable") {
      var node = shown["pending:" + clientId];
      if (node) {
        node.className = "gwc-msg gwc-in gwc-failed";
        say(node.querySelector(".gwc-state"), " not sent");
      }
      delete shown["pending:" + clientId];
      delete pending[clientId];
      save();
      if (inFlight === clientId) inFlight = null;
      next();
    }
    note(frame.message);
  }
  // Send the oldest message not yet acknowledged, if none is on its way.
  function next() {
    if (inFlight || Date.now() < heldUntil || !ws || ws.readyState !== 1) return;
    var clientId = Object.keys(pending)[0];
    if (!clientId) return;
    inFlight = clientId;
    ws.send(JSON.stringify({type: "message", text: pending[clientId], client_id: clientId}));
  }
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    var clientId = uuid();
    pending[clientId] = text;
    save();
    render(null, clientId);
    next();
    input.value = "";
    lastTyping = 0; // the next keystroke starts a new message: say so at once
  });
  input.addEventListener("input", function () {
    var now = Date.now();
    if (ws && ws.readyState === 1 && now - lastTyping > 2000) {
      lastTyping = now;
      ws.send(JSON.stringify({type: "typing"}));
    }
  });

  if (document.body) { mount(); } else { document.addEventListener("DOMContentLoaded", mount); }
  connect();
})();
