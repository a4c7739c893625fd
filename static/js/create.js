// The Create form's image modes: the start image's size (for the live price) and the
// inpainting mask editor (paint with the mouse or a finger; brush size, undo, clear).
// The painted mask is kept in the form's "mask" file input as a PNG of the start
// image's own size (painted pixels opaque), so the form posts it like an upload.
// Uploads take a drop or a paste too, and show what was chosen. A new job is brought into
// view as soon as it is queued; the prompt's typed parameters are shown in the fields
// they set; examples and recent prompts fill the prompt box.
(function () {
  "use strict";
  const form = document.getElementById("generate-form");
  if (!form) return;
  // Choosing another model reloads the form with that model's sizes, steps, guidance and
  // price, keeping what was typed.
  const picker = document.getElementById("model-picker");
  if (picker) {
    picker.addEventListener("change", function (event) {
      if (event.target.name !== "model") return;
      const params = new URLSearchParams({ model: event.target.value });
      for (const name of ["mode", "prompt", "negative_prompt", "source_image", "sampler", "seed", "n"]) {
        const field = form.elements[name];
        const value = field && (field instanceof RadioNodeList ? field.value : field.value);
        if (value) params.set(name, value);
      }
      window.location.assign("/?" + params.toString());
    });
  }
  // The strength slider shows its value as it moves.
  const strength = form.querySelector("#strength");
  const strengthValue = form.querySelector("#strength-value");
  if (strength && strengthValue) {
    strength.addEventListener("input", function () {
      strengthValue.value = strength.value;
    });
  }
  const fileInput = form.querySelector("#image");
  const maskInput = form.querySelector("#mask");
  const editor = document.getElementById("mask-editor");
  const imageCanvas = document.getElementById("mask-image");
  const paintCanvas = document.getElementById("mask-paint");
  const brush = document.getElementById("brush");
  const history = [];
  let painting = false;
  let last = null;

  // Until the user sets the frame, it grows by a quarter of the image's width on the left
  // and on the right (what the server does for a gallery image), so it fits any model.
  const extendFields = Array.from(form.querySelectorAll("[data-auto-extend]"));
  extendFields.forEach(function (input) {
    input.addEventListener("input", function () {
      extendFields.forEach(function (f) { delete f.dataset.autoExtend; });
    });
  });

  function fitFrame(width) {
    const side = Math.max(8, Math.round(width / 4 / 8) * 8);
    for (const f of extendFields) {
      if (!("autoExtend" in f.dataset)) return;
      f.value = /(left|right)$/.test(f.name) ? side : 0;
    }
  }

  function announceSize(width, height) {
    fitFrame(width);
    form.querySelector("#source-width").value = width;
    form.querySelector("#source-height").value = height;
    document.body.dispatchEvent(new Event("source-sized"));
  }

  function showImage(img) {
    for (const canvas of [imageCanvas, paintCanvas]) {
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
    }
    imageCanvas.getContext("2d").drawImage(img, 0, 0);
    history.length = 0;
    editor.classList.add("has-image");
  }

  function load(url, fromUpload) {
    const img = new Image();
    img.onload = function () {
      showImage(img);
      if (fromUpload) announceSize(img.naturalWidth, img.naturalHeight);
    };
    img.src = url;
  }

  if (fileInput) {
    fileInput.addEventListener("change", function () {
      const file = fileInput.files && fileInput.files[0];
      if (file) load(URL.createObjectURL(file), true);
    });
  }
  if (editor && editor.dataset.source) load(editor.dataset.source, false);

  // ---- uploads: drop, paste, preview ------------------------------------------------
  const ACCEPTED = ["image/png", "image/jpeg", "image/webp"];

  function choose(input, file) {
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function imageFile(list) {
    return Array.from(list || []).find(function (f) { return ACCEPTED.includes(f.type); });
  }

  function kilobytes(bytes) {
    return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(bytes / 1024)) + " KB";
  }

  form.querySelectorAll("[data-dropzone]").forEach(function (zone) {
    const input = zone.querySelector("input[type=file]");
    const preview = zone.querySelector(".dropzone-preview");
    const name = zone.querySelector(".dropzone-name");
    let shown = null;
    input.addEventListener("change", function () {
      const file = input.files && input.files[0];
      if (shown) URL.revokeObjectURL(shown);
      shown = file ? URL.createObjectURL(file) : null;
      preview.hidden = !file;
      if (file) preview.src = shown;
      else preview.removeAttribute("src");
      zone.classList.toggle("has-file", Boolean(file));
      name.textContent = file ? file.name + " · " + kilobytes(file.size) : "";
    });
    zone.addEventListener("dragover", function (event) {
      event.preventDefault(); // allows the drop
      zone.classList.add("is-dragging");
    });
    zone.addEventListener("dragleave", function () { zone.classList.remove("is-dragging"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("is-dragging");
      const file = imageFile(event.dataTransfer && event.dataTransfer.files);
      if (file) choose(input, file);
      else name.textContent = "That is not a PNG, JPEG or WebP image.";
    });
  });

  // A pasted image becomes the start image (switching a text-to-image form to image to image).
  document.addEventListener("paste", function (event) {
    const file = imageFile(event.clipboardData && event.clipboardData.files);
    if (!file || !fileInput) return;
    event.preventDefault();
    const mode = form.querySelector("input[name=mode]:checked");
    if (!mode || mode.value === "txt2img") {
      const img2img = form.querySelector("input[name=mode][value=img2img]");
      if (img2img) {
        img2img.checked = true;
        img2img.dispatchEvent(new Event("change", { bubbles: true }));
      }
    }
    choose(fileInput, file);
  });

  function point(event) {
    const rect = paintCanvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * paintCanvas.width) / rect.width,
      y: ((event.clientY - rect.top) * paintCanvas.height) / rect.height,
    };
  }

  function radius() {
    const rect = paintCanvas.getBoundingClientRect();
    return ((Number(brush.value) / 2) * paintCanvas.width) / Math.max(1, rect.width);
  }

  function stroke(from, to) {
    const ctx = paintCanvas.getContext("2d");
    ctx.strokeStyle = "rgb(236, 72, 153)";
    ctx.fillStyle = "rgb(236, 72, 153)";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = radius() * 2;
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    ctx.beginPath();
    ctx.arc(to.x, to.y, radius(), 0, Math.PI * 2);
    ctx.fill();
  }

  function storeMask() {
    // Synchronous, so the mask is in place whenever the form is sent.
    const data = paintCanvas.toDataURL("image/png");
    const bytes = atob(data.split(",")[1]);
    const buffer = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) buffer[i] = bytes.charCodeAt(i);
    const transfer = new DataTransfer();
    if (history.length) transfer.items.add(new File([buffer], "mask.png", { type: "image/png" }));
    maskInput.files = transfer.files;
  }

  if (paintCanvas) {
    paintCanvas.addEventListener("pointerdown", function (event) {
      if (!editor.classList.contains("has-image")) return;
      event.preventDefault();
      paintCanvas.setPointerCapture(event.pointerId);
      history.push(paintCanvas.getContext("2d").getImageData(0, 0, paintCanvas.width, paintCanvas.height));
      painting = true;
      last = point(event);
      stroke(last, last);
    });
    paintCanvas.addEventListener("pointermove", function (event) {
      if (!painting) return;
      const next = point(event);
      stroke(last, next);
      last = next;
    });
    for (const type of ["pointerup", "pointercancel"]) {
      paintCanvas.addEventListener(type, function () {
        if (!painting) return;
        painting = false;
        storeMask();
      });
    }
    document.getElementById("mask-undo").addEventListener("click", function () {
      const previous = history.pop();
      if (previous) paintCanvas.getContext("2d").putImageData(previous, 0, 0);
      storeMask();
    });
    document.getElementById("mask-clear").addEventListener("click", function () {
      paintCanvas.getContext("2d").clearRect(0, 0, paintCanvas.width, paintCanvas.height);
      history.length = 0;
      storeMask();
    });
  }

  // ---- the prompt: examples, recent prompts, typed parameters ------------------------
  const promptBox = form.querySelector("#prompt");

  function usePrompt(text) {
    promptBox.value = text;
    promptBox.dispatchEvent(new Event("input", { bubbles: true })); // re-prices it
    promptBox.focus();
  }

  form.querySelectorAll("a[data-example]").forEach(function (chip) {
    chip.addEventListener("click", function (event) {
      event.preventDefault();
      usePrompt(chip.textContent.trim());
    });
  });
  const promptHistory = document.getElementById("prompt-history");
  if (promptHistory) {
    promptHistory.addEventListener("click", function (event) {
      const item = event.target.closest("[data-prompt]");
      if (!item) return;
      usePrompt(item.dataset.prompt);
      promptHistory.open = false;
    });
  }

  // "--n 4" in the prompt decides the number of images: the field shows 4 too, so what the
  // form shows is what the quote prices.
  function showTyped(quote) {
    const typed = quote.querySelector("[data-overrides]");
    const overrides = typed ? JSON.parse(typed.dataset.overrides) : {};
    form.querySelectorAll(".set-by-prompt").forEach(function (el) { el.classList.remove("set-by-prompt"); });
    for (const [name, value] of Object.entries(overrides)) {
      const field = form.elements[name];
      if (!field || field instanceof RadioNodeList) continue;
      if (field.tagName === "SELECT" && !Array.from(field.options).some(function (o) { return o.value === value; })) continue;
      field.value = value;
      if (field === strength && strengthValue) strengthValue.value = value;
      const box = field.closest(".field");
      if (box) box.classList.add("set-by-prompt");
    }
  }

  // ---- a new job: in view at once --------------------------------------------------
  // Scrolled down at the Generate button, the new card (top of the list) is out of sight,
  // or only its top shows (on a phone): bring its top just under the sticky header. A card
  // wholly on screen stays put.
  function bringIntoView(el) {
    const header = document.querySelector(".topbar");
    const top = header && getComputedStyle(header).position !== "static" ? header.getBoundingClientRect().bottom : 0;
    const rect = el.getBoundingClientRect();
    if (rect.top >= top && rect.bottom <= window.innerHeight) return;
    const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    window.scrollBy({ top: rect.top - top - 12, behavior: still ? "auto" : "smooth" });
  }

  document.body.addEventListener("htmx:afterSwap", function (event) {
    const target = event.detail.target;
    if (!target) return;
    if (target.id === "quote") return showTyped(target);
    if (target.id !== "jobs") return;
    const empty = document.getElementById("jobs-empty");
    if (empty) empty.remove();
    const card = target.querySelector(".job");
    if (card) {
      card.classList.add("job-new");
      bringIntoView(card);
    }
    // the hold changed the balance: "N left after" is priced again
    document.body.dispatchEvent(new Event("quote-refresh"));
  });
  // Each submission gets its own request id (the same id twice is one job: a double click).
  document.body.addEventListener("new-request-id", function (event) {
    const field = form.querySelector("#request-id");
    if (field && event.detail && event.detail.value) field.value = event.detail.value;
  });
  const quoteBox = document.getElementById("quote");
  if (quoteBox) showTyped(quoteBox);

  // A finished result's "More like this" and "Upscale" queue their job into this page's list.
  if (window.htmx) {
    window.htmx.onLoad(function (root) {
      const forms = root.querySelectorAll ? root.querySelectorAll("form.result-action") : [];
      forms.forEach(function (f) {
        if (f.hasAttribute("hx-post")) return;
        f.setAttribute("hx-post", "/generate");
        f.setAttribute("hx-target", "#jobs");
        f.setAttribute("hx-swap", "afterbegin");
        f.setAttribute("hx-disabled-elt", "find button");
        window.htmx.process(f);
      });
    });
  }
})();
