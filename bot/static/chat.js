// The web chat: posts the citizen's messages, long-polls for the bot's.
(function () {
  "use strict";
  const root = document.querySelector(".chat");
  const lang = root.dataset.lang;
  const log = document.getElementById("log");
  const form = document.getElementById("composer");
  const input = document.getElementById("text");
  const status = document.getElementById("status");
  const T = lang === "en"
    ? { offline: "Connection lost, retrying…", failed: "Could not send; please try again." }
    : { offline: "Mất kết nối, đang thử lại…", failed: "Chưa gửi được, anh/chị vui lòng thử lại." };
  let lastId = 0;
  let latestTurn = null;

  function newId() {
    const a = new Uint8Array(16);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function add(cls, text) {
    const li = document.createElement("li");
    li.className = cls;
    li.textContent = text;
    log.appendChild(li);
    li.scrollIntoView({ block: "end" });
    return li;
  }

  function disableOldButtons() {
    log.querySelectorAll(".buttons button").forEach((b) => { b.disabled = true; });
  }

  function showBot(m) {
    const li = add("bot", m.text);
    if (m.buttons && m.buttons.length) {
      disableOldButtons();
      latestTurn = m.turn;
      const box = document.createElement("div");
      box.className = "buttons";
      m.buttons.forEach((b) => {
        const btn = document.createElement("button");
        btn.type = "button";
        btn.textContent = b.title;
        btn.dataset.payload = b.payload;
        btn.addEventListener("click", () => {
          disableOldButtons();
          add("me", b.title);
          post({ id: newId(), payload: b.payload, title: b.title, turn: m.turn });
        });
        box.appendChild(btn);
      });
      li.appendChild(box);
    }
  }

  async function post(body, tries = 0) {
    body.lang = lang;
    try {
      const r = await fetch("/chat/api/events", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
      if (r.status >= 500) throw new Error(String(r.status));
      if (!r.ok) {
        const e = await r.json().catch(() => ({}));
        status.textContent = e.error || T.failed;
        return;
      }
      status.textContent = "";
    } catch (err) {
      // Same id again: the server keeps it once, however many times it arrives.
      if (tries < 5) {
        status.textContent = T.offline;
        setTimeout(() => post(body, tries + 1), 1000 * (tries + 1));
      } else {
        status.textContent = T.failed;
      }
    }
  }

  async function poll(first) {
    for (;;) {
      try {
        const q = first ? `after=0&history=1&wait=0` : `after=${lastId}&wait=25`;
        const r = await fetch(`/chat/api/messages?${q}`, { credentials: "same-origin" });
        if (!r.ok) throw new Error(String(r.status));
        const data = await r.json();
        let items = data.messages;
        if (first) {
          // History after a reload: the citizen's and the bot's messages, interleaved.
          const mine = (data.mine || []).map((m) => Object.assign({ me: true }, m));
          items = mine.concat(items).sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
          if (!items.length && !start) post({ id: newId(), start: "" });
          first = false;
        }
        items.forEach((m) => {
          if (m.me) { add("me", m.text); return; }
          showBot(m);
          lastId = Math.max(lastId, m.id);
        });
        status.textContent = "";
      } catch (err) {
        status.textContent = T.offline;
        await new Promise((res) => setTimeout(res, 2000));
      }
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    add("me", text);
    post({ id: newId(), text: text });
  });

  const start = root.dataset.start;
  if (start) post({ id: newId(), start: start });
  poll(true);
})();
