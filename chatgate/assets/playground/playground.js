// chatgate playground: a client of the gateway's own public API, with no
// framework and no build step. It creates a session, chats with streamed
// replies (POST /chat/ with "stream": true, read as text/event-stream),
// shows the message quota after each turn and explains a 429, lists the
// stored history, deletes the session and leaves feedback.
//
// Credentials, in every mode a browser can use:
// - auth.mode = "none": no Authorization header at all;
// - "session_token": initialize_session answers with a session_token, sent
//   as "Authorization: Bearer <token>" on every later call of that session;
// - "required": the API key or JWT pasted into the page, sent as Bearer.
// Both live in this script's memory only, never in web storage or cookies.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const state = {
    sessionId: null,
    sessionToken: null, // from initialize_session in session_token mode
    busy: false,
    abort: null, // AbortController of the streaming turn
    retryTimer: null,
    deleteArmed: null, // timer while "Delete session" waits for a second press
  };

  // ---- HTTP ---------------------------------------------------------------

  // The session's token when there is one (unless `pastedOnly`), else the
  // pasted credential, else none.
  function authorization(pastedOnly = false) {
    if (state.sessionToken && !pastedOnly) return "Bearer " + state.sessionToken;
    const pasted = $("credential").value.trim();
    return pasted ? "Bearer " + pasted : null;
  }

  function call(method, path, body, { accept = "application/json", signal, pastedOnly } = {}) {
    const headers = { Accept: accept };
    const auth = authorization(pastedOnly);
    if (auth) headers.Authorization = auth;
    const init = { method, headers, signal, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init);
  }

  async function readJson(res) {
    try {
      return await res.json();
    } catch (_) {
      return null;
    }
  }

  // The `detail` of an error body: a sentence, or FastAPI's list of
  // {loc, msg} for a refused request.
  function detailText(data) {
    const detail = data && data.detail;
    if (Array.isArray(detail)) {
      return detail
        .map((d) => {
          const where = (d.loc || []).filter((p) => p !== "body").join(".");
          return (where ? where + ": " : "") + d.msg;
        })
        .join("; ");
    }
    return typeof detail === "string" ? detail : "";
  }

  // What went wrong, in words a person can act on (`viaToken`: whether the
  // request carried the session's token rather than the pasted credential).
  function explain(res, data, viaToken = Boolean(state.sessionToken)) {
    const detail = detailText(data);
    const said = detail ? " (the gateway said: “" + detail + "”)" : "";
    switch (res.status) {
      case 401:
        return viaToken
          ? "The session token was refused" + said + ". Start a new session."
          : "This gateway needs a credential" + said +
              ". Paste an API key or a JWT into the field above and try again.";
      case 403:
        return "This credential may not do that" + said + ".";
      case 404:
        return "Not found" + said +
          ". The session may have been deleted or purged, or it belongs to another credential. Start a new session.";
      case 410:
        return "This session has expired: it was idle too long" + said + ". Start a new session.";
      case 413:
      case 422:
        return "The gateway refused the request" + said + ".";
      case 502:
      case 503:
      case 504:
        return "The model behind the gateway failed (HTTP " + res.status + ")" + said +
          ". Nothing of this turn was stored; try again.";
      default:
        return "HTTP " + res.status + said + ".";
    }
  }

  // ---- notices and limits -------------------------------------------------

  function clearNotice() {
    const notice = $("notice");
    if (state.retryTimer) clearInterval(state.retryTimer);
    state.retryTimer = null;
    notice.hidden = true;
    notice.textContent = "";
    notice.className = "notice";
    delete notice.dataset.kind;
    delete notice.dataset.retryAfter;
  }

  function showNotice(text, kind = "error") {
    clearNotice();
    const notice = $("notice");
    notice.textContent = text;
    notice.className = "notice " + kind;
    notice.dataset.kind = kind;
    notice.hidden = false;
  }

  // A 429: which limit, why, and when to try again (Retry-After, seconds).
  function explainLimit(res, data, what) {
    clearNotice();
    const notice = $("notice");
    const detail = detailText(data) || "Rate limit exceeded";
    const retry = Number.parseInt(res.headers.get("Retry-After") || "", 10);
    const secs = Number.isFinite(retry) && retry > 0 ? retry : null;
    const until = secs === null ? null : new Date(Date.now() + secs * 1000);

    const title = document.createElement("strong");
    title.textContent = "Slow down: rate limit reached.";
    const why = document.createElement("p");
    const rule = what === "new session"
      ? "The gateway limits how many sessions one caller may start per hour"
      : "The gateway limits how many messages a session (and, with credentials, a caller) may send per minute";
    why.textContent = "The gateway refused this " + what + " with HTTP 429: “" + detail + "”. " +
      rule + " (its rate_limit settings). The quota refills steadily, so waiting is enough.";
    const when = document.createElement("p");
    when.className = "retry";
    notice.append(title, why, when);
    notice.className = "notice limit";
    notice.dataset.kind = "rate-limit";
    notice.hidden = false;

    if (secs === null) {
      when.textContent = "Try again in a moment.";
      return;
    }
    notice.dataset.retryAfter = String(secs);
    const at = until.toLocaleTimeString();
    const tick = () => {
      const left = Math.ceil((until.getTime() - Date.now()) / 1000);
      if (left > 0) {
        when.textContent = "Try again in " + left + " s (at " + at + "; Retry-After: " + secs + ").";
      } else {
        when.textContent = "You can send again now.";
        clearInterval(state.retryTimer);
        state.retryTimer = null;
      }
    };
    tick();
    state.retryTimer = setInterval(tick, 1000);
  }

  // X-RateLimit-Limit / X-RateLimit-Remaining of a turn.
  function showLimits(res) {
    const limit = res.headers.get("X-RateLimit-Limit");
    const remaining = res.headers.get("X-RateLimit-Remaining");
    if (limit === null || remaining === null) return;
    const el = $("limits");
    el.dataset.limit = limit;
    el.dataset.remaining = remaining;
    el.textContent = "Message quota: " + remaining + " of " + limit +
      " left this minute (X-RateLimit-Remaining: " + remaining +
      ", X-RateLimit-Limit: " + limit + ").";
  }

  // ---- session ------------------------------------------------------------

  function setSession(id, token) {
    state.sessionId = id;
    state.sessionToken = token || null;
    const on = id !== null;
    $("send").disabled = !on;
    $("show-history").disabled = !on;
    $("delete-session").disabled = !on;
    $("send-feedback").disabled = !on;
    document.body.dataset.session = on ? id : "";
  }

  function setStatus(id, text, kind) {
    const el = $(id);
    el.textContent = text;
    if (kind) el.dataset.state = kind;
    else delete el.dataset.state;
  }

  async function newSession() {
    const button = $("new-session");
    button.disabled = true;
    clearNotice();
    const body = {};
    const prompt = $("system-prompt").value.trim();
    if (prompt) body.system_prompt = prompt;
    try {
      // A new session starts from the pasted credential (or none), not
      // from the current session's token.
      const res = await call("POST", "/session/initialize_session", body, { pastedOnly: true });
      const data = await readJson(res);
      if (!res.ok) {
        if (res.status === 429) explainLimit(res, data, "new session");
        else showNotice(explain(res, data, false));
        setStatus("session-status", "No session: starting one failed.", "error");
        return;
      }
      setSession(data.session_id, data.session_token);
      $("transcript").textContent = "";
      $("history").textContent = "";
      setStatus("history-status", "What the gateway has stored for this session, oldest first. Press “Show history”.");
      setStatus("feedback-status", "");
      setStatus("limits", "Message quota: shown after the first message.");
      const how = data.session_token
        ? " Its session token is kept in this page's memory and sent as the Bearer credential."
        : authorization(true)
          ? " Calls carry the pasted credential."
          : "";
      setStatus("session-status", "Session " + data.session_id + " started " + data.created_at + "." + how, "active");
      $("message").focus();
    } catch (e) {
      showNotice("Could not reach the gateway: " + e.message);
    } finally {
      button.disabled = false;
    }
  }

  async function showHistory() {
    if (!state.sessionId) return;
    const list = $("history");
    setStatus("history-status", "Loading…");
    const messages = [];
    let after = null;
    try {
      // Pages of up to 1,000, following next_cursor (at most 20 pages).
      for (let page = 0; page < 20; page += 1) {
        const query = "?limit=1000" + (after ? "&after=" + encodeURIComponent(after) : "");
        const res = await call("GET", "/session/" + encodeURIComponent(state.sessionId) + "/messages" + query);
        const data = await readJson(res);
        if (!res.ok) {
          setStatus("history-status", explain(res, data), "error");
          return;
        }
        messages.push(...data.messages);
        after = data.next_cursor;
        if (!after) break;
      }
    } catch (e) {
      setStatus("history-status", "Could not reach the gateway: " + e.message, "error");
      return;
    }
    list.textContent = "";
    for (const m of messages) {
      const item = document.createElement("li");
      item.className = "msg " + m.role;
      const head = document.createElement("span");
      head.className = "who";
      head.textContent = m.role + " · " + m.created_at;
      const text = document.createElement("p");
      text.className = "content";
      text.textContent = m.content;
      item.append(head, text);
      list.append(item);
    }
    list.dataset.count = String(messages.length);
    setStatus("history-status", messages.length === 1
      ? "1 message stored."
      : messages.length + " messages stored, oldest first.", "ok");
  }

  async function deleteSession() {
    const button = $("delete-session");
    if (!state.sessionId) return;
    if (!state.deleteArmed) {
      // Two presses, no modal dialog: the first one asks.
      button.textContent = "Press again to delete";
      setStatus("session-status", "Press “Delete session” again within 5 seconds to delete this session, its messages and its feedback.");
      state.deleteArmed = setTimeout(disarmDelete, 5000);
      return;
    }
    disarmDelete();
    try {
      const res = await call("DELETE", "/session/" + encodeURIComponent(state.sessionId));
      if (res.status !== 204 && !res.ok) {
        showNotice(explain(res, await readJson(res)));
        return;
      }
      const gone = state.sessionId;
      setSession(null, null);
      $("history").textContent = "";
      setStatus("session-status", "Session " + gone + " deleted with its messages and feedback.", "deleted");
    } catch (e) {
      showNotice("Could not reach the gateway: " + e.message);
    }
  }

  function disarmDelete() {
    if (state.deleteArmed) clearTimeout(state.deleteArmed);
    state.deleteArmed = null;
    $("delete-session").textContent = "Delete session";
  }

  // ---- chat ---------------------------------------------------------------

  function addMessage(role, text) {
    const item = document.createElement("div");
    item.className = "msg " + role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const content = document.createElement("p");
    content.className = "content";
    content.textContent = text;
    item.append(who, content);
    $("transcript").append(item);
    item.scrollIntoView({ block: "end" });
    return { item, content };
  }

  // Server-sent events from a fetch body: frames end with a blank line;
  // "event:" names the frame, "data:" lines carry its JSON.
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const flush = () => {
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const parsed = parseFrame(frame);
        if (parsed) onEvent(parsed.event, parsed.data);
      }
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
      flush();
    }
    buffer += decoder.decode();
    flush();
    if (buffer.trim()) {
      const parsed = parseFrame(buffer);
      if (parsed) onEvent(parsed.event, parsed.data);
    }
  }

  function parseFrame(frame) {
    let event = "message";
    const data = [];
    for (const line of frame.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return null;
    try {
      return { event, data: JSON.parse(data.join("\n")) };
    } catch (_) {
      return null;
    }
  }

  function setBusy(busy) {
    state.busy = busy;
    $("send").disabled = busy || !state.sessionId;
    $("stop").hidden = !busy;
    $("transcript").setAttribute("aria-busy", busy ? "true" : "false");
  }

  async function sendMessage(text) {
    clearNotice();
    const user = addMessage("user", text);
    const reply = addMessage("assistant", "");
    reply.content.dataset.deltas = "0";
    reply.content.dataset.state = "waiting";
    reply.content.classList.add("pending");
    let deltas = 0;
    let ended = false;
    const controller = new AbortController();
    state.abort = controller;
    setBusy(true);

    const fail = (message) => {
      reply.content.dataset.state = "error";
      reply.content.classList.remove("pending");
      reply.item.classList.add("failed");
      if (!reply.content.textContent) reply.content.textContent = "(no reply)";
      showNotice(message);
    };

    try {
      const res = await call(
        "POST",
        "/chat/",
        { session_id: state.sessionId, role: "user", content: text, stream: true },
        { accept: "text/event-stream", signal: controller.signal },
      );
      showLimits(res);
      if (!res.ok) {
        const data = await readJson(res);
        reply.item.remove();
        user.item.classList.add("refused");
        user.content.dataset.state = "refused";
        user.item.querySelector(".who").textContent = "You · refused (HTTP " + res.status + ")";
        if (res.status === 429) explainLimit(res, data, "message");
        else showNotice(explain(res, data));
        return;
      }
      const type = res.headers.get("Content-Type") || "";
      if (!type.startsWith("text/event-stream")) {
        // A whole JSON answer (a gateway that does not stream).
        const data = await readJson(res);
        reply.content.textContent = (data && data.content) || "";
        reply.content.dataset.state = "done";
        reply.content.classList.remove("pending");
        return;
      }
      await readEvents(res.body, (event, data) => {
        if (event === "delta") {
          if (deltas === 0) reply.content.textContent = "";
          deltas += 1;
          reply.content.append(String(data.content || ""));
          reply.content.dataset.deltas = String(deltas);
          reply.content.dataset.state = "streaming";
          reply.content.classList.remove("pending");
        } else if (event === "done") {
          ended = true;
          reply.content.textContent = String(data.content || "");
          reply.content.dataset.state = "done";
          reply.content.classList.remove("pending");
          if (data.usage) {
            reply.item.title = data.usage.prompt_tokens + " prompt + " +
              data.usage.completion_tokens + " completion tokens";
          }
        } else if (event === "error") {
          ended = true;
          const status = data.status ? " (HTTP " + data.status + ")" : "";
          fail("The reply broke off" + status + ": " + (data.detail || "upstream error") +
            ". Nothing of this turn was stored; the message still counts against the quota.");
        }
      });
      if (!ended) {
        fail("The connection closed before the reply finished. Nothing of this turn was stored.");
      }
    } catch (e) {
      if (e.name === "AbortError") {
        fail("Stopped. Nothing of this turn was stored; the message still counts against the quota.");
      } else {
        fail("Could not reach the gateway: " + e.message);
      }
    } finally {
      state.abort = null;
      setBusy(false);
      reply.item.scrollIntoView({ block: "end" });
    }
  }

  // ---- feedback -----------------------------------------------------------

  async function sendFeedback() {
    if (!state.sessionId) return;
    const text = $("feedback-text").value.trim();
    if (!text) {
      setStatus("feedback-status", "Write a comment first.", "error");
      return;
    }
    const picked = document.querySelector("input[name=rating]:checked");
    const body = { session_id: state.sessionId, feedback: text };
    if (picked) body.rating = Number(picked.value);
    $("send-feedback").disabled = true;
    try {
      const res = await call("POST", "/feedback/", body);
      const data = await readJson(res);
      if (!res.ok) {
        setStatus("feedback-status", explain(res, data), "error");
        return;
      }
      setStatus("feedback-status", "Thank you: " + (data.detail || "Feedback received") +
        (picked ? " (rating " + picked.value + " of 5)." : "."), "ok");
      $("feedback-text").value = "";
      if (picked) picked.checked = false;
    } catch (e) {
      setStatus("feedback-status", "Could not reach the gateway: " + e.message, "error");
    } finally {
      $("send-feedback").disabled = !state.sessionId;
    }
  }

  // ---- wiring -------------------------------------------------------------

  function start() {
    $("stop").addEventListener("click", () => state.abort && state.abort.abort());
    $("new-session").addEventListener("click", newSession);
    $("show-history").addEventListener("click", showHistory);
    $("delete-session").addEventListener("click", deleteSession);

    const form = $("chat-form");
    const message = $("message");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = message.value.trim();
      if (!text || state.busy || !state.sessionId) return;
      message.value = "";
      sendMessage(text);
    });
    message.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });

    $("feedback-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sendFeedback();
    });
    document.body.dataset.ready = "true";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
