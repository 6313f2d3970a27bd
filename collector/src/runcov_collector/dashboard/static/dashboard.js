// runcov dashboard: small progressive enhancements; every page works without this file.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  // Filter files as you type: submit the server-side filter after a short pause.
  var q = document.getElementById("file-q");
  if (q && q.form) {
    var timer = null;
    q.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { q.form.submit(); }, 400);
    });
  }

  // Sparklines: show the hour under the pointer in the tooltip.
  document.querySelectorAll("svg.sparkline").forEach(function (svg) {
    var labels = (svg.getAttribute("data-labels") || "").split("|");
    var title = svg.querySelector("title");
    if (!title || labels.length === 0) { return; }
    svg.addEventListener("mousemove", function (event) {
      var box = svg.getBoundingClientRect();
      var i = Math.round((event.clientX - box.left) / box.width * (labels.length - 1));
      title.textContent = labels[Math.max(0, Math.min(labels.length - 1, i))];
    });
  });

  // Annotated source: jump from one missed (or partial) line to the next.
  var next = document.getElementById("next-missed");
  if (next) {
    var rows = Array.prototype.slice.call(document.querySelectorAll("tr.missed, tr.partial"));
    var at = -1;
    next.disabled = rows.length === 0;
    next.addEventListener("click", function () {
      if (rows.length === 0) { return; }
      if (at >= 0) { rows[at].classList.remove("flash"); }
      at = (at + 1) % rows.length;
      rows[at].classList.add("flash");
      rows[at].scrollIntoView({block: "center"});
      history.replaceState(null, "", "#" + rows[at].id);
    });
  }
});
