// Every page's shell: the phone menu, toasts (a polite live region) and our own
// confirmation dialog for anything marked data-confirm (instead of window.confirm).
(function () {
  "use strict";

  // ---- the menu (a button on a phone; the links sit in the bar on a wide screen) ----
  function setupMenu() {
    const toggle = document.querySelector(".menu-toggle");
    const menu = document.getElementById("site-menu");
    if (!toggle || !menu) return;
    function setOpen(open, refocus) {
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
      menu.classList.toggle("is-open", open);
      if (open) {
        const first = menu.querySelector("a, button");
        if (first) first.focus();
      } else if (refocus) {
        toggle.focus();
      }
    }
    toggle.addEventListener("click", function () { setOpen(toggle.getAttribute("aria-expanded") !== "true"); });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && menu.classList.contains("is-open")) {
        event.stopPropagation();
        setOpen(false, true);
      }
    }, true);
    document.addEventListener("click", function (event) {
      if (menu.classList.contains("is-open") && !menu.contains(event.target) && !toggle.contains(event.target)) setOpen(false);
    });
  }

  // ---- toasts ----
  const TOAST_COOKIE = "gouache_toast";
  function toast(message) {
    const region = document.getElementById("toasts");
    if (!region || !message) return;
    const item = document.createElement("div");
    item.className = "toast";
    const text = document.createElement("span");
    text.textContent = message;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", function () { item.remove(); });
    item.append(text, close);
    region.append(item);
    window.setTimeout(function () { item.classList.add("is-leaving"); }, 6000);
    window.setTimeout(function () { item.remove(); }, 6400);
  }
  window.gouacheToast = toast;

  // A message the server left for the page after a redirect (a short-lived cookie):
  // shown once, then the cookie is cleared.
  function toastFromCookie() {
    const found = document.cookie.split("; ").find(function (c) { return c.indexOf(TOAST_COOKIE + "=") === 0; });
    if (!found) return;
    document.cookie = TOAST_COOKIE + "=; Max-Age=0; Path=/; SameSite=Lax";
    let message = found.slice(TOAST_COOKIE.length + 1);
    try { message = decodeURIComponent(message.replace(/^"|"$/g, "")); } catch (e) { return; }
    // after the live region is in the accessibility tree, so that it is announced
    window.setTimeout(function () { toast(message); }, 150);
  }

  // ---- our own confirmation dialog ----
  // <button data-confirm="Delete …?" data-confirm-action="Delete"> or <form data-confirm=…>.
  function setupConfirm() {
    const dialog = document.getElementById("confirm-dialog");
    if (!dialog || typeof dialog.showModal !== "function") {
      return;  // no <dialog>: the action goes ahead as it would without script
    }
    const message = document.getElementById("confirm-message");
    const ok = document.getElementById("confirm-ok");
    let pending = null;  // {form, submitter}
    let opener = null;

    function ask(text, action, form, submitter) {
      message.textContent = text;
      ok.textContent = action || "Delete";
      pending = { form: form, submitter: submitter };
      opener = submitter || document.activeElement;
      dialog.returnValue = "";
      dialog.showModal();
      dialog.querySelector("[value=cancel]").focus();
    }
    dialog.addEventListener("close", function () {
      const go = dialog.returnValue === "ok" && pending;
      const p = pending;
      pending = null;
      if (go) {
        p.form.dataset.confirmed = "yes";
        if (p.submitter) p.submitter.dataset.confirmed = "yes";
        p.form.requestSubmit(p.submitter || undefined);
      } else if (opener && opener.focus) {
        opener.focus();
      }
    });
    dialog.addEventListener("click", function (event) {  // a click on the backdrop cancels
      if (event.target === dialog) dialog.close("cancel");
    });

    document.addEventListener("submit", function (event) {
      const form = event.target;
      const submitter = event.submitter || null;
      const holder = (submitter && submitter.hasAttribute("data-confirm")) ? submitter : (form.hasAttribute("data-confirm") ? form : null);
      if (!holder) return;
      if (holder.dataset.confirmed === "yes") {  // asked and agreed: let it through once
        delete holder.dataset.confirmed;
        delete form.dataset.confirmed;
        return;
      }
      event.preventDefault();
      event.stopImmediatePropagation();
      ask(holder.getAttribute("data-confirm"), holder.getAttribute("data-confirm-action"), form, submitter);
    }, true);
  }

  function start() {
    setupMenu();
    setupConfirm();
    toastFromCookie();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
