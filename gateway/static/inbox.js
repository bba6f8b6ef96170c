// The agent inbox page: sign-in, queues and tabs, preview, accept, the thread, reply, state
// changes, transfer, and live updates from /api/v1/stream. It uses only the public agent API.
//
// State lives in `app`; every conversation the page knows sits in `app.convs` (newest version
// wins, whether it came from a list call or the stream) and the list is always derived from it,
// so a live event and a reload can never disagree about where a conversation is listed.

import { Api, ApiError, Stream, randomId } from "./api.js";
import {
  channelIcon, channelLabel, clockTime, contactDetail, contactName, h, plain, reasonWords, setTick,
  sinceText, tick,
} from "./view.js";

const TOKEN_KEY = "gw-inbox-token";
const UNSENT_KEY = "gw-inbox-unsent"; // replies, drafts and unread marks kept across a reload
const STATES = ["waiting", "active", "pending", "inactive", "closed"];
const PENDING_REASONS = {
  set_aside: "set aside",
  agent_offline: "set aside when its agent went offline",
};
const LIST_LIMIT = 200;
const EARLIER_PAGE = 200; // messages per "Show earlier messages"
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 6000;
const RESEND_AFTER_MS = 5000;
const TEMPLATE_LANGUAGE = "es"; // the template form's language until the agent changes it
const CONFLICT_TRIES = 3; // a reply refused as `conflict` (a busy conversation) this often comes back
// How long the list stays held after the pointer left it: a tap's click comes after its
// pointer has left (pointerleave follows pointerup on a touch screen).
const SETTLE_AFTER_MS = 300;
const ANNOUNCED_KEPT = 1000; // customer messages remembered as already announced (announceNews)

const $ = (selector) => document.querySelector(selector);
const ui = {
  signin: $("#signin"),
  signinForm: $("#signin-form"),
  token: $("#token"),
  signinError: $("#signin-error"),
  app: $("#app"),
  conn: $("#conn"),
  me: $("#me"),
  signout: $("#signout"),
  queue: $("#queue"),
  mine: $("#mine"),
  tabs: Array.from(document.querySelectorAll("[role=tab]")),
  list: $("#list"),
  listNotice: $("#list-notice"),
  empty: $("#empty"),
  more: $("#more"),
  pane: $("#pane"),
  tabpanel: $("#tabpanel"),
  announce: $("#announce"),
};
const TITLE = document.title;
const placeholder = ui.pane.firstElementChild;

/** What waits to be sent, by conversation: `{items: [{body, key}], busy, timer}`. Kept apart
 * from the pane, so a reply still going out when the agent opens another conversation goes
 * on; each reply has its own Idempotency-Key, kept across its retries (sent once). */
const outboxes = new Map();

const app = {
  api: null,
  stream: null,
  me: null,
  tab: "waiting",
  queue: "",
  mine: false,
  convs: new Map(), // id -> conversation JSON, the newest version seen
  listNodes: new Map(), // id -> {key, node}: list entries, reused while they show the same
  goneNodes: new Map(), // id -> {text, node}: where an entry that left a held list was
  holding: false, // the pointer is over the list: its entries stay where they are (renderList)
  heldFor: "", // the list (listKey) the entries shown belong to
  settleTimer: null,
  announced: new Set(), // ids of customer messages said out loud (announceNews)
  unread: new Map(), // id -> what came in my conversations while not open: {messages, handed}
  notices: new Map(), // id -> a short inline notice shown on the list item
  drafts: new Map(), // id -> what the agent has written in its composer, not yet sent
  tplDrafts: new Map(), // id -> the template form as left: {name, language, params}
  open: null, // the conversation shown in the pane: {id, messages, el, ...}
  listSeq: 0,
  listNext: null, // the list's next page (`next_cursor`), while there is one
  listEdge: null, // the last conversation of the pages loaded: nothing past it is shown yet
  listFor: "", // which list (tab, queue, mine) listNext and listEdge belong to
  listed: new Set(), // the ids the pages loaded so far listed
  openSeq: 0,
  opening: null, // {id, messages}: the conversation being loaded, and what came for it meanwhile
  countsTimer: null,
  waitingTotal: 0, // customers waiting on my queues (the window title's number)
  countsSeq: 0, // the counts asked for last: an earlier answer (another filter's) is dropped
  clockTimer: null,
};

// ---- errors ----------------------------------------------------------------------------------

const FRIENDLY = {
  already_taken: "Taken by another agent.",
  window_closed: "The WhatsApp window is closed: only an approved template can be sent.",
  max_active_reached: "You already hold as many active conversations as you may; " +
    "set one pending or close one first.",
  not_assignee: "Another agent is attending this conversation.",
  not_on_queue: "This conversation is not on your queues.",
  not_found: "There is no such conversation (any more).",
};

function friendly(err) {
  return FRIENDLY[err.code] || err.message || "Something went wrong.";
}

/** Await an API call; a 401 signs out, other failures become a notice and resolve to null. */
async function guard(promise, onError, session = app.api) {
  try {
    const answer = await promise;
    if (app.stream && app.api === session) app.stream.reconnectNow(); // so may the stream
    return answer;
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    if (app.api !== session) return null; // a request of a session since signed out
    if (err.status === 401) signOut("Your session ended: sign in again.");
    else if (onError) onError(err);
    else showListNotice(friendly(err));
    return null;
  }
}

// ---- sign-in ---------------------------------------------------------------------------------

function showSignin(message) {
  ui.app.hidden = true;
  ui.signin.hidden = false;
  ui.signinError.textContent = message || "";
  ui.token.value = "";
  ui.token.focus();
}

async function signIn(token, remembered) {
  clearTimeout(app.signinRetry);
  // `?timeout=N` (seconds) on the page's URL: how long a request may take (see api.js).
  const timeout = Number(new URLSearchParams(location.search).get("timeout")) || undefined;
  const api = new Api(token, timeout);
  let me;
  try {
    me = await api.get("/api/v1/me");
  } catch (err) {
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignin(remembered ? "Your session ended: sign in again." : "That token is not valid.");
    } else if (remembered) {
      // The gateway is down or unreachable, not the token refused: keep the tab's session
      // (and the replies it holds back) and try again, as the stream does.
      showSignin(sentence(err.message) + " Signing in again by itself in a few seconds…");
      app.signinRetry = setTimeout(() => signIn(token, true), RESEND_AFTER_MS);
    } else {
      showSignin(err.message);
    }
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  Object.assign(app, { api, me, tab: "waiting", queue: "", mine: false });
  restoreUnsent();
  ui.me.textContent = me.name || me.id;
  ui.queue.replaceChildren(
    h("option", { attrs: { value: "" }, text: "All my queues" }),
    ...me.queues.map((q) => h("option", { attrs: { value: q }, text: q })),
  );
  ui.mine.checked = false;
  ui.signin.hidden = true;
  ui.app.hidden = false;
  selectTab("waiting");
  // Keyboard users start on the tabs, not on a sign-in form that is gone.
  ui.tabs.find((t) => t.dataset.state === "waiting").focus();
  loadCounts();
  // `?keepalive=N` (seconds) on the page's URL: how often the stream proves it is alive.
  const keepalive = Number(new URLSearchParams(location.search).get("keepalive")) || undefined;
  app.stream = new Stream(token, { onEvent, onHello, onState, keepalive });
  app.stream.start();
  app.clockTimer = setInterval(updateTimes, 10000);
  // Reloaded with a conversation open: open it again (a hash that names none is dropped).
  const opened = location.hash.slice(1);
  if (/^c_[0-9A-Za-z]{1,64}$/.test(opened)) openConversation(opened);
  else if (location.hash) history.replaceState(null, "", location.pathname + location.search);
}

