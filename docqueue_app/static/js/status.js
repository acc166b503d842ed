// Follows a pending or processing document on its detail page: polls its
// status every 1.5 s while the tab is visible, shows it, and reloads the page
// (metadata, text preview) once processing has finished.
(function () {
  "use strict";

  var POLL_MS = 1500;
  var FINISHED = ["completed", "failed", "cancelled"];

  var panel = document.querySelector("[data-status-url]");
  if (!panel) {
    return;
  }
  var url = panel.getAttribute("data-status-url");
  var label = panel.querySelector("[data-field='status']");
  var timer = null;
  var busy = false; // a request is on its way

  function show(status) {
    // textContent, never innerHTML: the value comes from the server as data.
    label.textContent = status;
    label.className = "status status-" + status;
  }

  function schedule() {
    busy = false;
    if (timer === null && !document.hidden) {
      timer = window.setTimeout(poll, POLL_MS);
    }
  }

  function poll() {
    timer = null;
    busy = true;
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 404) {
          return { status: "deleted" };
        }
        return response.ok ? response.json() : null;
      })
      .then(function (doc) {
        if (doc === null) {
          schedule(); // a passing error: try again
        } else if (doc.status === "deleted" || FINISHED.indexOf(doc.status) !== -1) {
          window.location.reload(); // the page shows the outcome (or the 404)
        } else {
          show(doc.status);
          schedule();
        }
      })
      .catch(schedule);
  }

  // A hidden tab stops polling; it catches up at once when shown again.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      window.clearTimeout(timer);
      timer = null;
    } else if (timer === null && !busy) {
      poll();
    }
  });

  schedule();
})();
