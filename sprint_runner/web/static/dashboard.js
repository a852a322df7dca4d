// The dashboard's script, on every page. Every value from the database reaches the page
// through textContent or setAttribute (never innerHTML): it is untrusted agent output.
//  - times: each <time data-ts> (and SVG text with data-ts) rewritten to local time;
//  - ages: each [data-age] counted on every second ("12 s ago"), the heartbeat's
//    marked stale past its threshold;
//  - the Now page: one EventSource on /api/stream; events (unnamed messages) become feed
//    rows, named messages (batch, stories, commands, tasks) refresh the batch's parts;
//  - the batch page: running commands' bars lengthened by the time elapsed.
"use strict";
(function () {
  var UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/g;
  var PER_SECOND = { s: 1, ms: 1000 };
  var loaded = Date.now();

  function visible(value) {
    if (value === null || value === undefined) { return ""; }
    return String(value).replace(UNSAFE, function (c) {
      var code = c.charCodeAt(0), hex = code.toString(16);
      return code < 256 ? "\\x" + ("0" + hex).slice(-2) : "\\u" + ("000" + hex).slice(-4);
    });
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function toDate(timestamp, unit) {
    var n = Number(timestamp);
    if (!isFinite(n)) { return null; }
    var date = new Date(unit === "ms" ? n : n * 1000);
    return isNaN(date.getTime()) ? null : date;
  }

  // The viewer's local time, YYYY-MM-DD HH:MM:SS (the same shape as the UTC fallback).
  function localText(date) {
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) +
      " " + pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
  }

  function utcText(date) {
    return date.toISOString().slice(0, 19).replace("T", " ") + "Z";
  }

  function localize(element) {
    var date = toDate(element.getAttribute("data-ts"), element.getAttribute("data-unit"));
    if (!date) { return; }
    element.textContent = localText(date);
    element.setAttribute("title", utcText(date));
    element.setAttribute("data-local", "1");
  }

  function timeElement(timestamp, unit) {
    var date = toDate(timestamp, unit);
    if (timestamp === null || timestamp === undefined || !date) {
      return document.createTextNode(visible(timestamp));
    }
    var element = document.createElement("time");
    element.setAttribute("datetime", date.toISOString().slice(0, 19) + "Z");
    element.setAttribute("data-ts", String(timestamp));
    element.setAttribute("data-unit", unit);
    localize(element);
    return element;
  }

  function ago(seconds) {
    var s = Math.max(Math.floor(seconds), 0);
    if (s < 60) { return s + " s ago"; }
    if (s < 3600) { return Math.floor(s / 60) + " min ago"; }
    if (s < 2 * 86400) { return Math.floor(s / 3600) + " h ago"; }
    return Math.floor(s / 86400) + " d ago";
  }

  function ageElement(seconds) {
    var span = document.createElement("span");
    span.className = "age";
    setAge(span, seconds);
    return span;
  }

  // data-age is the age when data-age-at (ms since the epoch, this browser's clock) was set.
  function setAge(element, seconds) {
    element.setAttribute("data-age", String(Math.max(Number(seconds) || 0, 0)));
    element.setAttribute("data-age-at", String(Date.now()));
    element.textContent = ago(seconds);
  }

  function tickAges() {
    var now = Date.now();
    var ages = document.querySelectorAll("[data-age]");
    for (var i = 0; i < ages.length; i++) {
      var at = Number(ages[i].getAttribute("data-age-at")) || loaded;
      ages[i].textContent = ago(Number(ages[i].getAttribute("data-age")) + (now - at) / 1000);
    }
    var line = document.getElementById("heartbeat-age");
    var age = line && line.querySelector("[data-age]");
    if (age) {
      var seconds = Number(age.getAttribute("data-age")) +
        (now - (Number(age.getAttribute("data-age-at")) || loaded)) / 1000;
      var stale = seconds >= Number(line.getAttribute("data-stale-after"));
      line.classList.toggle("stale", stale);
    }
  }

  function growBars() {
    var svg = document.getElementById("timeline");
    if (!svg) { return; }
    var scale = Number(svg.getAttribute("data-scale"));
    var perSecond = PER_SECOND[svg.getAttribute("data-unit")] || 1;
    var maxX = Number(svg.getAttribute("data-max-x"));
    var elapsed = (Date.now() - loaded) / 1000;
    var bars = svg.querySelectorAll("rect[data-running]");
    for (var i = 0; i < bars.length; i++) {
      var x = Number(bars[i].getAttribute("x"));
      var width = Number(bars[i].getAttribute("data-width")) + elapsed * perSecond * scale;
      bars[i].setAttribute("width", Math.max(Math.min(width, maxX - x), 2).toFixed(1));
    }
  }

  function cell(row, content) {
    var td = document.createElement("td");
    if (content instanceof Node) { td.appendChild(content); } else { td.textContent = visible(content); }
    row.appendChild(td);
  }

  function fillTable(id, items, cells) {
    var table = document.getElementById(id);
    if (!table) { return; }
    var body = table.tBodies[0];
    while (body.rows.length) { body.deleteRow(0); }
    items.forEach(function (item) {
      var row = document.createElement("tr");
      cells(item).forEach(function (content) { cell(row, content); });
      body.appendChild(row);
    });
  }

  function fact(name, content) {
    var dd = document.querySelector("#batch dd." + name);
    if (!dd) { return; }
    while (dd.firstChild) { dd.removeChild(dd.firstChild); }
    if (content instanceof Node) { dd.appendChild(content); } else { dd.textContent = visible(content); }
  }

  var updates = {
    batch: function (b) {
      var unit = b.time_unit;
      fact("status", b.status);
      fact("cycles", (b.cycles_completed || 0) + " of " + b.max_cycles);
      fact("owner", b.owner);
      fact("started", timeElement(b.started_at, unit));
      fact("ended", timeElement(b.ended_at, unit));
      fact("heartbeat", timeElement(b.heartbeat_at, unit));
      var line = document.getElementById("heartbeat-age");
      if (line) {
        line.hidden = !b.running;
        line.setAttribute("data-stale-after", String(b.stale_after));
        var age = line.querySelector("[data-age]");
        if (age) { setAge(age, b.heartbeat_age || 0); }
        line.classList.toggle("stale", !!b.stale);
      }
      var heading = document.querySelector("#batch h2");
      if (heading && heading.firstChild && heading.firstChild.nodeType === 3) {
        heading.firstChild.textContent = (b.running ? "Running" : "Last") + " batch ";
      }
    },
    stories: function (s) {
      fillTable("stories-by-status", s.by_status, function (pair) { return [pair[0], pair[1]]; });
      var list = document.getElementById("blocked-stories");
      if (!list) { return; }
      while (list.firstChild) { list.removeChild(list.firstChild); }
      s.blocked.forEach(function (key) {
        var item = document.createElement("li");
        item.className = "blocked";
        item.textContent = visible(key);
        list.appendChild(item);
      });
    },
    commands: function (c) {
      fillTable("running-commands", c.running, function (command) {
        return [command.id, command.story_key, command.command, command.task_id,
                timeElement(command.started_at, c.time_unit), ageElement(command.age)];
      });
    },
    tasks: function (t) {
      fillTable("pending-tasks", t.pending, function (task) {
        return [task.id, task.story_key, task.task_type,
                timeElement(task.spawned_at, t.time_unit), ageElement(task.age)];
      });
    }
  };

  function startFeed() {
    var feed = document.getElementById("feed");
    if (!feed || !window.EventSource) { return; }
    var body = feed.tBodies[0];
    var unit = feed.getAttribute("data-time-unit");
    var status = document.getElementById("feed-status");
    var section = document.getElementById("batch");
    var shownBatch = section ? section.getAttribute("data-batch-id") : "";
    var seen = {};
    var last = 0;
    for (var i = 0; i < body.rows.length; i++) {
      var rowId = body.rows[i].getAttribute("data-event-id");
      seen[rowId] = true;
      last = Math.max(last, Number(rowId));
    }
    var stream = feed.getAttribute("data-stream");

    function onEvent(message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      var id = String(event.id);
      if (seen[id]) { return; }
      seen[id] = true;
      last = Math.max(last, Number(event.id));
      var row = document.createElement("tr");
      row.setAttribute("data-event-id", id);
      row.className = "new";
      [event.id, timeElement(event.timestamp, unit), event.story_key, event.command,
       event.event_type, event.status, event.message].forEach(function (value) {
        cell(row, value);
      });
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > 500) { body.deleteRow(body.rows.length - 1); }
    }

    function onUpdate(name) {
      return function (message) {
        var value;
        try { value = JSON.parse(message.data); } catch (e) { return; }
        if (String(value.batch_id) !== shownBatch) {
          // Another batch now (a new one started): the page is about a batch, show it.
          window.location.reload();
          return;
        }
        updates[name](value);
      };
    }

    function connect(url) {
      var source = new EventSource(url);
      source.onopen = function () { if (status) { status.textContent = "live"; } };
      source.onerror = function () {
        if (status) { status.textContent = "reconnecting"; }
        if (source.readyState === EventSource.CLOSED) {
          // The browser gave up (an error answer): start again after the last row shown.
          var base = stream.replace(/([?&])after=\d+&?/, "$1").replace(/[?&]$/, "");
          var again = base + (base.indexOf("?") < 0 ? "?" : "&") + "after=" + last;
          window.setTimeout(function () { connect(again); }, 2000);
        }
      };
      source.onmessage = onEvent;
      Object.keys(updates).forEach(function (name) {
        source.addEventListener(name, onUpdate(name));
      });
    }

    connect(stream);
  }

  function start() {
    var times = document.querySelectorAll("[data-ts]");
    for (var i = 0; i < times.length; i++) { localize(times[i]); }
    startFeed();
    tickAges();
    window.setInterval(function () { tickAges(); growBars(); }, 1000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