function signOut(message) {
  if (app.stream) app.stream.stop();
  clearInterval(app.clockTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(UNSENT_KEY);
  clearTimeout(app.countsTimer);
  Object.assign(app, { api: null, stream: null, me: null, open: null });
  for (const box of outboxes.values()) clearTimeout(box.timer);
  outboxes.clear();
  app.drafts.clear();
  app.tplDrafts.clear();
  history.replaceState(null, "", location.pathname + location.search);
  app.convs.clear();
  app.listNodes.clear();
  app.announced.clear();
  app.unread.clear();
  document.title = TITLE;
  app.notices.clear();
  ui.list.replaceChildren();
  ui.pane.replaceChildren(placeholder);
  ui.app.classList.remove("show-pane");
  showSignin(message);
}

/** A reload of this tab keeps what was not sent yet: the replies waiting to go out (each with
 * its Idempotency-Key, so one that reached the gateway just before is not sent twice) and the
 * drafts, written to this tab's session storage as the page goes away. Only the same agent
 * gets them back (signed in again by the tab, or by hand after an outage); another agent
 * signing in on this tab does not, and signing out drops them. */
function keepUnsent() {
  if (!app.me) return;
  saveDraft();
  // What each reply is and its key: not its bubble, nor whether a try failed.
  const boxes = Array.from(outboxes, ([id, box]) =>
    [id, box.items.filter((i) => !i.sent).map(({ body, key }) => ({ body, key }))])
    .filter(([, i]) => i.length);
  if (!boxes.length && !app.drafts.size && !app.tplDrafts.size && !app.unread.size) {
    sessionStorage.removeItem(UNSENT_KEY);
    return;
  }
  sessionStorage.setItem(UNSENT_KEY, JSON.stringify({
    agent: app.me.id,
    outboxes: boxes,
    drafts: Array.from(app.drafts),
    tplDrafts: Array.from(app.tplDrafts),
    unread: Array.from(app.unread), // "2 new" stays until opened, a reload or not
  }));
}

function restoreUnsent() {
  const kept = sessionStorage.getItem(UNSENT_KEY);
  sessionStorage.removeItem(UNSENT_KEY);
  if (!kept) return;
  let unsent;
  try {
    unsent = JSON.parse(kept);
  } catch {
    return;
  }
  if (!unsent || unsent.agent !== app.me.id) return;
  for (const [id, text] of unsent.drafts || []) app.drafts.set(id, text);
  for (const [id, params] of unsent.tplDrafts || []) app.tplDrafts.set(id, params);
  for (const [id, unread] of unsent.unread || []) app.unread.set(id, unread);
  for (const [id, items] of unsent.outboxes || []) {
    outboxes.set(id, { items, busy: false, timer: null });
    drain(id);
  }
}

// ---- the stream ------------------------------------------------------------------------------

function onState(state) {
  ui.conn.textContent = state === "live" ? "live" : "reconnecting…";
  ui.conn.classList.toggle("is-live", state === "live");
}

/** Each (re)connection: the first one follows the sign-in load; later ones catch up. */
function onHello(reconnected) {
  if (!reconnected) return;
  loadCounts();
  loadList();
  for (const id of outboxes.keys()) drain(id); // what waited for the network goes now
  if (app.open) openConversation(app.open.id);
}

function onEvent(event) {
  const conv = event.conversation;
  const open = app.open;
  if (event.type === "conversation.typing") {
    if (event.change === "visitor" && open && conv && conv.id === open.id) showTyping(conv);
    return;
  }
  if (conv) announceNews(event, app.convs.get(conv.id));
  if (conv) upsert(conv);
  const message = event.message;
  if (message && app.opening && message.conversation_id === app.opening.id) {
    app.opening.messages.push(message);
  }
  if (message && open && message.conversation_id === open.id) {
    // The stream brings messages in the order they were stored: one this page added from
    // its own send's answer takes its place when its event comes.
    if (open.provisional.delete(message.id)) open.messages.delete(message.id);
    open.messages.set(message.id, message);
    if (message.direction === "in") hideTyping();
    renderThread();
  }
  if (conv && open && conv.id === open.id) renderOpenState();
  if (event.type.startsWith("conversation.")) scheduleCounts();
  renderList();
  showBackNews();
}

/** Say, for screen readers, what came for the agent that the page does not show where they
 * are: a conversation that starts waiting on one of their queues, a customer's message in a
 * conversation of theirs that is not open. Sighted agents see the list and the counts move. */
function announceNews(event, known) {
  const conv = event.conversation;
  const message = event.message;
  const open = app.open && app.open.id === conv.id;
  if (event.type === "message.received" && message && message.direction === "in") {
    // Its conversation's change came first, at the same version: told by the message's id.
    const mine = conv.agent === app.me.id;
    if (mine && !open && !app.announced.has(message.id)) {
      app.announced.add(message.id);
      // Only a re-sent event can repeat an id, and it comes soon after: the oldest can go.
      if (app.announced.size > ANNOUNCED_KEPT) app.announced.delete(app.announced.values().next().value);
      markUnread(conv.id, { messages: 1 });
      announce("New message from " + contactName(conv) + ".");
    }
    return;
  }
  const fresh = !known || (conv.version || 0) > (known.version || 0);
  // Handed to me by someone else (a transfer): it must not land silently in my list.
  if (fresh && event.change === "transferred" && conv.agent === app.me.id &&
      (!known || known.agent !== app.me.id)) {
    if (!open) markUnread(conv.id, { handed: true });
    announce("Transferred to you: " + contactName(conv) + ".");
  }
  if (fresh && conv.state === "waiting" && (!known || known.state !== "waiting") &&
      app.me.queues.includes(conv.queue)) {
    announce("Waiting on " + conv.queue + ": " + contactName(conv) + ".");
  }
}

/** Note what came in a conversation of mine while it was not open; opening it clears it. */
function markUnread(id, { messages = 0, handed = false }) {
  const was = app.unread.get(id) || { messages: 0, handed: false };
  app.unread.set(id, { messages: was.messages + messages, handed: was.handed || handed });
}

/** What the list entry says is new in a conversation: "2 new", "handed to you". */
function unreadWords(id) {
  const unread = app.unread.get(id);
  if (!unread) return "";
  const words = [];
  if (unread.handed) words.push("handed to you");
  if (unread.messages) words.push(unread.messages + " new");
  return words.join(", ");
}

function announce(text) {
  // The same words twice in a row are announced again only if the region changes between.
  ui.announce.textContent = "";
  requestAnimationFrame(() => { ui.announce.textContent = text; });
}

/** Set a live region's (or any element's) text only when it changes: setting it again, even
 * to the same words, makes screen readers repeat it on every update of the conversation. */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function upsert(conv) {
  const known = app.convs.get(conv.id);
  if (!known || (conv.version || 0) >= (known.version || 0)) app.convs.set(conv.id, conv);
}

// ---- queues, tabs and the list ----------------------------------------------------------------

function scheduleCounts() {
  clearTimeout(app.countsTimer);
  app.countsTimer = setTimeout(loadCounts, 150);
}

/** The tabs' counts, filtered as the list is (queue, only mine): a count that says 2 over a
 * list of 1 sends the agent looking for a conversation that is not theirs. */
async function loadCounts() {
  if (!app.api) return; // signed out since it was asked for
  const seq = ++app.countsSeq;
  const data = await guard(app.api.get("/api/v1/queues" + (app.mine ? "?mine=1" : "")));
  if (!data || !app.me || seq !== app.countsSeq) return; // a later filter asked again
  const totals = Object.fromEntries(STATES.map((s) => [s, 0]));
  let waiting = 0;
  for (const q of data.queues) {
    waiting += q.counts.waiting || 0;
    if (app.queue && q.name !== app.queue) continue;
    const counts = app.mine ? q.mine || {} : q.counts;
    for (const s of STATES) {
      // `mine` counts the open states only (an agent's history is not counted): no number.
      if (counts[s] === undefined) totals[s] = null;
      else if (totals[s] !== null) totals[s] += counts[s];
    }
  }
  for (const tab of ui.tabs) {
    const count = tab.querySelector(".count");
    const total = totals[tab.dataset.state];
    count.hidden = total === null;
    count.textContent = total === null ? "" : total;
  }
  // The window's title tells an agent in another tab that customers wait, on any of their
  // queues (the filter is for the list).
  document.title = (waiting ? "(" + waiting + ") " : "") + TITLE;
  app.waitingTotal = waiting;
  showBackNews();
}

/** On a phone the open pane hides the list: its back button shows how much waits there (3
 * waiting, 2 new: "5", named "3 waiting · 2 new"), so new work is seen without leaving the
 * conversation. */
function showBackNews() {
  const back = app.open && app.open.el && app.open.el.head.querySelector(".back");
  if (!back) return;
  const parts = [];
  if (app.waitingTotal) parts.push(app.waitingTotal + " waiting");
  let fresh = 0;
  for (const u of app.unread.values()) fresh += u.messages + (u.handed ? 1 : 0);
  if (fresh) parts.push(fresh + " new");
  const news = parts.join(" · ");
  const shown = back.querySelector(".back-news");
  // A number in a pill (a phone's header has no room for words); the words in its name.
  setText(shown, String(app.waitingTotal + fresh));
  shown.hidden = !news;
  back.title = news;
  back.setAttribute("aria-label", "Back to the list" + (news ? " (" + news + ")" : ""));
}

function selectTab(state) {
  app.tab = state;
  for (const tab of ui.tabs) {
    const selected = tab.dataset.state === state;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1; // one Tab stop for the tab list; arrows move within it
    if (selected) ui.tabpanel.setAttribute("aria-labelledby", tab.id);
  }
  showListNotice("");
  renderList();
  loadList();
}

/** The list's first page; "Show more" reads the next ones, in the list's own order. */
async function loadList() {
  const seq = ++app.listSeq;
  await loadPage(seq, null);
}

const listKey = () => [app.tab, app.queue, app.mine].join("|");

async function loadPage(seq, cursor) {
  const tab = app.tab;
  const key = listKey();
  const query = new URLSearchParams({ state: tab, limit: String(LIST_LIMIT) });
  if (app.queue) query.set("queue", app.queue);
  if (app.mine) query.set("mine", "1");
  if (cursor) query.set("cursor", cursor);
  // What was known as the request left: the answer may be older than events that came since.
  const asked = new Map(Array.from(app.convs, ([id, c]) => [id, c.version]));
  const data = await guard(app.api.get("/api/v1/inbox?" + query));
  if (!data || seq !== app.listSeq) return;
  if (!cursor) app.listed = new Set();
  for (const c of data.conversations) {
    app.listed.add(c.id);
    upsert(c);
  }
  app.listFor = key;
  app.listNext = data.next_cursor || null;
  const last = data.conversations[data.conversations.length - 1];
  // While pages remain, what sorts past the last one loaded is not shown: a conversation that
  // arrives live would otherwise sit right after it, as if it came next in the queue.
  app.listEdge = app.listNext && last ? { ...last } : null;
  if (!app.listNext) {
    // What we believed listed here but the gateway no longer lists moved on out of our sight
    // (e.g. transferred to a queue we are not on): forget it. Not what an event changed (or
    // brought) while the request was out: the answer predates it (a conversation transferred
    // to the agent meanwhile was dropped from her list, though counted).
    for (const c of Array.from(app.convs.values())) {
      if (inList(c, tab) && !app.listed.has(c.id) && asked.get(c.id) === c.version) {
        app.convs.delete(c.id);
        app.listNodes.delete(c.id);
      }
    }
  }
  renderList();
}

async function loadMore() {
  if (!app.listNext) return;
  ui.more.disabled = true;
  try {
    await loadPage(app.listSeq, app.listNext);
  } finally {
    ui.more.disabled = false;
  }
}

function inList(c, tab) {
  const me = app.me;
  const visible = me.queues.includes(c.queue) || c.agent === me.id;
  return visible && c.state === tab && (!app.queue || c.queue === app.queue) &&
    (!app.mine || c.agent === me.id);
}

const time = (iso) => (iso ? Date.parse(iso) : 0); // compared as times: ISO text varies in length

function byOrder(a, b) {
  if (app.tab === "waiting") {
    // Strictly oldest first: the order the queue serves them in.
    return time(a.queued_at) - time(b.queued_at) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  }
  return time(b.last_message_at || b.updated_at) - time(a.last_message_at || a.updated_at);
}

function renderList() {
  if (!app.me) return;
  const focused = document.activeElement;
  const focusKey = ui.list.contains(focused) && focused.dataset.focus
    ? [focused.closest("li").dataset.id, focused.dataset.focus] : null;
  const focusIndex = focusKey ? Array.from(ui.list.children).indexOf(focused.closest("li")) : 0;
  const key = listKey();
  const current = app.listFor === key;
  const edge = current ? app.listEdge : null;
  const items = Array.from(app.convs.values())
    .filter((c) => inList(c, app.tab) && (!edge || byOrder(c, edge) <= 0))
    .sort(byOrder);
  // Another tab or filter is another list: nothing of the one shown is held for it; nor is a
  // list the pane hides (a phone's), whose pointer never left it.
  const held = app.holding && app.heldFor === key && ui.list.offsetParent !== null;
  app.heldFor = key;
  reconcile(ui.list, held ? heldOrder(items) : items.map(listNode));
  if (!held) app.goneNodes.clear();
  ui.empty.hidden = items.length > 0;
  ui.more.hidden = !(current && app.listNext);
  if (focusKey && !ui.list.contains(document.activeElement)) {
    const again = ui.list.querySelector(`li[data-id="${CSS.escape(focusKey[0])}"] ` +
      `[data-focus="${focusKey[1]}"]`);
    // Gone from the list (another agent took it, say): the entry now in its place (in a held
    // list, its own placeholder, which says where it went), or the tabs.
    const instead = ui.list.children[Math.min(focusIndex, ui.list.children.length - 1)];
    const next = again ||
      (instead && (instead.querySelector("[data-focus=open]") ||
        (instead.dataset.focus === "gone" ? instead : null))) ||
      ui.tabs.find((t) => t.tabIndex === 0);
    next.focus();
  }
}

/**
 * The list while the pointer is over it: every entry where it is shown, so that what the
 * agent aims at is what they click (a click on a row that moved up as another agent took the
 * one above accepted the next customer; a re-sort by a message that came opened another
 * conversation). An entry that left the list keeps its place as a placeholder saying where it
 * went, one that stays is updated in place, new ones come last. When the pointer leaves, the
 * list settles into its real order (`settleList`).
 */
function heldOrder(items) {
  const byId = new Map(items.map((c) => [c.id, c]));
  const wanted = [];
  for (const node of ui.list.children) {
    const id = node.dataset.id;
    const c = byId.get(id);
    if (c) {
      wanted.push(listNode(c));
      byId.delete(id);
    } else {
      wanted.push(goneNode(id, node));
    }
  }
  for (const c of byId.values()) wanted.push(listNode(c)); // in the list's order
  return wanted;
}

/** The placeholder of an entry that left a held list: as tall as the entry was, so nothing
 * below it moves; nothing in it can be clicked; focusable, so the focus of an entry that went
 * stays where it was and a screen reader says why. */
function goneNode(id, shown) {
  const c = app.convs.get(id);
  const name = c ? contactName(c)
    : (shown.querySelector(".conv-name, .gone-name") || {}).textContent || "This conversation";
  const text = name + ": " + (c ? whereItWent(c) : "no longer listed here");
  const known = app.goneNodes.get(id);
  if (known && known.text === text) return known.node;
  const node = h("li", {
    class: "conv is-gone",
    attrs: { "data-id": id, "data-focus": "gone", tabindex: "-1" },
  },
  h("p", { class: "gone-text" }, h("span", { class: "gone-name", text: name }),
    text.slice(name.length)));
  node.style.height = shown.getBoundingClientRect().height + "px"; // to the subpixel
  app.goneNodes.set(id, { text, node });
  return node;
}

/** Why a conversation is no longer in the list shown, in a few words. */
function whereItWent(c) {
  const me = app.me.id;
  if (c.state !== app.tab) {
    if (c.state === "active" && c.agent) return c.agent === me ? "accepted by you" : "taken by " + c.agent;
    return {
      waiting: "back in the queue",
      pending: "set pending" + (c.agent && c.agent !== me ? " by " + c.agent : ""),
      inactive: "now inactive",
      closed: "closed",
    }[c.state] || "now " + c.state;
  }
  if (!app.me.queues.includes(c.queue) || (app.queue && c.queue !== app.queue)) {
    return "moved to queue " + c.queue;
  }
  if (app.mine && c.agent !== me) return c.agent ? "now with " + c.agent : "no longer yours";
  return "moved";
}

/** The pointer left the list: let it settle into its real order, a moment later. */
function settleList() {
  clearTimeout(app.settleTimer);
  app.settleTimer = setTimeout(() => {
    app.holding = false;
    renderList();
  }, SETTLE_AFTER_MS);
}

function holdList() {
  clearTimeout(app.settleTimer);
  app.holding = true;
}

/** A conversation's list entry, built again only when what it shows changed: an entry that
 * stays as it was keeps the focus (focused again, a screen reader said it all again, on
 * every event). */
function listNode(c) {
  const key = JSON.stringify([c.version, c.state, c.agent, c.queue, c.preview, c.subject,
    c.contact, c.inactive_reason, c.pending_reason, c.queued_at, c.last_message_at,
    c.updated_at, app.queue, app.open && app.open.id === c.id, app.notices.get(c.id) || "",
    unreadWords(c.id)]);
  const known = app.listNodes.get(c.id);
  if (known && known.key === key) {
    const since = known.node.querySelector("[data-since]"); // it was away from the page
    if (since) since.textContent = sinceText(since.dataset.since, since.dataset.form);
    return known.node;
  }
  const node = listItem(c);
  app.listNodes.set(c.id, { key, node });
  return node;
}

/** Make `parent`'s children `wanted`, in order, putting in only what is new and taking out
 * only what is gone: a node left where it is keeps its focus, and a live region reads out
 * only what was added. */
function reconcile(parent, wanted) {
  const keep = new Set(wanted);
  let cursor = parent.firstChild;
  for (const node of wanted) {
    while (cursor && !keep.has(cursor)) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
    if (node === cursor) cursor = cursor.nextSibling;
    else parent.insertBefore(node, cursor);
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
}

function listItem(c) {
  const name = contactName(c);
  const waiting = c.state === "waiting";
  const since = waiting ? c.queued_at : c.last_message_at || c.updated_at;
  const address = contactDetail(c);
  const where = [address, app.queue ? null : c.queue].filter(Boolean).join(" · ");
  const holder = c.agent ? (c.agent === app.me.id ? "you" : c.agent) : null;
  const notice = app.notices.get(c.id);
  const unread = unreadWords(c.id);
  const classes = ["conv", "is-" + c.state];
  if (unread) classes.push("is-unread");
  if (app.open && app.open.id === c.id) classes.push("is-open");
  return h("li", { class: classes.join(" "), attrs: { "data-id": c.id, "data-state": c.state } },
    h("button", {
      class: "conv-open",
      attrs: { type: "button", "data-focus": "open" },
      on: { click: () => openConversation(c.id) },
    },
    // Named by what it shows (WCAG 2.5.3), after words that say what it does.
    h("span", { class: "sr-only", text: (waiting ? "Preview" : "Open") + " the conversation with " }),
    h("span", { class: "conv-body" },
      h("span", { class: "conv-line" },
        h("span", {
          class: "conv-name", attrs: { title: c.contact.display_name ? null : address || null },
          text: name,
        }),
        unread ? h("span", { class: "unread", text: unread }) : null,
        h("time", {
          class: "since",
          attrs: { "data-since": since, "data-form": waiting ? "wait" : "ago", datetime: since },
          text: sinceText(since, waiting ? "wait" : "ago"),
        })),
      where ? h("span", { class: "conv-where", text: where }) : null,
      c.subject ? h("span", { class: "conv-subject", text: plain(c.subject) }) : null,
      h("span", { class: "conv-preview", text: c.preview || "" }),
      c.state === "inactive"
        ? h("span", { class: "conv-reason", text: "Inactive: " + reasonWords(c.inactive_reason) })
        : null,
      c.state === "pending" && c.pending_reason === "agent_offline"
        ? h("span", { class: "conv-reason", text: "Pending: its agent went offline" })
        : null,
      holder ? h("span", { class: "conv-holder", text: "with " + holder }) : null),
    channelIcon(c.channel_type)), // shown first (CSS order), said last: after the name
    waiting ? h("button", {
      class: "accept",
      attrs: { type: "button", "data-focus": "accept", title: "Accept", "aria-label": "Accept the conversation with " + name },
      on: { click: () => accept(c.id) },
    }, "✓") : null,
    notice ? h("p", { class: "inline-notice", text: notice }) : null);
}

function showListNotice(text) {
  ui.listNotice.textContent = text;
  ui.listNotice.hidden = !text;
}

function updateTimes() {
  for (const node of document.querySelectorAll("[data-since]")) {
    node.textContent = sinceText(node.dataset.since, node.dataset.form);
  }
}

// ---- actions ---------------------------------------------------------------------------------

/** Tell the agent about a refused action where they are looking: on the item and in the pane. */
function setNotice(id, text) {
  if (text && app.notices.get(id) !== text && !(app.open && app.open.id === id)) {
    announce(text); // the pane's notice is an alert of its own
  }
  if (text) app.notices.set(id, text);
  else app.notices.delete(id);
  const c = app.convs.get(id);
  const listed = c && inList(c, app.tab);
  if (text && !listed) showListNotice(contactName(c || { contact: {} }) + ": " + text);
  if (app.open && app.open.id === id) {
    app.open.el.notice.textContent = text || "";
    app.open.el.notice.hidden = !text;
  }
  renderList();
}

async function act(id, action, body, explain = friendly) {
  const conv = await guard(
    app.api.post(app.api.conversationPath(id, action), body).then((d) => d.conversation),
    (err) => setNotice(id, explain(err)),
  );
  if (!conv) return null;
  upsert(conv);
  setNotice(id, "");
  if (app.open && app.open.id === id) renderOpenState();
  scheduleCounts();
  return conv;
}

async function accept(id) {
  const conv = await act(id, "accept");
  if (!conv) return;
  selectTab("active");
  await openConversation(id);
  // Accepted to answer it: the reply box, not the list item that just left the list.
  if (app.open && app.open.id === id && !app.open.el.text.disabled) app.open.el.text.focus();
}

// ---- the open conversation -------------------------------------------------------------------

async function openConversation(id) {
  const seq = ++app.openSeq;
  app.unread.delete(id); // seen now (its entry loses the marker as the list renders)
  // Messages the stream brings while the conversation loads: its answer may predate them.
  app.opening = { id, messages: [] };
  const data = await guard(app.api.get(app.api.conversationPath(id)), (err) => {
    showListNotice(friendly(err));
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  });
  const arrived = app.opening && app.opening.id === id ? app.opening.messages : [];
  if (seq === app.openSeq) app.opening = null;
  if (!data || seq !== app.openSeq) return;
  const { messages, has_earlier: hasEarlier, ...conv } = data;
  upsert(conv);
  const same = app.open && app.open.id === id;
  if (!same) {
    app.open = {
      // Messages in the order they were stored (a Map keeps insertion order), not by id:
      // ids come from each gateway node's clock.
      id, messages: new Map(), provisional: new Set(), nodes: new Map(), el: null,
      typingTimer: null, typingSent: 0,
    };
    app.open.hasEarlier = hasEarlier;
    buildPane();
  }
  for (const m of messages) app.open.messages.set(m.id, m);
  for (const m of arrived) app.open.messages.set(m.id, m); // newer than the answer, or the same
  history.replaceState(null, "", "#" + encodeURIComponent(id)); // a reload reopens it
  renderOpenState();
  renderThread(!same);
  const listShown = ui.list.offsetParent !== null;
  ui.app.classList.add("show-pane");
  renderList();
  // On a narrow screen the pane replaces the list, and with it the button that had focus.
  if (!same && listShown && ui.list.offsetParent === null && !focusIsInPane()) {
    app.open.el.head.querySelector("h2").focus();
  }
}

/** Whether focus is already somewhere in the open pane (accept puts it in the reply box). */
function focusIsInPane() {
  return ui.pane.contains(document.activeElement) && document.activeElement !== ui.pane;
}

function closePane() {
  const id = app.open && app.open.id;
  const inPane = ui.pane.contains(document.activeElement);
  app.open = null;
  history.replaceState(null, "", location.pathname + location.search);
  ui.pane.replaceChildren(placeholder);
  ui.app.classList.remove("show-pane");
  renderList();
  if (inPane) {
    // Back where the agent came from: its list item, or the tabs if it left the list.
    const item = id && ui.list.querySelector(`li[data-id="${CSS.escape(id)}"] [data-focus=open]`);
    (item || ui.tabs.find((t) => t.tabIndex === 0)).focus();
  }
}

function buildPane() {
  const el = {
    head: h("header", { class: "conv-head" }),
    banner: h("p", { class: "banner", attrs: { role: "status" } }),
    notice: h("p", { class: "notice", attrs: { role: "alert", hidden: true } }),
    actions: h("div", { class: "actions" }),
    transfer: null,
    thread: h("ol", {
      class: "thread",
      attrs: { "aria-label": "Messages", "aria-live": "polite", "aria-relevant": "additions" },
    }),
    typing: h("p", { class: "typing", attrs: { "aria-live": "polite" } }),
  };
  el.transfer = transferForm();
  Object.assign(el, composer());
  app.open.el = el;
  el.text.value = app.drafts.get(app.open.id) || ""; // what was being written here before
  const tpl = app.tplDrafts.get(app.open.id);
  if (tpl) {
    el.tplName.value = tpl.name;
    el.tplLang.value = tpl.language;
    el.tplParams.value = tpl.params;
  }
  const notice = app.notices.get(app.open.id);
  el.notice.textContent = notice || "";
  el.notice.hidden = !notice;
  ui.pane.replaceChildren(el.head, el.banner, el.notice, el.actions, el.transfer, el.thread,
    el.typing, el.composer);
}

function renderOpenState() {
  const o = app.open;
  const c = app.convs.get(o.id);
  if (!c) return;
  const el = o.el;
  const mine = c.agent === app.me.id;
  // Moved out of sight (transferred to a queue not ours): nothing to do here any more, and
  // nothing more will be heard of it (the stream stops telling us: an automatic queue may have
  // handed it on already), so its state is not shown as if it were known.
  const gone = !mine && !app.me.queues.includes(c.queue);
  if (gone && !o.gone && app.notices.has(o.id)) setNotice(o.id, ""); // about what it was
  o.gone = gone;
  const name = contactName(c);
  const sub = [contactDetail(c) || null,
    c.channel + " (" + channelLabel(c.channel_type) + ")", "queue " + c.queue];
  const active = document.activeElement;
  const hadFocus = ui.pane.contains(active) && active !== ui.pane;
  const focusKey = hadFocus && active.dataset.focus;
  // Built again only when what it shows changed: a rebuilt control loses the focus, and
  // focused again a screen reader says it again, on every event.
  const badge = gone ? "moved" : c.state;
  const headKey = JSON.stringify([name, sub, c.subject, badge, c.channel_type]);
  if (o.headKey !== headKey) {
    o.headKey = headKey;
    el.head.replaceChildren(
      h("button", {
        class: "back ghost",
        attrs: { type: "button", "aria-label": "Back to the list", "data-focus": "back" },
        on: { click: closePane },
      }, "←", h("span", { class: "back-news", attrs: { hidden: true } })),
      channelIcon(c.channel_type),
      h("div", { class: "conv-title" },
        h("h2", {
          // The whole visitor id where the heading shows its end.
          attrs: {
            tabindex: "-1", "data-focus": "title",
            title: c.contact.display_name ? name : contactDetail(c) || name,
          },
          text: name,
        }),
        h("p", { class: "conv-sub", text: sub.filter(Boolean).join(" · ") }),
        c.subject ? h("p", {
          class: "conv-sub", attrs: { title: plain(c.subject) }, text: "Subject: " + plain(c.subject),
        }) : null),
      h("span", { class: "badge badge-" + badge, text: badge }));
    showBackNews();
  }
  el.head.classList.toggle("is-inactive", c.state === "inactive");

  setText(el.banner, gone
    ? "Moved to queue " + c.queue + (c.agent ? " (to " + c.agent + ")" : "") +
      ", which is not one of yours: you can no longer act on it."
    : bannerText(c, mine));
  el.banner.hidden = !el.banner.textContent;
  el.banner.className = "banner banner-" + badge;

  const buttons = [];
  const button = (label, aria, cls, onClick, key) => h("button", {
    class: "act " + cls,
    attrs: { type: "button", "aria-label": aria, "data-focus": key },
    on: { click: onClick },
  }, label);
  if (c.state === "waiting" && !gone) {
    buttons.push(button("✓ Accept", "Accept this conversation", "act-accept", () => accept(c.id),
      "accept"));
  }
  if (mine && c.state === "active") {
    buttons.push(button("Pending", "Set this conversation pending", "", () => act(c.id, "pending"),
      "pending"));
  }
  if (mine && c.state === "pending") {
    buttons.push(button("Resume", "Resume this conversation", "", () => act(c.id, "resume"),
      "resume"));
  }
  if (mine && (c.state === "active" || c.state === "pending")) {
    buttons.push(button("Transfer", "Transfer this conversation", "", () => {
      if (!el.transfer.hidden) {
        el.transfer.close();
        return;
      }
      el.transfer.hidden = false;
      syncTransferToggle();
      el.transfer.querySelector("select").focus();
      el.transfer.refresh();
    }, "transfer"));
    buttons.push(button("Close", "Close this conversation", "act-close", () => act(c.id, "close"),
      "close"));
  } else if (!el.transfer.hidden) {
    el.transfer.hidden = true; // nothing to transfer any more: what was chosen goes too
    el.transfer.reset();
  }
  const actionsKey = buttons.map((b) => b.dataset.focus).join(" ");
  if (o.actionsKey !== actionsKey) {
    o.actionsKey = actionsKey;
    el.actions.replaceChildren(...buttons);
  }
  el.actions.hidden = buttons.length === 0;
  syncTransferToggle();
  renderComposer(c, mine);
  // What had the focus and can no longer take it (gone, disabled, hidden: the reply box of a
  // conversation closed elsewhere) hands it on; what still can keeps it, untouched.
  if (hadFocus && !usable(active)) focusInPane(focusKey);
}

function usable(node) {
  return node.isConnected && !node.disabled && !node.closest("[hidden]") &&
    node.getClientRects().length > 0;
}

/** The Transfer button says whether its form is open. */
function syncTransferToggle() {
  const el = app.open && app.open.el;
  const toggle = el && el.actions.querySelector("[data-focus=transfer]");
  if (toggle) toggle.setAttribute("aria-expanded", String(!el.transfer.hidden));
}

/**
 * Focus the pane's control named `key` (its `data-focus`), or, when that one is gone (the
 * action it did removed it: Pending, Resume, Close, a transfer), the next useful place: the
 * reply box if the agent can write, else the first action, else the conversation's heading.
 * The pane is rebuilt on every change of the conversation; without this a keyboard user's
 * focus fell to the page's body each time, even when only the customer wrote.
 */
function focusInPane(key) {
  const o = app.open;
  if (!o) return;
  const el = o.el;
  const same = key && ui.pane.querySelector(`[data-focus="${CSS.escape(key)}"]`);
  if (same && !same.closest("[hidden]") && !same.disabled) {
    same.focus();
    return;
  }
  if (!el.text.disabled && !el.form.hidden) {
    el.text.focus();
    return;
  }
  // Not Accept: one more Enter there would take a conversation just handed on.
  const first = el.actions.querySelector("button:not([data-focus=accept])");
  if (first && !el.actions.hidden) first.focus();
  else el.head.querySelector("h2").focus();
}

function bannerText(c, mine) {
  if (c.state === "waiting") return "Preview: not accepted yet. Accept it to reply.";
  if (c.state === "inactive") {
    return "Inactive (" + reasonWords(c.inactive_reason) + "): it can no longer be answered" +
      (templateAllowed(c, mine) ? " with free text" : "") +
      ". Contact for look-up: " + c.contact.address;
  }
  if (c.state === "closed") return "Closed.";
  if (!mine && c.state === "pending") return "Pending with " + (c.agent || "nobody") + pendingWhy(c) + ".";
  if (!mine) return "Attended by " + (c.agent || "nobody") + ".";
  if (c.state === "pending") return "Pending" + pendingWhy(c) + ": resume it to reply.";
  return "";
}

/** Why a pending conversation waits, and when it goes back to the queue by itself. */
function pendingWhy(c) {
  const why = PENDING_REASONS[c.pending_reason];
  const back = c.requeue_at ? "back to the queue at " + clockTime(c.requeue_at) + " unless resumed" : "";
  const words = [why, back].filter(Boolean).join("; ");
  return words ? " (" + words + ")" : "";
}

function renderThread(toBottom) {
  const thread = app.open.el.thread;
  const nearBottom = thread.scrollHeight - thread.scrollTop - thread.clientHeight < 60;
  const messages = Array.from(app.open.messages.values());
  if (app.open.hasEarlier && !app.open.earlierNode) {
    app.open.earlierNode = h("li", { class: "earlier" },
      h("button", { class: "link", type: "button", text: "Show earlier messages",
        on: { click: loadEarlier } }));
  }
  const earlier = app.open.hasEarlier ? app.open.earlierNode : null;
  const stored = messages.map(messageNode); // first: a stored reply takes over its bubble
  const box = outboxes.get(app.open.id);
  const going = box ? box.items.filter((item) => !item.sent).map(sendingNode) : [];
  const wanted = [...(earlier ? [earlier] : []), ...stored, ...going];
  // The thread is a live region: every node put in again was read out again (all of it,
  // for one tick that moved).
  reconcile(thread, wanted);
  if (toBottom || nearBottom) thread.scrollTop = thread.scrollHeight;
}

/** A message's list item, built again only when the message changed (a new status, say): a
 * thousand-message thread is not rebuilt for every message that arrives. */
function messageNode(m) {
  const nodes = app.open.nodes;
  const known = nodes.get(m.id);
  if (known && known.m === m) return known.node;
  // Fetched again (a reconnect, a re-open): the same node while it shows the same, or with
  // its tick moved in place; built again, the thread (a live region) read it out again.
  if (known && sameContent(known.m, m) &&
      (known.m.status === m.status || patchStatus(known.node, m))) {
    known.m = m;
    return known.node;
  }
  const node = takeOverBubble(m) || messageItem(m);
  nodes.set(m.id, { m, node });
  return node;
}

/** The bubble of the reply `m` is (the one going out now, showing the same), made into `m`'s
 * node; null if there is none. Whichever comes first, the stream's event or the send's answer,
 * takes it over. */
function takeOverBubble(m) {
  if (m.direction !== "out" || m.agent !== app.me.id) return null;
  const box = outboxes.get(m.conversation_id);
  const item = box && box.items[0];
  if (!item || item.sent || !item.node || !item.node.isConnected) return null;
  if (shownText({ ...item.body, kind: "text" }) !== shownText(m)) return null;
  item.sent = true;
  adopt(item.node, m);
  return item.node;
}

/** A reply the gateway has not taken yet, at the end of the thread: it left the composer, so
 * it must show somewhere (on a cut network it can wait minutes). Built once per reply, and
 * marked when a try failed and it goes again by itself. */
function sendingNode(item) {
  const text = shownText({ ...item.body, kind: "text" });
  if (!item.node) {
    item.node = h("li", { class: "msg msg-out msg-sending", attrs: { "data-key": item.key } },
      h("span", { class: "sr-only", text: "You: " }),
      h("p", { class: "msg-text", attrs: { dir: "auto" }, text }),
      h("p", { class: "msg-meta" }, h("span", { class: "sending-state" })));
  }
  const state = item.node.querySelector(".sending-state");
  const words = item.tries ? "not sent yet, trying again…" : "sending…";
  if (state.textContent !== words) state.textContent = words;
  return item.node;
}

/** The stored message takes over its reply's bubble, in place: the thread is a live region,
 * and a new node for it would have the reply read out a second time. */
function adopt(node, m) {
  const fresh = messageItem(m);
  node.className = fresh.className;
  node.removeAttribute("data-key");
  node.dataset.id = m.id;
  node.querySelector(".msg-meta").replaceWith(fresh.querySelector(".msg-meta"));
  if (fresh.querySelector(".msg-error")) node.append(fresh.querySelector(".msg-error"));
}

/** Whether two versions of a message show the same, but for its delivery status. */
function sameContent(a, b) {
  const shape = (m) => JSON.stringify([m.text, m.subject, m.kind, m.agent, m.sent_at,
    m.direction, m.template, m.attachments, m.error_code, m.error_message]);
  return shape(a) === shape(b);
}

/** Show a message's new delivery status on its node; false if it needs building again. */
function patchStatus(node, m) {
  const mark = node.querySelector(".tick");
  if (!mark || !setTick(mark, m.status)) return false;
  const failed = m.status === "failed";
  node.classList.toggle("msg-failed", failed);
  const error = node.querySelector(".msg-error");
  if (failed && !error) node.append(failureNote(m)); // read out: the agent should hear it
  else if (!failed && error) error.remove();
  return true;
}

/** Why a reply was not delivered; on the agent's own text or template, a button sends it
 * again as a new reply (after those still going out), so it need not be typed again. */
function failureNote(m) {
  const why = "Not delivered: " + (m.error_message || m.error_code || "the channel refused it");
  const again = m.direction === "out" && m.agent === app.me.id && (m.text || m.template) &&
    !(m.attachments || []).length;
  return h("p", { class: "msg-error" },
    h("span", { text: why }),
    again ? h("button", {
      class: "link send-again",
      type: "button",
      attrs: { "aria-label": "Send this reply again" },
      text: "Send again",
      on: {
        click: (e) => {
          e.currentTarget.disabled = true; // once per click: a new reply each time
          enqueue(m.conversation_id, m.template ? { template: m.template } : { text: m.text });
        },
      },
    }) : null);
}

/** A long conversation opens at its newest messages; this reads the page before the oldest
 * shown, keeping what the agent was looking at in place. */
async function loadEarlier() {
  const open = app.open;
  const oldest = open.messages.keys().next().value;
  const query = "?limit=" + EARLIER_PAGE + (oldest ? "&before=" + encodeURIComponent(oldest) : "");
  const data = await guard(app.api.get(app.api.conversationPath(open.id) + query));
  if (!data || app.open !== open) return;
  const thread = open.el.thread;
  const fromBottom = thread.scrollHeight - thread.scrollTop;
  // Older ones go first, before what was shown.
  const earlier = data.messages.filter((m) => !open.messages.has(m.id)).map((m) => [m.id, m]);
  open.messages = new Map([...earlier, ...open.messages]);
  open.hasEarlier = data.has_earlier;
  renderThread(false);
  thread.scrollTop = thread.scrollHeight - fromBottom;
}

/** A message's text as the thread shows it: a template by its name and parameters. */
function shownText(m) {
  const template = m.template
    ? "Template " + m.template.name + " (" + m.template.language + ")" +
      (m.template.params && m.template.params.length ? ": " + m.template.params.join(", ") : "")
    : "";
  return m.text || template || "[" + m.kind + "]";
}

function messageItem(m) {
  const out = m.direction === "out";
  const failed = m.status === "failed";
  // Who wrote it, for screen readers: sighted agents tell by the side and colour.
  const author = out
    ? (m.agent === app.me.id ? "You" : m.agent || "Sent by the gateway")
    : contactName(m.contact ? m : app.convs.get(m.conversation_id) || { contact: {} });
  return h("li", { class: "msg msg-" + (out ? "out" : "in") + (failed ? " msg-failed" : ""), attrs: { "data-id": m.id } },
    h("span", { class: "sr-only", text: author + ": " }),
    m.channel_type === "email" && m.subject
      ? h("p", { class: "msg-subject", attrs: { dir: "auto" }, text: plain(m.subject) }) : null,
    h("p", { class: "msg-text", attrs: { dir: "auto" }, text: shownText(m) }),
    (m.attachments || []).map((a, index) =>
      h("p", { class: "msg-attachment" },
        // A customer's attachment is fetched through the gateway (it holds the channel's
        // credentials); an agent's is at the URL the agent gave, opened as it is.
        out && /^https?:\/\//i.test(a.url || "")
          ? h("a", {
            attrs: { href: a.url, target: "_blank", rel: "noopener noreferrer" },
            text: "📎 " + plain(a.filename || a.caption || a.kind),
          })
          : h("button", {
            class: "link",
            type: "button",
            attrs: { "aria-label": "Download " + plain(a.filename || a.kind) },
            text: "📎 " + plain(a.filename || a.caption || a.kind),
            on: { click: () => downloadAttachment(m, index, a) },
          }))),
    h("p", { class: "msg-meta" },
      out && m.agent && m.agent !== app.me.id ? m.agent + " · " : null,
      h("time", { attrs: { datetime: m.sent_at }, text: clockTime(m.sent_at) }),
      out ? " " : null,
      out ? tick(m.status) : null),
    failed ? failureNote(m) : null);
}

/** Save an attachment: fetched with the agent's token (a link could not send it), then handed
 * to the browser as a download under its own name. Failures show as a notice, never a crash. */
async function downloadAttachment(m, index, a) {
  const blob = await guard(app.api.attachment(m.conversation_id, m.id, index), (err) =>
    setNotice(m.conversation_id, "The attachment could not be downloaded: " + friendly(err)));
  if (!blob) return;
  const url = URL.createObjectURL(blob);
  const link = h("a", { attrs: { href: url, download: a.filename || a.kind || "attachment" } });
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

function showTyping(conv) {
  const el = app.open.el;
  setText(el.typing, contactName(conv) + " is typing…");
  clearTimeout(app.open.typingTimer);
  app.open.typingTimer = setTimeout(hideTyping, TYPING_SHOWN_MS);
}

function hideTyping() {
  if (app.open) app.open.el.typing.textContent = "";
}

// ---- reply, templates, transfer ---------------------------------------------------------------

function composer() {
  const text = h("textarea", {
    attrs: { rows: "2", maxlength: "4096", placeholder: "Write a reply…", "aria-label": "Reply" },
    on: { input: () => { saveDraft(); agentTyping(); }, keydown: (e) => {
      // Not the Enter that picks a word in an input method (Japanese, Chinese...).
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        text.form.requestSubmit();
      }
    } },
  });
  const send = h("button", { class: "primary", attrs: { type: "submit", "aria-label": "Send reply" } }, "Send");
  const why = h("p", { class: "composer-why", attrs: { "aria-live": "polite" } });
  const form = h("form", { class: "composer-form", on: { submit: sendText } },
    h("div", { class: "composer-row" }, text, send));
  const kept = { input: saveTemplateDraft };
  const tplName = h("input", { attrs: { type: "text", required: true, placeholder: "e.g. HX… (Content SID) or order_update" }, on: kept });
  const tplLang = h("input", { attrs: { type: "text", required: true, value: TEMPLATE_LANGUAGE }, on: kept });
  const tplParams = h("textarea", { attrs: { rows: "2" }, on: kept });
  const field = (label, control, cls) => h("label", { class: "field " + (cls || "") }, h("span", { text: label }), control);
  const template = h("form", {
    class: "template", attrs: { hidden: true, "aria-label": "Send a template" }, on: { submit: sendTemplate },
  },
  h("p", { class: "template-title", text: "Send an approved template" }),
  h("div", { class: "template-row" },
    field("Template name", tplName, "field-name"), field("Template language", tplLang, "field-lang")),
  field("Template parameters, one per line", tplParams),
  h("button", { class: "primary", attrs: { type: "submit", "aria-label": "Send template" } }, "Send template"));
  return {
    composer: h("div", { class: "composer" }, why, template, form),
    form, text, send, why, template, tplName, tplLang, tplParams,
  };
}

/**
 * Whether a template may still reach this customer although free text may not: the agent holds
 * the conversation and the WhatsApp window closed, or the window expired and made it inactive
 * (its last assignee, or anyone of its queue if nobody held it, may re-engage with a template).
 */
function templateAllowed(c, mine) {
  if (c.channel_type !== "whatsapp" || c.can_reply) return false;
  if (c.state === "active" || c.state === "pending") return mine;
  if (c.state === "inactive" && c.inactive_reason === "window_expired") {
    return c.agent ? mine : app.me.queues.includes(c.queue);
  }
  return false;
}

/** Why free text cannot reach a WhatsApp customer, with the times that tell which case it is:
 * the reply window (as long as this channel keeps it, not always 24 hours) ran out since they
 * last wrote, or WhatsApp refused a reply as outside its own window before ours had run out
 * (closed at the time of the refusal, shown on the refused message). */
function windowWords(c) {
  const closed = c.window_expires_at ? " at " + clockTime(c.window_expires_at) : "";
  return "WhatsApp's reply window closed" + closed + " (the customer last wrote " +
    clockTime(c.last_customer_message_at) + ")";
}

function renderComposer(c, mine) {
  const el = app.open.el;
  const gone = !mine && !app.me.queues.includes(c.queue);
  const canWrite = mine && c.state === "active" && c.can_reply;
  const template = templateAllowed(c, mine);
  el.text.disabled = !canWrite;
  el.send.disabled = !canWrite;
  el.template.hidden = !template;
  let why = "";
  if (template) {
    why = windowWords(c) + ": until they write again, only an approved template reaches them" +
      (c.state === "inactive" ? "; their answer starts a new conversation." : ".");
  } else if (mine && c.state === "active" && !c.can_reply) {
    why = "This channel does not accept free text now.";
  } else if (gone) {
    why = "It is on a queue that is not one of yours.";
  } else if (!canWrite) {
    why = {
      waiting: "Accept the conversation to reply.",
      pending: mine ? "Resume the conversation to reply."
        : c.pending_reason === "agent_offline" ? "Its agent went offline."
          : "Another agent set this aside.",
      active: "Another agent is attending this conversation.",
      inactive: "This conversation is inactive: it can no longer be answered.",
      closed: "This conversation is closed.",
    }[c.state] || "";
  }
  setText(el.why, why);
  el.why.hidden = !why;
  // Where only a template can go out, its form replaces the reply box (disabled, it only took
  // room from the thread: a phone kept two or three messages in sight).
  el.form.hidden = c.state === "inactive" || c.state === "closed" || template;
}

/** The template form, as filled in, is the open conversation's too. */
function saveTemplateDraft() {
  const o = app.open;
  if (!o) return;
  const el = o.el;
  const draft = { name: el.tplName.value, language: el.tplLang.value, params: el.tplParams.value };
  if (draft.name.trim() || draft.params.trim() || draft.language.trim() !== TEMPLATE_LANGUAGE) {
    app.tplDrafts.set(o.id, draft);
  } else {
    app.tplDrafts.delete(o.id);
  }
}

/** The composer's text is the open conversation's draft: opening another one keeps it. */
function saveDraft() {
  const o = app.open;
  if (!o) return;
  if (o.el.text.value.trim()) app.drafts.set(o.id, o.el.text.value);
  else app.drafts.delete(o.id);
}

function agentTyping() {
  const o = app.open;
  const c = o && app.convs.get(o.id);
  if (!c || c.state !== "active" || c.agent !== app.me.id) return;
  const now = Date.now();
  if (now - o.typingSent < TYPING_EVERY_MS) return;
  o.typingSent = now;
  app.api.post(app.api.conversationPath(o.id, "typing")).catch(() => {});
}

// ---- the outbox: an agent's replies go out in order, one at a time per conversation ---------

function enqueue(id, body) {
  let box = outboxes.get(id);
  if (!box) outboxes.set(id, (box = { items: [], busy: false, timer: null }));
  box.items.push({ body, key: randomId() });
  showSending(id);
  drain(id);
}

/** Show the open conversation's replies still going out as they are now. */
function showSending(id) {
  if (app.open && app.open.id === id && app.open.el) renderThread(true);
}

/** Send what waits for `id`, oldest first. A reply the gateway could not take (network, 5xx,
 * or `conflict`: a busy conversation) is tried again in a few seconds or when the stream is
 * back, holding back those after it; one it refused comes back with every reply after it
 * (they were written to follow it, so none goes out ahead of it). */
async function drain(id) {
  const box = outboxes.get(id);
  if (!box || box.busy) return;
  clearTimeout(box.timer);
  box.timer = null;
  box.busy = true;
  try {
    while (box.items.length && outboxes.get(id) === box) {
      const outcome = await sendOne(id, box.items[0]);
      if (outboxes.get(id) !== box) return; // signed out meanwhile: nothing more of it
      if (outcome.again) {
        box.timer = setTimeout(() => drain(id), RESEND_AFTER_MS);
        return;
      }
      if (outcome.refused) {
        giveBack(id, box.items.map((item) => item.body), outcome.refused);
        box.items = [];
        break;
      }
      box.items.shift();
    }
    if (outboxes.get(id) === box) outboxes.delete(id);
  } finally {
    box.busy = false;
    showSending(id);
  }
}

/** One try: `{}` (sent), `{again: true}` (it may not have arrived: same key next time) or
 * `{refused: error}`; nothing at all happens here once the agent signed out meanwhile. */
async function sendOne(id, item) {
  const api = app.api;
  let failure = null;
  const data = await guard(
    api.post(api.conversationPath(id, "messages"), item.body, { "Idempotency-Key": item.key }),
    (err) => { failure = err; },
    api,
  );
  if (app.api !== api) return {};
  if (!data) {
    if (!failure) return {};
    item.tries = (item.tries || 0) + 1;
    // A busy conversation is worth a few more tries; an unreachable gateway, until it is back.
    const busy = failure.code === "conflict" && item.tries < CONFLICT_TRIES;
    if (failure.code === "network" || failure.status >= 500 || busy) {
      setNotice(id, sentence(friendly(failure)) + " Not sent yet; it goes again by itself: " +
        quoted(outboxes.get(id).items.map((i) => i.body)) + ".");
      return { again: true };
    }
    return { refused: failure };
  }
  setNotice(id, "");
  const o = app.open;
  if (o && o.id === id) {
    o.typingSent = 0; // the next keystroke starts a new message: say so at once
    // The stream may already have brought it, with a newer status: keep that one.
    if (!o.messages.has(data.message.id)) {
      o.messages.set(data.message.id, data.message);
      o.provisional.add(data.message.id); // placed for now; its event puts it in stored order
    }
    renderThread(true); // the stored reply takes over its bubble (takeOverBubble)
  }
  item.sent = true; // taken: no bubble for it any more
  return {};
}

/** Replies the gateway refused (the first, and those queued after it), in order: their
 * texts go back to the conversation's composer before whatever the agent wrote since, and a
 * template's parameters to its form; the notice says why and repeats what was not sent, so
 * it can be read even where the conversation no longer takes a reply. */
function giveBack(id, bodies, err) {
  const texts = bodies.filter((b) => b.text).map((b) => b.text);
  const templates = bodies.filter((b) => b.template).map((b) => b.template);
  setNotice(id, sentence(friendly(err)) + " Not sent: " + quoted(bodies) + ".");
  const o = app.open;
  const shown = o && o.id === id;
  if (texts.length) {
    const current = shown ? o.el.text.value : app.drafts.get(id) || "";
    const merged = [...texts, ...(current.trim() ? [current] : [])].join("\n\n");
    app.drafts.set(id, merged);
    if (shown) o.el.text.value = merged;
  }
  if (templates.length) {
    // Every refused template's parameters, then what was typed in the form since; the name
    // and language of the first refused one, unless the agent has named another since.
    const form = app.tplDrafts.get(id) || { name: "", language: TEMPLATE_LANGUAGE, params: "" };
    const params = templates.map((t) => t.params.join("\n"));
    const typed = form.params.trim();
    const draft = {
      name: form.name.trim() || templates[0].name,
      language: form.name.trim() ? form.language : templates[0].language,
      params: [...params, ...(typed ? [typed] : [])].join("\n"),
    };
    app.tplDrafts.set(id, draft);
    if (shown) {
      o.el.tplName.value = draft.name;
      o.el.tplLang.value = draft.language;
      o.el.tplParams.value = draft.params;
    }
  }
}

/** What an agent sent, as a notice names it, in the order written. */
function quoted(bodies) {
  return bodies.map((b) => "“" + (b.text || "template " + b.template.name + "(" +
    b.template.params.join(", ") + ")") + "”").join(", ");
}

/** A reason as a sentence: the gateway's come without a final stop. */
function sentence(text) {
  return /[.!?…]$/.test(text) ? text : text + ".";
}

function sendText(e) {
  e.preventDefault();
  const o = app.open;
  const el = o.el;
  const text = el.text.value.trim();
  if (!text || el.text.disabled) return;
  // Out of the composer at once: what the agent types while it goes out is the next reply,
  // which goes after it.
  el.text.value = "";
  app.drafts.delete(o.id);
  enqueue(o.id, { text });
  el.text.focus();
}

function sendTemplate(e) {
  e.preventDefault();
  const el = app.open.el;
  const params = el.tplParams.value.split("\n").map((p) => p.trim()).filter(Boolean);
  const template = { name: el.tplName.value.trim(), language: el.tplLang.value.trim(), params };
  el.tplParams.value = ""; // name and language stay for now: the next is often the same one
  app.tplDrafts.delete(app.open.id);
  enqueue(app.open.id, { template });
}

function transferForm() {
  // Every queue, the agent's own first: a conversation may belong with a team the agent is
  // not on ("this is for Sales").
  const mine = app.me.queues;
  const others = (app.me.transfer_queues || []).filter((q) => !mine.includes(q));
  const queue = h("select", { attrs: { "aria-label": "Transfer to a queue" } },
    h("option", { attrs: { value: "" }, text: "a queue…" }),
    ...[...mine, ...others].map((q) => h("option", { attrs: { value: q }, text: q })));
  // Every agent (GET /api/v1/agents?all=1), fetched each time the form opens so presence and
  // load are current; "offline" only warns: an agent who works over REST alone is never
  // online and can still take a transfer.
  const agent = h("select", { attrs: { "aria-label": "Transfer to an agent" } },
    h("option", { attrs: { value: "" }, text: "or an agent…" }));
  const form = h("form", {
    class: "transfer",
    attrs: { hidden: true, "aria-label": "Transfer" },
    on: {
      submit: async (e) => {
        e.preventDefault();
        const id = app.open.id;
        // Both: to that agent, on that queue.
        const body = {};
        if (agent.value) body.agent = agent.value;
        if (queue.value) body.queue = queue.value;
        if (!body.agent && !body.queue) {
          setNotice(id, "Choose a queue or an agent.");
          return;
        }
        // The gateway's own words when the target is not on the queue: it names who and which.
        const explain = (err) => (err.code === "not_on_queue" ? err.message : friendly(err));
        if (await act(id, "transfer", body, explain)) {
          agent.value = "";
          queue.value = "";
          form.close();
        }
      },
    },
  },
  h("span", { class: "transfer-label", text: "Transfer to" }), queue, agent,
  h("button", { class: "primary", attrs: { type: "submit", "aria-label": "Confirm the transfer" } }, "Transfer"),
  h("button", {
    class: "ghost", attrs: { type: "button", "aria-label": "Cancel the transfer" },
    on: { click: () => form.close() },
  }, "Cancel"));
  form.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.preventDefault();
      form.close();
    }
  });
  /** Hide it; focus, if it was in the form, goes back to what opened it. */
  form.close = () => {
    const within = form.contains(document.activeElement);
    form.hidden = true;
    form.reset(); // opened again, it starts from nothing chosen
    syncTransferToggle();
    if (within) focusInPane("transfer");
  };
  form.refresh = async () => {
    const found = await guard(app.api.get("/api/v1/agents?all=1"),
      (err) => setNotice(app.open.id, friendly(err)));
    if (!found) return;
    const chosen = agent.value;
    const others = found.agents.filter((a) => a.id !== app.me.id)
      .sort((a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name));
    const conv = app.convs.get(app.open.id);
    // Without a queue chosen the conversation stays on its own: say who is not on it.
    const offQueue = (a) => (conv && a.queues && !a.queues.includes(conv.queue)
      ? ", not on " + conv.queue : "");
    agent.replaceChildren(h("option", { attrs: { value: "" }, text: "or an agent…" }),
      ...others.map((a) => h("option", {
        attrs: { value: a.id },
        text: a.name + " (" + (a.online ? "online" : "offline") + ", " + a.active + "/" +
          a.max_active + " active" + offQueue(a) + ")",
      })));
    agent.value = others.some((a) => a.id === chosen) ? chosen : "";
  };
  return form;
}

