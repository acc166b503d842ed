// The admin dashboard's figures, kept current without a reload: polls the
// console's stats.json every 5 s while the tab is visible and writes the counts,
// the oldest due age and the paused state into the page. Everything else (every
// action) is a plain form and works without this script.
(function () {
  "use strict";

  var POLL_MS = 5000;

  var panel = document.querySelector("[data-stats-url]");
  if (!panel) {
    return;
  }
  var url = panel.getAttribute("data-stats-url");
  var timer = null;
  var request = null; // the poll on its way, if any
  // Said only where it is true: without this script the figures stay as loaded.
  var refreshed = panel.querySelector("[data-field='refreshed']");
  if (refreshed) {
    refreshed.hidden = false;
  }

  function showCount(name, count) {
    var cell = panel.querySelector("[data-count='" + name + "']");
    if (!cell || !count) {
      return;
    }
    // textContent, never innerHTML: the values come from the server as data.
    cell.textContent = count.label;
    if (count.estimate_label) {
      var estimate = document.createElement("span");
      estimate.className = "estimate";
      estimate.textContent = count.estimate_label;
      cell.appendChild(document.createTextNode(" "));
      cell.appendChild(estimate);
    }
  }

  function show(stats) {
    Object.keys(stats.counts).forEach(function (name) {
      showCount(name, stats.counts[name]);
    });
    showCount("total", stats.total);
    var oldest = panel.querySelector("[data-field='oldest-due']");
    if (oldest) {
      oldest.textContent = stats.oldest_due_age;
    }
    var paused = panel.querySelector("[data-field='paused']");
    // The switch button is a form for the state the page was rendered in, so a
    // change made elsewhere reloads the page rather than offering the wrong button.
    if (paused && paused.textContent.trim() !== (stats.paused ? "paused" : "running")) {
      window.location.reload();
    }
    if (refreshed) {
      refreshed.textContent = "Updated " + new Date().toLocaleTimeString() + "; refreshed every 5 s while this tab is shown.";
    }
  }

  // The next poll, POLL_MS after the last one ended, unless the tab is hidden.
  function later() {
    if (timer === null && request === null && document.visibilityState === "visible") {
      timer = window.setTimeout(refresh, POLL_MS);
    }
  }

  function refresh() {
    timer = null;
    request = fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (stats) {
        if (stats !== null) {
          show(stats);
        }
      })
      .catch(function () {
        // A passing error (a restart, the network): the next poll tries again.
      })
      .then(function () {
        request = null;
        later();
      });
  }

  // A hidden tab stops polling; it catches up at once when shown again.
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState !== "visible") {
      window.clearTimeout(timer);
      timer = null;
    } else if (timer === null && request === null) {
      refresh();
    }
  });

  later();
})();
