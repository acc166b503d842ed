// The upload page with JavaScript: several files at once, dropped on the page or
// chosen with the picker, each sent on its own to the upload API (an XHR, for its
// progress events) and then followed until it is completed or failed, all on this
// page. A refused file (413, 415, 400...) shows the API's reason next to it while
// the others go on.
//
// The page only loads this script while no API token is set: with one, the API
// wants a bearer token that a browser page has no business holding, so the page
// keeps to the plain form (POST / and a redirect), which also works without
// JavaScript.
(function () {
  "use strict";

  var POLL_MS = 1000;
  var FINISHED = ["completed", "failed", "cancelled"];

  var form = document.querySelector("form[data-api-url]");
  if (!form) {
    return;
  }
  var apiUrl = form.getAttribute("data-api-url");
  var statusUrl = form.getAttribute("data-status-url");
  var documentUrl = form.getAttribute("data-document-url");
  // A larger file is refused here, unsent: the server would only refuse it after
  // the whole of it arrived (or, past its request limit, without naming the file).
  var maxUploadMb = form.getAttribute("data-max-upload-mb");
  var maxUploadBytes = Math.floor(parseFloat(maxUploadMb) * 1024 * 1024);
  var input = form.querySelector("input[type=file]");
  var priority = form.querySelector("select[name=priority]");
  var zone = form.querySelector("[data-drop-zone]");
  var list = document.querySelector("ul.uploads");

  // The routes carry the id 0 as a placeholder: /documents/0/status.json.
  function urlOf(template, id) {
    return template.replace(/\/0(\/|$)/, "/" + id + "$1");
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text; // never innerHTML: names and errors are data
    }
    return node;
  }

  // One row per file: its name, a progress bar, its status and a message.
  function addRow(file) {
    var row = element("li", "upload");
    var name = element("span", "upload-name", file.name);
    var bar = element("progress", "upload-progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", "Upload of " + file.name);
    var status = element("span", "status status-uploading", "uploading");
    status.setAttribute("data-field", "status");
    var message = element("span", "upload-message");
    row.append(name, bar, status, message);
    list.hidden = false;
    list.append(row);
    return { row: row, bar: bar, status: status, message: message, name: name };
  }

  function showStatus(view, status) {
    view.status.textContent = status;
    view.status.className = "status status-" + status;
    view.row.setAttribute("data-status", status);
  }

  function refuse(view, text) {
    view.bar.hidden = true;
    showStatus(view, "refused");
    view.message.textContent = text;
    view.message.className = "upload-message error-text";
    view.message.setAttribute("role", "alert");
  }

  function linkTo(view, doc) {
    var link = element("a", "upload-name", doc.filename);
    link.href = urlOf(documentUrl, doc.id);
    view.name.replaceWith(link);
    view.name = link;
  }

  function reasonOf(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && body.message) {
        return body.message;
      }
    } catch (ignored) {
      // not JSON: a proxy's page, a connection cut short
    }
    if (xhr.status === 413) {
      return "The file is too large.";
    }
    return "The upload failed (" + (xhr.status || "no answer from the server") + ").";
  }

  function follow(view, id) {
    fetch(urlOf(statusUrl, id), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 404) {
          return { status: "deleted" };
        }
        return response.ok ? response.json() : null;
      })
      .then(function (doc) {
        if (doc !== null) {
          showStatus(view, doc.status);
          if (doc.error) {
            view.message.textContent = doc.error;
            view.message.className = "upload-message error-text";
          }
          if (doc.status === "deleted" || FINISHED.indexOf(doc.status) !== -1) {
            return;
          }
        }
        window.setTimeout(follow, POLL_MS, view, id);
      })
      .catch(function () {
        window.setTimeout(follow, POLL_MS, view, id);
      });
  }

  function send(file) {
    var view = addRow(file);
    if (file.size > maxUploadBytes) {
      // The server's own words for a file over the limit (uploads.py).
      refuse(view, file.name + " is larger than the upload limit of " + maxUploadMb + " MB.");
      return;
    }
    var body = new FormData();
    body.append("file", file, file.name);
    body.append("priority", priority.value);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable) {
        view.bar.value = Math.round((100 * event.loaded) / event.total);
      }
    });
    xhr.addEventListener("load", function () {
      if (xhr.status !== 200 && xhr.status !== 202) {
        refuse(view, reasonOf(xhr));
        return;
      }
      var doc = JSON.parse(xhr.responseText);
      view.bar.value = 100;
      view.bar.hidden = true;
      linkTo(view, doc);
      showStatus(view, doc.status);
      if (doc.duplicate) {
        view.message.textContent = "Uploaded before: this is the existing document.";
      }
      if (FINISHED.indexOf(doc.status) === -1) {
        window.setTimeout(follow, POLL_MS, view, doc.id);
      }
    });
    xhr.addEventListener("error", function () {
      refuse(view, reasonOf(xhr));
    });
    xhr.send(body);
  }

  function sendAll(files) {
    Array.prototype.forEach.call(files, send);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    sendAll(input.files);
    input.value = "";
  });

  zone.querySelector(".drop-hint").hidden = false;
  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) {
      event.preventDefault();
      zone.classList.add("drop-target");
    });
  });
  zone.addEventListener("dragleave", function () {
    zone.classList.remove("drop-target");
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    zone.classList.remove("drop-target");
    if (event.dataTransfer && event.dataTransfer.files.length) {
      sendAll(event.dataTransfer.files);
    }
  });
})();