// ---- wiring ----------------------------------------------------------------------------------

ui.signinForm.addEventListener("submit", (e) => {
  e.preventDefault();
  clearTimeout(app.signinRetry); // a sign-in by hand replaces the tab's own retry
  const token = ui.token.value.trim();
  if (token) signIn(token, false);
});
ui.signout.addEventListener("click", () => {
  // Replies still going out, or given back and not sent again, live in this page only.
  if ((outboxes.size || app.drafts.size || app.tplDrafts.size) &&
      !window.confirm("Replies not sent yet are dropped if you sign out. Sign out anyway?")) return;
  signOut("");
});
window.addEventListener("online", () => { if (app.stream) app.stream.reconnectNow(); });
// A reload keeps replies still waiting to go out and drafts (keepUnsent); closing the tab or
// going elsewhere drops them, so the page asks first.
window.addEventListener("pagehide", keepUnsent);
window.addEventListener("beforeunload", (e) => {
  // Drafts too: nothing typed is lost.
  if (outboxes.size || app.drafts.size || app.tplDrafts.size) e.preventDefault();
});
ui.more.addEventListener("click", loadMore);
ui.list.addEventListener("pointerenter", holdList);
ui.list.addEventListener("pointerleave", settleList);
for (const tab of ui.tabs) {
  tab.addEventListener("click", () => selectTab(tab.dataset.state));
  tab.addEventListener("keydown", (e) => {
    const at = ui.tabs.indexOf(tab);
    const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: ui.tabs.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    const next = ui.tabs[(to + ui.tabs.length) % ui.tabs.length];
    selectTab(next.dataset.state);
    next.focus();
  });
}
ui.queue.addEventListener("change", () => {
  app.queue = ui.queue.value;
  loadCounts();
  selectTab(app.tab);
});
ui.mine.addEventListener("change", () => {
  app.mine = ui.mine.checked;
  loadCounts();
  selectTab(app.tab);
});

const remembered = sessionStorage.getItem(TOKEN_KEY);
if (remembered) signIn(remembered, true);
else showSignin("");
