// The API keys page: copy the new key to the clipboard (revoking asks in the shell's
// own dialog: data-confirm, static/js/shell.js).
(function () {
  "use strict";

  document.querySelectorAll("[data-copy]").forEach(function (button) {
    var field = document.querySelector(button.getAttribute("data-copy"));
    if (!field) return;
    var label = button.textContent;
    field.addEventListener("focus", function () { field.select(); });
    button.addEventListener("click", function () {
      field.select();
      var done = function () {
        button.textContent = button.getAttribute("data-copied") || "Copied";
        setTimeout(function () { button.textContent = label; }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
      } else {
        document.execCommand("copy");  // plain http on a LAN: the older way still works
        done();
      }
    });
  });
})();
