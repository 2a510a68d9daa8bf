/* The live activity feed of ADR-022: every `.live-feed` panel on the page (templates/events/_live_feed.html).

   The server renders the newest events and the id it knew last (data-since). From there this script follows
   /ws/events/ (protocol: docs/activity-feed.md) and puts each event in its place: newest on top, ordered by id,
   each id once. It keeps going when the server goes away: it reconnects with backoff and resumes after the last
   id it saw, polls the API while the socket cannot connect, and fetches from the API any range the server
   reports as skipped. Event text reaches the page only through textContent and attributes, never as markup.
   What an event says is its `summary`, worded by the server (apps/events/registry.py) for the page and the feed. */
(() => {
  "use strict";

  const BACKOFF_FIRST_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const STABLE_MS = 10000; // a connection that lived this long starts the backoff afresh when it drops
  const FAILURES_BEFORE_POLLING = 3;
  const POLL_MS = 2000;
  const PING_MS = 25000;
  const ANSWER_TIMEOUT_MS = 10000; // a ping or a subscribe unanswered this long: the connection is dead
  const API_PAGE_MAX = 500; // the largest page /api/v1/events gives
  const FAMILY_WILDCARD = ".*"; // a filter value for every type of a family: "payment.*"

  // ---- Rendering: the same markup as templates/events/_live_item.html ----

  // Python's json.dumps(sort_keys=True, separators=(", ", ": ")), as the template's event_json filter.
  function compactJson(value) {
    if (Array.isArray(value)) return `[${value.map(compactJson).join(", ")}]`;
    if (value !== null && typeof value === "object") {
      const keys = Object.keys(value).sort();
      return `{${keys.map((key) => `${JSON.stringify(key)}: ${compactJson(value[key])}`).join(", ")}}`;
    }
    return JSON.stringify(value) ?? "null";
  }

  function str(value) {
    if (value === undefined || value === null) return "";
    return typeof value === "object" ? compactJson(value) : String(value);
  }

  // HH:MM:SS in the server's time zone, as the server renders its items (every page shows that zone).
  function clockIn(timeZone) {
    const options = { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" };
    try {
      return new Intl.DateTimeFormat("en-GB", { ...options, timeZone: timeZone || "UTC" });
    } catch (error) {
      return new Intl.DateTimeFormat("en-GB", { ...options, timeZone: "UTC" }); // a zone this browser lacks
    }
  }

  // The time as the server wrote it (ISO 8601) in the title.
  function showTime(timeElement, iso, clock) {
    const date = new Date(iso);
    timeElement.dateTime = iso;
    timeElement.title = iso;
    timeElement.textContent = Number.isNaN(date.getTime()) ? "" : clock.format(date);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function wholeNumber(value, fallback) {
    const n = Number(value);
    return Number.isSafeInteger(n) && n >= 0 ? n : fallback;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function isEvent(value) {
    return (
      value !== null &&
      typeof value === "object" &&
      Number.isSafeInteger(value.id) &&
      value.id > 0 &&
      typeof value.event_type === "string"
    );
  }

  class LiveFeed {
    constructor(root) {
      this.root = root;
      this.list = root.querySelector(".live-list");
      this.status = root.querySelector(".live-status");
      this.statusState = root.querySelector(".live-status .live-state");
      this.statusCountdown = root.querySelector(".live-status .live-countdown");
      this.empty = root.querySelector(".live-empty");
      this.error = root.querySelector(".live-error");
      this.filter = root.querySelector(".live-filter");
      this.limit = Math.min(wholeNumber(root.dataset.limit, 0) || 200, API_PAGE_MAX); // one API page refills it
      this.lastId = wholeNumber(root.dataset.since, 0); // the newest id seen: a (re)subscription resumes after it
      this.eventType = this.filter ? this.filter.value : "";
      this.clock = clockIn(root.dataset.timeZone);
      this.eventsUrl = root.dataset.eventsUrl || "/swarm/events";
      this.apiUrl = new URL(root.dataset.api || "/api/v1/events", window.location.href);
      this.socketUrl = new URL(root.dataset.ws || "/ws/events/", window.location.href);
      this.socketUrl.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
      this.canSocket = typeof window.WebSocket === "function";

      this.items = new Map(); // id -> <li>, the ones on the page
      this.agentNames = new Map(); // agent id -> name: from the page, then from events that carry it
      // Bumped by a filter change: answers to requests made for the previous filter are dropped.
      this.generation = 0;

      this.socket = null;
      this.live = false;
      this.liveSince = 0;
      this.pendingSubscribes = 0; // events before the answer to our last subscribe belong to the previous one
      this.failures = 0; // connection attempts that failed in a row
      this.retryTimer = 0;
      this.retryAt = 0;
      this.pingTimer = 0;
      this.answerTimer = 0;

      this.polling = false;
      this.pollRun = 0;
      this.pollTimer = 0;
      this.pollAt = 0;
      this.pollState = ""; // "", "ok" or "failed": how the last poll went

      this.ranges = []; // {count, fromId, toId} the server skipped, to fetch from the API
      this.fetchingRanges = false;
    }

    start() {
      this.adoptRendered();
      if (this.filter) this.filter.addEventListener("change", () => this.changeFilter(this.filter.value));
      window.addEventListener("online", () => this.retryNow());
      window.setInterval(() => this.showStatus(), 1000);
      if (this.canSocket) this.connect();
      else this.startPolling();
      this.showStatus();
    }

    // ---- The list ----

    adoptRendered() {
      for (const item of this.list.querySelectorAll(":scope > li[data-id]")) {
        const id = wholeNumber(item.dataset.id, 0);
        if (!id) continue;
        this.items.set(id, item);
        this.lastId = Math.max(this.lastId, id);
      }
      const agents = this.root.querySelector("template.live-agents");
      for (const agent of agents ? agents.content.querySelectorAll("[data-agent-id]") : []) {
        this.agentNames.set(agent.dataset.agentId, agent.textContent);
      }
      for (const link of this.list.querySelectorAll("a.live-agent[data-agent-id]")) {
        const id = link.dataset.agentId;
        // The home page renders no names of its own for events that do not carry them.
        if (link.textContent === `agent ${id}` && this.agentNames.has(id)) link.textContent = this.agentNames.get(id);
      }
    }

    matches(eventType) {
      if (this.eventType.endsWith(FAMILY_WILDCARD)) return eventType.startsWith(this.eventType.slice(0, -1));
      return !this.eventType || eventType === this.eventType;
    }

    // The types to subscribe to: the one chosen, or every type of the family chosen (its group in the filter).
    subscribedTypes() {
      if (!this.eventType) return null;
      if (!this.eventType.endsWith(FAMILY_WILDCARD) || !this.filter) return [this.eventType];
      const chosen = [...this.filter.options].find((option) => option.value === this.eventType);
      const group = chosen ? chosen.parentElement : null;
      return [...(group ? group.querySelectorAll("option") : [])]
        .map((option) => option.value)
        .filter((value) => value && !value.endsWith(FAMILY_WILDCARD));
    }

    add(event) {
      if (!isEvent(event)) return;
      const id = event.id;
      this.lastId = Math.max(this.lastId, id);
      const data = event.data !== null && typeof event.data === "object" ? event.data : {};
      if (event.agent_id && typeof data.agent === "string") this.agentNames.set(String(event.agent_id), data.agent);
      else if (event.agent_id && typeof event.agent_name === "string") {
        this.agentNames.set(String(event.agent_id), event.agent_name);
      }
      if (!this.matches(event.event_type) || this.items.has(id)) return;
      const oldest = this.list.lastElementChild;
      if (this.items.size >= this.limit && oldest && id < Number(oldest.dataset.id)) return;
      // Newest on top: before the first item with a smaller id (almost always the first item).
      let next = this.list.firstElementChild;
      while (next && Number(next.dataset.id) > id) next = next.nextElementSibling;
      const item = this.buildItem(event);
      this.list.insertBefore(item, next);
      this.items.set(id, item);
      while (this.items.size > this.limit) {
        const last = this.list.lastElementChild;
        this.items.delete(Number(last.dataset.id));
        last.remove();
      }
      this.empty.hidden = this.items.size > 0;
    }

    buildItem(event) {
      const item = element("li", "live-item is-new");
      item.dataset.id = String(event.id);
      item.dataset.type = event.event_type;
      const details = element("details", "live-details");
      const summaryLine = element("summary", "live-line");
      const icon = element("span", "live-icon");
      icon.setAttribute("aria-hidden", "true");
      const time = element("time");
      showTime(time, str(event.timestamp), this.clock);
      const line = str(event.summary) || event.event_type;
      const text = element("span", "live-text", line);
      text.title = line;
      const refs = element("span", "live-refs");
      const taskId = str(event.task_id);
      if (taskId) {
        const link = element("a", "live-task", `task #${taskId}`);
        link.href = `${this.eventsUrl}?task_id=${encodeURIComponent(taskId)}`;
        refs.append(link);
      }
      const data = event.data !== null && typeof event.data === "object" ? event.data : {};
      const agentId = str(event.agent_id);
      if (agentId) {
        // As the template's event.agent_label: the name the event recorded, else the agent's, else its id.
        const recorded = typeof data.agent === "string" && data.agent ? data.agent : "";
        const name = recorded || str(event.agent_name) || this.agentNames.get(agentId) || `agent ${agentId}`;
        const link = element("a", "live-agent", name);
        link.href = `${this.eventsUrl}?agent_id=${encodeURIComponent(agentId)}`;
        link.dataset.agentId = agentId;
        refs.append(link);
      }
      summaryLine.append(icon, time, text, refs);
      details.append(summaryLine, element("code", "live-data", compactJson(data)));
      item.append(details);
      return item;
    }

    changeFilter(eventType) {
      this.eventType = eventType;
      this.generation += 1;
      this.ranges = []; // skipped under the previous filter
      for (const [id, item] of this.items) {
        if (!this.matches(item.dataset.type)) {
          item.remove();
          this.items.delete(id);
        }
      }
      this.empty.hidden = this.items.size > 0;
      const url = new URL(window.location.href);
      if (eventType) url.searchParams.set("event_type", eventType);
      else url.searchParams.delete("event_type");
      window.history.replaceState(window.history.state, "", url);
      // Resubscribing replaces the subscription (a socket still opening subscribes with the new type when it
      // opens); while polling, the next poll asks for the new type.
      if (this.socket && this.socket.readyState === window.WebSocket.OPEN) this.subscribe();
      this.refill();
    }

    // The newest events of the filter just chosen: what the list would have shown had it been chosen all along.
    async refill() {
      try {
        await this.fetchEvents({ limit: this.limit });
      } catch (error) {
        // The live feed or the poll still brings everything newer; only the list's history is shorter.
      }
    }

    // ---- The API (the session cookie authenticates it) ----

    // GET /api/v1/events with the current filter; the events it returns are added unless the filter changed.
    async fetchEvents(params) {
      const generation = this.generation;
      const url = new URL(this.apiUrl);
      for (const [key, value] of Object.entries(params)) url.searchParams.set(key, String(value));
      if (this.eventType) url.searchParams.set("event_type", this.eventType);
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401 || response.status === 403) {
        this.showError("You are logged out: reload the page to log in again.");
      }
      if (!response.ok) throw new Error(`${url.pathname} answered ${response.status}`);
      const body = await response.json();
      const events = Array.isArray(body.events) ? body.events.filter(isEvent) : [];
      const current = generation === this.generation;
      if (current) for (const event of events) this.add(event);
      return { events, current };
    }

    // The server skipped `count` events in [fromId, toId] (this client's buffer overflowed): fetch them from the API.
    fetchRange(count, fromId, toId) {
      if (![count, fromId, toId].every(Number.isSafeInteger) || fromId < 1 || toId < fromId) return;
      this.ranges.push({ count, fromId, toId });
      if (!this.fetchingRanges) this.drainRanges();
    }

    async drainRanges() {
      this.fetchingRanges = true;
      let failures = 0;
      while (this.ranges.length) {
        const range = this.ranges[0];
        try {
          if (range.count > this.limit) {
            // Only the newest `limit` of them could be shown (each older one has that many newer ones in the
            // range alone): one request, newest first, instead of paging through all of them.
            await this.fetchEvents({ before_id: range.toId + 1, limit: this.limit });
          } else {
            let after = range.fromId - 1;
            while (after < range.toId) {
              const { events, current } = await this.fetchEvents({ since_id: after, limit: API_PAGE_MAX });
              if (!current || events.length === 0) break;
              after = events[events.length - 1].id;
              if (events.length < API_PAGE_MAX) break;
            }
          }
          if (this.ranges[0] === range) this.ranges.shift();
          failures = 0;
        } catch (error) {
          // The server is away: try the range again later (what is already shown is not added twice).
          failures += 1;
          await sleep(Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** failures));
        }
      }
      this.fetchingRanges = false;
    }

    // ---- The WebSocket ----

    connect() {
      window.clearTimeout(this.retryTimer);
      this.retryTimer = 0;
      this.retryAt = 0;
      let socket;
      try {
        socket = new window.WebSocket(this.socketUrl.href);
      } catch (error) {
        this.failed();
        return;
      }
      this.socket = socket;
      socket.onopen = () => this.subscribe();
      socket.onmessage = (message) => this.receive(socket, message.data);
      socket.onclose = () => this.closed(socket);
      this.showStatus();
    }

    send(message) {
      if (this.socket && this.socket.readyState === window.WebSocket.OPEN) this.socket.send(JSON.stringify(message));
    }

    subscribe() {
      const message = { action: "subscribe", channel: "events", since: this.lastId };
      const types = this.subscribedTypes();
      if (types) message.event_types = types;
      this.pendingSubscribes += 1;
      this.send(message);
      this.expectAnswer();
    }

    ping() {
      this.send({ action: "ping" });
      this.expectAnswer();
    }

    // A connection that answers nothing (a half-open TCP connection, a hung server) is dropped and retried.
    expectAnswer() {
      if (!this.answerTimer) this.answerTimer = window.setTimeout(() => this.drop(), ANSWER_TIMEOUT_MS);
    }

    receive(socket, raw) {
      if (socket !== this.socket) return;
      window.clearTimeout(this.answerTimer);
      this.answerTimer = 0;
      let message;
      try {
        message = JSON.parse(raw);
      } catch (error) {
        return;
      }
      if (message === null || typeof message !== "object") return;
      switch (message.type) {
        case "subscribed":
          this.pendingSubscribes = Math.max(0, this.pendingSubscribes - 1);
          if (this.pendingSubscribes === 0) this.wentLive();
          else this.expectAnswer();
          break;
        case "event":
          if (this.pendingSubscribes === 0) this.add(message.payload);
          break;
        case "skipped":
          if (this.pendingSubscribes === 0) this.fetchRange(message.count, message.from_id, message.to_id);
          break;
        case "error":
          // The only message of ours the server can refuse is a subscribe.
          if (this.pendingSubscribes > 0) this.pendingSubscribes -= 1;
          this.showError(`The live feed refused a request: ${str(message.message)}`);
          break;
        default: // pong, unsubscribed
      }
    }

    wentLive() {
      if (!this.live) {
        this.live = true;
        this.liveSince = Date.now();
        this.stopPolling();
        window.clearInterval(this.pingTimer);
        this.pingTimer = window.setInterval(() => this.ping(), PING_MS);
      }
      this.showError("");
      this.showStatus();
    }

    drop() {
      const socket = this.socket;
      if (!socket) return;
      socket.onopen = socket.onmessage = socket.onclose = null;
      socket.close();
      this.closed(socket);
    }

    closed(socket) {
      if (socket !== this.socket) return;
      const stable = this.live && Date.now() - this.liveSince >= STABLE_MS;
      this.socket = null;
      this.live = false;
      this.pendingSubscribes = 0;
      window.clearInterval(this.pingTimer);
      window.clearTimeout(this.answerTimer);
      this.pingTimer = this.answerTimer = 0;
      if (stable) this.failures = 0;
      this.failed();
    }

    failed() {
      this.failures += 1;
      if (this.failures >= FAILURES_BEFORE_POLLING) this.startPolling();
      // Exponential backoff with jitter: 1 s doubling to 30 s, each wait somewhere in its upper half.
      const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (this.failures - 1));
      const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
      this.retryAt = Date.now() + delay;
      this.retryTimer = window.setTimeout(() => this.connect(), delay);
      this.showStatus();
    }

    retryNow() {
      if (this.canSocket && !this.socket) this.connect();
    }

    // ---- Polling, while the socket cannot connect ----

    startPolling() {
      if (this.polling) return;
      this.polling = true;
      this.pollState = "";
      const run = ++this.pollRun;
      const poll = async () => {
        if (run !== this.pollRun) return;
        this.pollAt = 0;
        const before = this.pollState;
        try {
          const { events } = await this.fetchEvents({ since_id: this.lastId, limit: API_PAGE_MAX });
          // A page or more behind (a long outage): only the newest can be shown, so ask for those, not the rest.
          if (events.length === API_PAGE_MAX) await this.fetchEvents({ limit: this.limit });
          this.pollState = "ok";
        } catch (error) {
          this.pollState = "failed";
        }
        if (run !== this.pollRun) return;
        // The server answers again: try the socket now rather than at the end of its backoff.
        if (before === "failed" && this.pollState === "ok") this.retryNow();
        this.pollAt = Date.now() + POLL_MS;
        this.pollTimer = window.setTimeout(poll, POLL_MS);
        this.showStatus();
      };
      poll();
    }

    stopPolling() {
      this.polling = false;
      this.pollRun += 1;
      window.clearTimeout(this.pollTimer);
      this.pollTimer = this.pollAt = 0;
      this.pollState = "";
    }

    // ---- What the operator sees of all this ----

    showStatus() {
      let state = "connecting";
      let countdown = "";
      let help = "Opening the live connection";
      const retryAt = this.canSocket ? (this.socket ? 0 : this.retryAt) : this.pollAt;
      if (this.live) {
        state = "live";
        help = "Events appear as they happen";
      } else if (this.polling && this.pollState === "ok") {
        state = "polling";
        help = this.canSocket
          ? `The live connection is down: asking the server every ${POLL_MS / 1000} s while it retries`
          : `This browser has no WebSocket: asking the server every ${POLL_MS / 1000} s`;
      } else if (retryAt) {
        state = "reconnecting";
        countdown = ` in ${Math.max(1, Math.ceil((retryAt - Date.now()) / 1000))}s`;
        help = "The server cannot be reached; nothing is missed, the feed resumes where it stopped";
      }
      if (this.status.dataset.state !== state) {
        this.status.dataset.state = this.root.dataset.state = state;
        this.statusState.textContent = state;
      }
      if (this.statusCountdown.textContent !== countdown) this.statusCountdown.textContent = countdown;
      if (this.status.title !== help) this.status.title = help;
    }

    showError(message) {
      if (!this.error) return;
      this.error.textContent = message;
      this.error.hidden = !message;
    }
  }

  for (const root of document.querySelectorAll(".live-feed")) {
    if (root.dataset.started) continue;
    root.dataset.started = "true";
    new LiveFeed(root).start();
  }
})();
