// The review queue's keys: a approves, r rejects, c opens the answer to correct (Enter or
// Ctrl+Enter sends it, Shift+Enter is a new line, Escape puts it away). The page's form and
// its buttons work the same without this script (the correction box is then always shown).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("review-form");
    if (!form) { return; }
    var box = document.getElementById("review-correction-box");
    var text = document.getElementById("review-correction");
    var buttons = {
      a: document.getElementById("approve"),
      c: document.getElementById("correct"),
      r: document.getElementById("reject")
    };
    var sending = false;
    box.hidden = true;

    function send(button) {
      if (sending) { return; }
      if (form.requestSubmit) { form.requestSubmit(button); } else { button.click(); }
    }
    function openCorrection() {
      box.hidden = false;
      text.focus();
      text.setSelectionRange(text.value.length, text.value.length);
    }
    function typing(el) {
      return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
    }

    form.addEventListener("submit", function (ev) {
      if (sending) { ev.preventDefault(); return; }
      sending = true;
    });
    buttons.c.addEventListener("click", function (ev) {
      if (box.hidden) { ev.preventDefault(); openCorrection(); }
    });
    text.addEventListener("keydown", function (ev) {
      if (ev.isComposing) { return; }
      if (ev.key === "Enter" && !ev.shiftKey) {
        ev.preventDefault();
        send(buttons.c);
      } else if (ev.key === "Escape") {
        ev.preventDefault();
        box.hidden = true;
        text.blur();
      }
    });
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing || typing(ev.target)) { return; }
      var key = ev.key.toLowerCase();
      if (key === "c") { ev.preventDefault(); openCorrection(); }
      else if (key === "a" || key === "r") { ev.preventDefault(); send(buttons[key]); }
    });
  });
})();
