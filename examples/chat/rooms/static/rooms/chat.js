// The room page: one WebSocket to /ws/chat/<room>/, reconnecting with a growing delay until the server refuses.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const composer = document.getElementById("composer");
  const author = document.getElementById("author");
  const message = document.getElementById("message");
  const send = document.getElementById("send");
  const errorBox = document.getElementById("error");
  // Close code the server uses when it refuses what was asked (a bad room name): retrying would not help.
  const CLOSE_INVALID = 4400;

  let socket = null;
  let worker = null;
  let retryDelay = 500;

  author.value = localStorage.getItem("chat-demo-author") || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
  author.addEventListener("change", () => localStorage.setItem("chat-demo-author", author.value.trim()));

  function setStatus(text, state) {
    status.textContent = text;
    status.className = `status ${state}`;
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    node.className = className;
    node.textContent = text;
    return node;
  }

  function append(frame) {
    const remote = frame.worker !== frame.delivered_by;
    const item = element("li", remote ? "message remote" : "message local", "");
    const time = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    item.append(
      element("span", "author", frame.author),
      element("span", "text", frame.text),
      element(
        "span",
        "route",
        remote
          ? `${time} · worker ${frame.worker} → Valkey → worker ${frame.delivered_by}`
          : `${time} · worker ${frame.worker}`,
      ),
    );
    log.append(item);
    item.scrollIntoView({ block: "end" });
  }

  function handle(frame) {
    switch (frame.type) {
      case "welcome":
        worker = frame.worker;
        retryDelay = 500;
        setStatus(`connected to worker ${frame.worker} · ${frame.layer} layer`, "online");
        send.disabled = false;
        break;
      case "message":
        append(frame);
        break;
      case "error":
        showError(frame.error);
        break;
      default:
        console.warn("unknown frame", frame);
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws/chat/${encodeURIComponent(config.room)}/`);
    setStatus("connecting…", "connecting");
    socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      send.disabled = true;
      worker = null;
      if (event.code === CLOSE_INVALID) {
        setStatus("refused by the server", "offline");
        return;
      }
      setStatus(`disconnected; retrying in ${Math.round(retryDelay / 100) / 10} s`, "offline");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 8000);
    });
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = message.value.trim();
    const name = author.value.trim();
    if (!text || !name || worker === null) {
      return;
    }
    showError("");
    localStorage.setItem("chat-demo-author", name);
    socket.send(JSON.stringify({ type: "message", author: name, text }));
    message.value = "";
    message.focus();
  });

  connect();
})();
