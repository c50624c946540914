// moira-web's one script: live updates and countdowns.
//
// It follows /api/v1/events and, for what the page shows, fetches fragments
// the server rendered (and escaped). It never builds markup from event data.
"use strict";
(function () {
  function human(ms) {
    const s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), r = s % 60;
    if (d > 0) return "in " + d + "d " + h + "h";
    if (h > 0) return "in " + h + "h " + m + "m";
    if (m > 0) return "in " + m + "m " + r + "s";
    return "in " + r + "s";
  }
  function tick() {
    document.querySelectorAll("time[data-deadline]").forEach(function (t) {
      const due = Date.parse(t.dataset.deadline);
      if (isNaN(due)) return;
      const left = due - Date.now();
      t.textContent = left > 0 ? human(left) : "due now";
      t.classList.toggle("soon", left < 5 * 60 * 1000);
    });
  }
  tick();
  setInterval(tick, 1000);

  function parse(html) {
    const t = document.createElement("template");
    t.innerHTML = html;
    return t.content;
  }
  function updated() {
    document.body.dataset.updated = String(Date.now());
    const list = document.getElementById("waiting");
    const count = document.getElementById("count");
    if (list && count) count.textContent = String(list.children.length);
    tick();
  }

  // The waiting list: a gate's row is fetched when it changes; a gate that
  // waits no more answers 204 and its row goes.
  function refreshRow(id) {
    const list = document.getElementById("waiting");
    fetch("/fragments/row/" + encodeURIComponent(id)).then(function (r) {
      const old = document.getElementById("gate-" + id);
      if (r.status === 204 || r.status === 404) {
        if (old) old.remove();
        updated();
        return null;
      }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html === null || html === undefined) return;
      const row = parse(html).firstElementChild;
      if (!row) return;
      const old = document.getElementById("gate-" + id);
      if (old) old.replaceWith(row); else list.prepend(row);
      updated();
    }).catch(function () {});
  }

  // A block with data-live is re-fetched whole when its gate or run changes.
  const pending = new Set();
  let timer = null;
  function refreshBlocks() {
    timer = null;
    const els = Array.from(pending);
    pending.clear();
    els.forEach(function (el) {
      fetch(el.dataset.live).then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          el.replaceChildren(parse(html));
          updated();
        }).catch(function () {});
    });
  }
  function schedule(el) {
    pending.add(el);
    if (!timer) timer = setTimeout(refreshBlocks, 30);
  }

  if (!window.EventSource || !document.body.dataset.livePage) return;
  const es = new EventSource("/api/v1/events");
  es.addEventListener("open", function () { document.body.dataset.live = "on"; });
  es.addEventListener("error", function () { document.body.dataset.live = "off"; });
  es.addEventListener("gate", function (e) {
    let d;
    try { d = JSON.parse(e.data); } catch (_) { return; }
    if (typeof d.gate_id !== "string") return;
    if (document.getElementById("waiting")) refreshRow(d.gate_id);
    document.querySelectorAll("[data-live-gate]").forEach(function (el) {
      if (el.dataset.liveGate === d.gate_id) schedule(el);
    });
  });
  es.addEventListener("run", function (e) {
    let d;
    try { d = JSON.parse(e.data); } catch (_) { return; }
    document.querySelectorAll("[data-live-run]").forEach(function (el) {
      if (el.dataset.liveRun === d.run_id) schedule(el);
    });
  });
})();
