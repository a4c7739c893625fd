// The gallery: clean filter URLs, the filters' toggle on a phone, the selection bar, and
// the detail view's keyboard (← previous, → next, Esc back to the grid). Deleting asks in
// the shell's own dialog (data-confirm, static/js/shell.js).
(function () {
  "use strict";

  // Filters: leave empty fields out of the request (and so of the pushed URL).
  document.body.addEventListener("htmx:configRequest", function (event) {
    if (event.detail.elt.id !== "filters") return;
    const params = event.detail.parameters;
    for (const [name, value] of Array.from(new FormData(event.detail.elt).entries())) {
      if (value === "" || (name === "sort" && value === "newest")) delete params[name];
    }
  });
  const filterForm = document.getElementById("filters");
  // On a phone only the search shows; one button opens the rest, and counts what is set.
  function activeFilters() {
    let n = 0;
    for (const field of filterForm.querySelectorAll(".filter-extra select, .filter-extra input")) {
      if (field.type === "checkbox" ? field.checked : (field.value !== "" && !(field.name === "sort" && field.value === "newest"))) n += 1;
    }
    return n;
  }
  function showFilterCount() {
    const count = filterForm.querySelector(".filters-count");
    if (!count) return;
    const n = activeFilters();
    count.textContent = n ? String(n) : "";
    count.hidden = n === 0;
  }
  if (filterForm) {
    const toggle = filterForm.querySelector(".filters-toggle");
    if (toggle) {
      toggle.addEventListener("click", function () {
        const open = toggle.getAttribute("aria-expanded") !== "true";
        toggle.setAttribute("aria-expanded", open ? "true" : "false");
        filterForm.classList.toggle("is-open", open);
      });
    }
    filterForm.addEventListener("change", showFilterCount);
    showFilterCount();
    filterForm.addEventListener("submit", function () {  // without htmx: the same clean URL
      for (const field of filterForm.elements) {
        if (field.name && (field.value === "" || (field.name === "sort" && field.value === "newest"))) field.disabled = true;
      }
    });
  }

  // Selection: count, shift-click ranges, clear.
  let lastChecked = null;
  function boxes() { return Array.from(document.querySelectorAll('input[name="ids"][form="selection"]')); }
  function updateCount() {
    const bar = document.getElementById("selection");
    if (!bar) return;
    const n = boxes().filter(function (b) { return b.checked; }).length;
    bar.querySelector(".bulk-count").textContent = n + " selected";
    bar.classList.toggle("is-active", n > 0);
    const del = bar.querySelector("button[value=delete]");
    if (del) del.setAttribute("data-confirm", "Delete " + (n === 1 ? "this image" : "these " + n + " images") + " for good? This cannot be undone.");
  }
  document.addEventListener("click", function (event) {
    const box = event.target.closest && event.target.closest('input[name="ids"]');
    if (box) {
      if (event.shiftKey && lastChecked && lastChecked !== box) {
        const all = boxes();
        const [a, b] = [all.indexOf(lastChecked), all.indexOf(box)].sort(function (x, y) { return x - y; });
        all.slice(a, b + 1).forEach(function (other) { other.checked = box.checked; });
      }
      lastChecked = box;
      updateCount();
      return;
    }
    if (event.target.closest && event.target.closest(".bulk-clear")) {
      boxes().forEach(function (b) { b.checked = false; });
      updateCount();
      return;
    }
  });
  document.body.addEventListener("htmx:afterSettle", updateCount);
  updateCount();

  // The detail view: arrows browse the filtered gallery, Esc goes back to it.
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
    const id = { ArrowLeft: "prev-image", ArrowRight: "next-image", Escape: "back-to-gallery" }[event.key];
    const link = id && document.getElementById(id);
    if (link) {
      event.preventDefault();
      window.location.assign(link.href);
    }
  });
})();
