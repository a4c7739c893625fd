// Job cards follow their jobs live over server-sent events
// (GET /api/v1/generations/{id}/events) instead of asking for the card every 600 ms:
// a step or a new preview updates the card in place; a new status (queued → running,
// stopping, finished) fetches the card again from the server (htmx, the "job-refresh"
// trigger), which also tells the page to re-read the balance when the job is over.
// Without EventSource, or when the stream is refused, a card polls as it used to.
(function () {
  "use strict";
  if (!window.htmx) return;
  // A browser opens at most 6 connections to one server over HTTP/1.1, and each stream
  // keeps one: leave room for the page's own requests; further cards poll.
  const MAX_STREAMS = 3;
  const POLL_MS = 600;
  const streams = new Map(); // job id -> its EventSource
  const polling = new Set(); // job ids whose cards poll instead

  function card(id) {
    return document.getElementById("job-" + id);
  }

  function refresh(id) {
    const el = card(id);
    if (el && el.dataset.jobEvents) window.htmx.trigger(el, "job-refresh");
  }

  function poll(id) {
    polling.add(id);
    // the refreshed card, if still unfinished, comes back through follow() and polls again
    window.setTimeout(function () { refresh(id); }, POLL_MS);
  }

  function stop(id) {
    const source = streams.get(id);
    if (source) source.close();
    streams.delete(id);
  }

  function progress(id, data) {
    const el = card(id);
    if (!el) return stop(id);
    if (data.status !== el.dataset.jobStatus || String(data.cancel_requested) !== el.dataset.jobCancel) {
      return refresh(id); // the card looks different in this state: the server renders it
    }
    const bar = el.querySelector("[data-job-progress]");
    if (bar) {
      bar.max = data.steps;
      bar.value = data.step;
      bar.textContent = Math.round(data.progress * 100) + "%";
    }
    const step = el.querySelector("[data-job-step]");
    if (step) step.textContent = String(data.step);
    const preview = el.querySelector(".job-preview");
    if (preview && data.preview_url) {
      preview.src = data.preview_url;
      preview.alt = "Preview at step " + data.step;
      preview.hidden = false;
    }
  }

  function follow(el) {
    const id = el.id.replace(/^job-/, "");
    if (streams.has(id)) return;
    if (polling.has(id) || !window.EventSource || streams.size >= MAX_STREAMS) return poll(id);
    const source = new EventSource(el.dataset.jobEvents);
    streams.set(id, source);
    source.addEventListener("progress", function (event) { progress(id, JSON.parse(event.data)); });
    source.addEventListener("done", function () { stop(id); refresh(id); });
    source.addEventListener("gone", function () { stop(id); });
    source.addEventListener("error", function () {
      // A dropped connection is retried by EventSource itself; a refused one is closed.
      if (source.readyState === EventSource.CLOSED) {
        stop(id);
        poll(id);
      }
    });
  }

  window.htmx.onLoad(function (root) {
    const cards = Array.from(root.querySelectorAll ? root.querySelectorAll("[data-job-events]") : []);
    if (root.matches && root.matches("[data-job-events]")) cards.push(root);
    cards.forEach(follow);
  });
})();
