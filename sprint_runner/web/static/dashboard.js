// The Now page's live feed: one EventSource on /api/stream, each event a table row built
// with textContent (never innerHTML). The browser resumes after Last-Event-ID by itself.
"use strict";
(function () {
  var UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/g;

  function visible(value) {
    if (value === null || value === undefined) { return ""; }
    return String(value).replace(UNSAFE, function (c) {
      var code = c.charCodeAt(0), hex = code.toString(16);
      return code < 256 ? "\\x" + ("0" + hex).slice(-2) : "\\u" + ("000" + hex).slice(-4);
    });
  }

  function when(timestamp, unit) {
    if (typeof timestamp !== "number") { return ""; }
    var date = new Date(unit === "ms" ? timestamp : timestamp * 1000);
    if (isNaN(date.getTime())) { return String(timestamp); }
    return date.toISOString().slice(0, 19).replace("T", " ") + "Z";
  }

  function start() {
    var feed = document.getElementById("feed");
    if (!feed || !window.EventSource) { return; }
    var body = feed.tBodies[0];
    var unit = feed.getAttribute("data-time-unit");
    var status = document.getElementById("feed-status");
    var seen = {};
    for (var i = 0; i < body.rows.length; i++) {
      seen[body.rows[i].getAttribute("data-event-id")] = true;
    }
    var source = new EventSource(feed.getAttribute("data-stream"));
    source.onopen = function () { if (status) { status.textContent = "live"; } };
    source.onerror = function () { if (status) { status.textContent = "reconnecting"; } };
    source.onmessage = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      var id = String(event.id);
      if (seen[id]) { return; }
      seen[id] = true;
      var row = document.createElement("tr");
      row.setAttribute("data-event-id", id);
      row.className = "new";
      [event.id, when(event.timestamp, unit), event.story_key, event.command,
       event.event_type, event.status, event.message].forEach(function (value) {
        var cell = document.createElement("td");
        cell.textContent = visible(value);
        row.appendChild(cell);
      });
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > 500) { body.deleteRow(body.rows.length - 1); }
    };
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
