// The console's own small script: parts of a page marked data-refresh="<seconds>" reload
// themselves from data-src (a fragment URL) without a page load; forms marked
// data-confirm="<text>" ask first; links marked data-back go back in the history. Pages with
// more (server-sent updates, keys) add their own file.
(function () {
  "use strict";
  function refresh(el) {
    var url = el.getAttribute("data-src");
    fetch(url, { credentials: "same-origin", headers: { "x-console-fragment": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { el.innerHTML = html; } })
      .catch(function () {});
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh][data-src]").forEach(function (el) {
      var seconds = Math.max(1, parseFloat(el.getAttribute("data-refresh")) || 5);
      setInterval(function () { if (!document.hidden) { refresh(el); } }, seconds * 1000);
    });
    document.querySelectorAll("a[data-back]").forEach(function (link) {
      link.addEventListener("click", function (ev) {
        if (window.history.length > 1) { ev.preventDefault(); window.history.back(); }
      });
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { ev.preventDefault(); }
      });
    });
  });
})();
