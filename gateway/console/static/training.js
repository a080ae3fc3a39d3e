// The fine-tuning job page, live: server-sent events from /console/jobs/<id>/stream append new
// events to the table, replace the loss chart (drawn on the server) and update the status; the
// stream's `end` event closes it (the job has finished). Text goes in as text, never as HTML;
// the chart is the server's own escaped SVG.
(function () {
  "use strict";
  var FINISHED = ["succeeded", "failed", "cancelled"];

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    row.appendChild(td);
  }

  function appendEvent(body, e) {
    if (body.querySelector('tr[data-seq="' + e.seq + '"]')) { return; }
    var row = document.createElement("tr");
    row.setAttribute("data-seq", String(e.seq));
    cell(row, e.at);
    cell(row, e.level, e.level === "error" ? "bad" : (e.level === "warn" ? "warn" : "muted"));
    cell(row, e.message);
    body.appendChild(row);
  }

  function showStatus(s) {
    var badge = document.getElementById("job-status");
    badge.textContent = s.status;
    badge.className = "badge status-" + s.status;
    document.getElementById("job-stage").textContent = s.stage;
    var done = FINISHED.indexOf(s.status) >= 0;
    document.getElementById("job-cancelling").hidden = !s.cancel_requested || done;
    var cancel = document.getElementById("cancel-form");
    if (cancel && done) { cancel.hidden = true; }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("job-live");
    if (!live || live.getAttribute("data-finished") === "true" || !window.EventSource) { return; }
    var body = document.getElementById("events-body");
    var note = document.getElementById("job-live-note");
    var source = new EventSource(live.getAttribute("data-stream"));
    source.addEventListener("open", function () { note.hidden = false; });
    source.addEventListener("error", function () { note.hidden = true; });
    source.addEventListener("job-event", function (m) { appendEvent(body, JSON.parse(m.data)); });
    source.addEventListener("chart", function (m) {
      document.getElementById("loss-chart").innerHTML = m.data;
    });
    source.addEventListener("status", function (m) { showStatus(JSON.parse(m.data)); });
    source.addEventListener("end", function () {
      source.close();
      note.hidden = true;
      live.setAttribute("data-finished", "true");
    });
  });
})();
