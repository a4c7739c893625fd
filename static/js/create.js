// The Create form's image modes: the start image's size (for the live price) and the
// inpainting mask editor (paint with the mouse or a finger; brush size, undo, clear).
// The painted mask is kept in the form's "mask" file input as a PNG of the start
// image's own size (painted pixels opaque), so the form posts it like an upload.
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

  function announceSize(width, height) {
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
})();
