/* Live updates of /lightning/ledger (#ledger-live in templates/ledger/index.html).

   The page follows the event feed (/ws/events/, protocol in docs/activity-feed.md) from the newest event it was
   drawn with (data-since). When a payment event arrives (an invoice made, settled, expired or failed, here or by
   another process such as the worker), it asks the server for the regions a payment changes (data-url:
   entries, balance, chart, earnings and the invoice on the Receive card) and htmx swaps them in out of band.
   Several events close together make one request. The socket reconnects with backoff and resumes after the last
   event seen, so nothing is missed while it was away. */
(() => {
  "use strict";

  const REFRESH_DELAY_MS = 150;
  const BACKOFF_FIRST_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const STABLE_MS = 10000; // a connection that lived this long starts the backoff afresh when it drops
  const PING_MS = 25000;

  const root = document.getElementById("ledger-live");
  if (root === null || typeof window.WebSocket !== "function" || typeof htmx === "undefined") return;
  const stateLabel = root.querySelector(".ledger-live-state");

  let lastId = Number(root.dataset.since) || 0;
  let socket = null;
  let openedAt = 0;
  let failures = 0;
  let pingTimer = 0;
  let refreshTimer = 0;
  let refreshing = false;
  let refreshAgain = false;

  function show(state, text) {
    root.dataset.state = state;
    stateLabel.textContent = text;
  }

  function refreshUrl() {
    // The page's own filters and page (they are in the address), and the invoice the Receive card shows.
    const params = new URLSearchParams(window.location.search);
    const invoice = document.getElementById("ledger-invoice");
    if (invoice !== null) params.set("invoice", invoice.dataset.paymentHash);
    else params.delete("invoice");
    const url = new URL(root.dataset.url, window.location.href);
    url.search = params.toString();
    return url.pathname + url.search;
  }

  async function refresh() {
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    try {
      // Every region of the answer is out of band: nothing replaces #ledger-live itself.
      await htmx.ajax("GET", refreshUrl(), { source: root, target: root, swap: "none" });
    } catch (error) {
      // The server is away: the next event, or the replay after reconnecting, asks again.
    } finally {
      refreshing = false;
      if (refreshAgain) {
        refreshAgain = false;
        scheduleRefresh();
      }
    }
  }

  function scheduleRefresh() {
    window.clearTimeout(refreshTimer);
    refreshTimer = window.setTimeout(refresh, REFRESH_DELAY_MS);
  }

  function receive(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch (error) {
      return;
    }
    if (message === null || typeof message !== "object") return;
    if (message.type === "subscribed") {
      failures = 0;
      show("live", "on");
    } else if (message.type === "event" && message.payload && Number.isSafeInteger(message.payload.id)) {
      lastId = Math.max(lastId, message.payload.id);
      if (String(message.payload.event_type).startsWith("payment.")) scheduleRefresh();
    } else if (message.type === "skipped") {
      // Too many events at once for this client: some payment may be among them.
      if (Number.isSafeInteger(message.to_id)) lastId = Math.max(lastId, message.to_id);
      scheduleRefresh();
    }
  }

  function connect() {
    const url = new URL(root.dataset.ws || "/ws/events/", window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    show("connecting", "connecting…");
    try {
      socket = new window.WebSocket(url.href);
    } catch (error) {
      closed();
      return;
    }
    socket.onopen = () => {
      openedAt = Date.now();
      // Every event type: payment events that other parts of the project add are followed too.
      socket.send(JSON.stringify({ action: "subscribe", channel: "events", since: lastId }));
      window.clearInterval(pingTimer);
      pingTimer = window.setInterval(() => {
        if (socket !== null && socket.readyState === window.WebSocket.OPEN) socket.send('{"action": "ping"}');
      }, PING_MS);
    };
    socket.onmessage = (event) => receive(event.data);
    socket.onclose = closed;
  }

  function closed() {
    window.clearInterval(pingTimer);
    if (openedAt && Date.now() - openedAt >= STABLE_MS) failures = 0;
    openedAt = 0;
    socket = null;
    failures += 1;
    // Exponential backoff with jitter: 1 s doubling to 30 s, each wait somewhere in its upper half.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (failures - 1));
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    show("reconnecting", `reconnecting in ${Math.ceil(delay / 1000)} s (reload to see changes meanwhile)`);
    window.setTimeout(connect, delay);
  }

  // A refresh asks about the invoice shown when it was sent. If another was made meanwhile (Create invoice), the
  // answer is about the old one: its regions for the whole wallet still apply, its invoice card does not.
  document.body.addEventListener("htmx:oobBeforeSwap", (event) => {
    const { target, fragment } = event.detail;
    if (target.id !== "ledger-invoice" || typeof fragment.querySelector !== "function") return;
    const incoming = fragment.querySelector("#ledger-invoice");
    if (incoming !== null && incoming.dataset.paymentHash !== target.dataset.paymentHash) event.detail.shouldSwap = false;
  });

  connect();
})();
