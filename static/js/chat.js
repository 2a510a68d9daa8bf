/* Timmy's chat (templates/agents/chat.html). The form is sent with fetch() to its data-stream-url and the reply
   is shown while the model writes it: the response body is a stream of server-sent events (apps/agents/streaming.py),
   read here as it arrives. The user's message shows at once; the reply's pieces are appended as plain text; the
   final event carries the stored messages rendered by the server (sanitised Markdown), which replace both. Stop
   aborts the fetch, and the server then stops the model. Model text reaches the page only as text nodes; the only
   markup inserted is the server's own rendering of stored messages. Without this script the form posts as a plain
   form and the page reloads with the reply. */
(() => {
  "use strict";

  const form = document.getElementById("chat-form");
  if (!form || !window.fetch || !window.AbortController || !window.TextDecoder || !window.ReadableStream) return;
  const conversation = document.getElementById("conversation");
  const textarea = form.elements.namedItem("message");
  const sessionInput = form.elements.namedItem("session");
  const sendButton = form.querySelector('button[type="submit"]');
  const stopButton = form.querySelector(".chat-stop");
  const count = form.querySelector(".chat-count");
  const refused = form.querySelector(".chat-refused");
  const limit = Number(form.dataset.limit);
  const number = new Intl.NumberFormat("en");
  let running = null; // the AbortController of the reply being written

  // ---- The message box: a live count against the limit, Enter sends, Shift+Enter is a new line ----

  // As the server counts: without the surrounding blanks (a textarea's value has \n line breaks, counted once).
  function messageLength() {
    return textarea.value.trim().length;
  }

  function tooLong(length) {
    return `The message is ${number.format(length)} characters; the limit is ${number.format(limit)}. Shorten it and send it again.`;
  }

  function showCount() {
    const length = messageLength();
    count.textContent = `${number.format(length)} / ${number.format(limit)} characters · Enter sends, Shift+Enter starts a new line`;
    count.classList.toggle("is-over", length > limit);
    if (length <= limit && refused.dataset.reason === "length") refuse("");
  }

  function refuse(text, reason = "") {
    refused.textContent = text;
    refused.hidden = !text;
    refused.dataset.reason = reason;
  }

  textarea.addEventListener("input", showCount);
  textarea.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    event.preventDefault();
    form.requestSubmit();
  });
  stopButton.addEventListener("click", () => {
    if (running) running.abort();
  });
  showCount();

  // ---- Building the exchange ----

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  // The server's rendering of a stored message (templates/agents/_message.html), already escaped and sanitised.
  function fromServer(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function userMessage(text) {
    const article = element("article", "chat-msg chat-user");
    article.append(element("header", "chat-who", "You"), element("div", "chat-text chat-plain", text));
    return article;
  }

  function replyMessage() {
    const article = element("article", "chat-msg chat-assistant is-streaming");
    article.setAttribute("aria-busy", "true");
    const header = element("header", "chat-who", "Timmy");
    const status = element("span", "muted chat-status", "is thinking…");
    header.append(" ", status);
    const text = element("div", "chat-text chat-plain");
    article.append(header, text);
    return { article, status, text };
  }

  function endReply(turn, status, note, className) {
    const { article } = turn.reply;
    article.classList.remove("is-streaming");
    article.removeAttribute("aria-busy");
    turn.reply.status.textContent = status;
    if (note) article.append(element("p", className, note));
  }

  function showSession(data) {
    if (data.session_id && sessionInput) sessionInput.value = data.session_id;
    const current = document.getElementById("chat-session");
    if (current && data.session_html) current.replaceWith(fromServer(data.session_html));
    const list = document.querySelector(".chat-history");
    if (list && data.conversations_html) list.replaceWith(fromServer(data.conversations_html));
  }

  // ---- The events of one reply ----

  // Returns true for the last event of a reply (`reply` or `error`).
  function handle(turn, name, data) {
    const { reply } = turn;
    switch (name) {
      case "chunk":
        if (!reply.text.firstChild) reply.status.textContent = "is writing…";
        reply.text.append(data.text);
        reply.article.scrollIntoView({ block: "nearest" });
        return false;
      case "failover": {
        const note = element("p", "chat-failover", `${data.from} did not answer (${data.reason}); asking ${data.to}…`);
        reply.text.before(note);
        return false;
      }
      case "reply": {
        turn.mine.replaceWith(fromServer(data.user_html));
        const stored = fromServer(data.reply_html);
        // The failovers stay in place above the reply they led to.
        stored.querySelector(".chat-who").after(...reply.article.querySelectorAll(".chat-failover"));
        reply.article.replaceWith(stored);
        showSession(data);
        return true;
      }
      case "error":
        if (data.user_html) {
          // No model answered: the message is stored with the reason, shown in its place.
          turn.mine.replaceWith(fromServer(data.user_html));
          reply.article.remove();
          showSession(data);
        } else {
          giveBack(turn, data.detail);
        }
        return true;
      default:
        return false;
    }
  }

  // The message was not taken: it goes back in the box, with the reason.
  function giveBack(turn, reason) {
    turn.mine.remove();
    turn.reply.article.remove();
    if (!textarea.value.trim()) textarea.value = turn.text;
    showCount();
    refuse(reason);
  }

  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  async function problem(response) {
    try {
      const body = await response.json();
      if (body && body.detail) return String(body.detail);
    } catch {
      // not JSON: a CSRF failure page, a proxy's error
    }
    return `The message was not sent (HTTP ${response.status}). Reload the page and try again.`;
  }

  async function send(turn, body) {
    const controller = new AbortController();
    running = controller;
    sendButton.hidden = true;
    stopButton.hidden = false;
    let response = null;
    let finished = false;
    try {
      response = await fetch(form.dataset.streamUrl, {
        method: "POST",
        body,
        headers: { Accept: "text/event-stream" },
        credentials: "same-origin",
        signal: controller.signal,
      });
      if (!response.ok || !(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
        giveBack(turn, await problem(response));
        return;
      }
      await readEvents(response.body, (name, data) => {
        finished = handle(turn, name, data) || finished;
      });
      if (!finished) {
        endReply(turn, "broke off", "The connection ended before the reply was complete. Reload the page to see what was stored.", "chat-error");
      }
    } catch (error) {
      if (controller.signal.aborted) {
        endReply(turn, "stopped", "Stopped. What Timmy wrote until then is kept in the conversation.", "chat-note");
      } else if (response === null) {
        giveBack(turn, `The message could not be sent (${error.message}). Check the connection and send it again.`);
      } else {
        endReply(turn, "broke off", `The reply broke off (${error.message}). Reload the page to see what was stored.`, "chat-error");
      }
    } finally {
      running = null;
      stopButton.hidden = true;
      sendButton.hidden = false;
      textarea.focus();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (running) return;
    const length = messageLength();
    if (!length) {
      refuse("Type a message first.");
      return;
    }
    if (length > limit) {
      refuse(tooLong(length), "length");
      return;
    }
    refuse("");
    const body = new FormData(form); // with the CSRF token and the conversation's id
    const text = textarea.value.trim();
    const turn = { text, mine: userMessage(text), reply: replyMessage() };
    conversation.append(turn.mine, turn.reply.article);
    turn.reply.article.scrollIntoView({ block: "nearest" });
    textarea.value = "";
    showCount();
    send(turn, body);
  });
})();
