// Small DOM and formatting helpers for the inbox page.
//
// Customer data (names, addresses, message text, email subjects) must only ever reach the page
// as text. `h` is the only way this page builds elements: string children become text nodes and
// there is no way to pass markup, so a message like `<img src=x onerror=...>` shows as typed.

/** Build an element: h("li", {class: "x", attrs: {...}, on: {click}}, "text", child, ...). */
export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  const p = props || {};
  if (p.class) node.className = p.class;
  if (p.text != null) node.textContent = p.text;
  for (const [name, value] of Object.entries(p.attrs || {})) {
    if (value === false || value == null) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const [type, handler] of Object.entries(p.on || {})) node.addEventListener(type, handler);
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

const CHANNELS = {
  whatsapp: {
    label: "WhatsApp",
    shapes: [
      ["path", { d: "M12 2.5a9.5 9.5 0 0 0-8.2 14.3L2.5 21.5l4.8-1.3A9.5 9.5 0 1 0 12 2.5z" }],
      ["path", {
        d: "M8.6 7.2c.3-.3.8-.3 1 .1l.9 1.8c.1.3.1.6-.1.8l-.6.7c.6 1.3 1.6 2.3 2.9 2.9l.7-.6" +
          "c.2-.2.5-.2.8-.1l1.8.9c.4.2.4.7.1 1l-.8.8c-.6.6-1.5.7-2.3.3a9.4 9.4 0 0 1-4.7-4.7" +
          "c-.4-.8-.3-1.7.3-2.3z",
        fill: "#fff",
      }],
    ],
  },
  webchat: {
    label: "Web chat",
    shapes: [
      ["path", { d: "M4 3.5h16A1.5 1.5 0 0 1 21.5 5v10a1.5 1.5 0 0 1-1.5 1.5H10l-5 4v-4H4A1.5 1.5 0 0 1 2.5 15V5A1.5 1.5 0 0 1 4 3.5z" }],
      ["circle", { cx: "8", cy: "10", r: "1.3", fill: "#fff" }],
      ["circle", { cx: "12", cy: "10", r: "1.3", fill: "#fff" }],
      ["circle", { cx: "16", cy: "10", r: "1.3", fill: "#fff" }],
    ],
  },
  email: {
    label: "Email",
    shapes: [
      ["rect", { x: "2.5", y: "5", width: "19", height: "14", rx: "2" }],
      ["path", { d: "M3.5 6.5 12 13l8.5-6.5", fill: "none", stroke: "#fff", "stroke-width": "1.6" }],
    ],
  },
};

/** The channel type's icon (inline SVG, nothing fetched) with its name for screen readers. */
export function channelIcon(type) {
  const known = CHANNELS[type];
  const label = known ? known.label : type || "channel";
  const icon = svg("svg", {
    viewBox: "0 0 24 24",
    class: "icon icon-" + (known ? type : "other"),
    role: "img",
    "aria-label": label,
    focusable: "false",
  });
  const title = svg("title", {});
  title.textContent = label;
  icon.append(title);
  const shapes = known ? known.shapes : [["circle", { cx: "12", cy: "12", r: "9" }]];
  for (const [tag, attrs] of shapes) icon.append(svg(tag, attrs));
  return icon;
}

export function channelLabel(type) {
  return CHANNELS[type] ? CHANNELS[type].label : type;
}

/** How long ago an ISO time was, short: "just now", "45 s", "12 min", "2 h 5 min", "3 d 4 h". */
export function elapsed(iso, now = Date.now()) {
  if (!iso) return "";
  const s = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
  if (s < 10) return "just now";
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min";
  const hours = Math.floor(m / 60);
  if (hours < 24) return hours + " h" + (m % 60 ? " " + (m % 60) + " min" : "");
  const days = Math.floor(hours / 24);
  return days + " d" + (hours % 24 ? " " + (hours % 24) + " h" : "");
}

/** `elapsed` in words: "waiting 12 min" for the waiting queue, "12 min ago" otherwise. */
export function sinceText(iso, form) {
  const span = elapsed(iso);
  if (!span || span === "just now") return span;
  return form === "wait" ? "waiting " + span : span + " ago";
}

/** A clock time for a message; the date too when it is not today. */
export function clockTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  const sameDay = when.toDateString() === new Date().toDateString();
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : when.toLocaleDateString() + " " + time;
}

const REASONS = {
  window_expired: "window expired",
  no_agent_available: "no agent available",
  channel_removed: "its channel was removed from the configuration",
};

/** Why a conversation is inactive, in words. */
export function reasonWords(reason) {
  if (!reason) return "can no longer be answered";
  return REASONS[reason] || reason.replace(/_/g, " ");
}

const TICKS = {
  queued: { mark: "◷", label: "queued" },
  sent: { mark: "✓", label: "sent" },
  delivered: { mark: "✓✓", label: "delivered" },
  read: { mark: "✓✓", label: "read" },
  failed: { mark: "✗", label: "failed" },
};

/** Move a tick made by `tick` to another status, in place: a live region does not read a
 * changed attribute or text out as it would a new node. False if the status has no tick. */
export function setTick(node, status) {
  const t = TICKS[status];
  if (!t) return false;
  node.className = "tick tick-" + status;
  if (node.textContent !== t.mark) node.textContent = t.mark; // a new text node is an addition
  node.title = t.label;
  node.setAttribute("aria-label", t.label);
  node.dataset.status = status;
  return true;
}

/** The delivery tick of an outbound message: ◷ ✓ ✓✓ (blue when read) ✗. */
export function tick(status) {
  const t = TICKS[status];
  if (!t) return null;
  return h("span", {
    class: "tick tick-" + status,
    text: t.mark,
    // A span's aria-label alone is not read out; as an image, its label is.
    attrs: { title: t.label, role: "img", "aria-label": t.label, "data-status": status },
  });
}

// A web chat visitor's address: "v_" and a ULID, whose last characters are random.
const VISITOR_ID = /^v_[0-9A-HJKMNP-TV-Z]{26}$/;

/** The contact's name to show: the display name, or the address when there is none. An
 * unnamed web chat visitor's address is a 28-character id that took two lines of a phone's
 * header: "Visitor 0DRZA" (its last five characters) tells visitors apart in a few letters;
 * the whole id stays beside it (`contactDetail`). */
export function contactName(conversation) {
  const c = conversation.contact || {};
  if (!c.display_name && VISITOR_ID.test(c.address || "")) return "Visitor " + c.address.slice(-5);
  return plain(c.display_name || c.address || "unknown contact");
}

/** The contact's address where the name shown is not it (a display name, a shortened visitor
 * id), to show beside the name; "" when the name already is the address. */
export function contactDetail(conversation) {
  const c = conversation.contact || {};
  const address = plain(c.address || "");
  return address && contactName(conversation) !== address ? address : "";
}

const BIDI_CONTROLS = /[\u202A-\u202E\u2066-\u2069]/g;

/** A customer's name, subject or file name without the characters that reorder text: a
 * right-to-left override showed "invoice\u202Efdp.exe" as "invoiceexe.pdf". Arabic and Hebrew
 * need none of them to be shown right. */
export function plain(text) {
  return text == null ? text : String(text).replace(BIDI_CONTROLS, "");
}
