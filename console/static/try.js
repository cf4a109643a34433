// Try a scan: one file sent to the live model; its mask drawn over the scan per class, with an opacity
// slider, the doubt, the regions (click one to outline it) and the version that answered.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const shown = new Set([1, 2, 3, 4]);
  let scan = null;      // the windowed scan as an <img>
  let classes = null;   // Uint8Array of class indices, row-major
  let overlay = null;   // a canvas of the mask in class colours
  let result = null;
  let picked = -1;

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error(`could not load ${url}`));
      img.src = url;
    });
  }

  // The mask PNG holds one class index a pixel (grey): read it back through a canvas.
  function readClasses(img) {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const out = new Uint8Array(canvas.width * canvas.height);
    for (let i = 0; i < out.length; i++) out[i] = rgba[i * 4];
    return out;
  }

  function paintOverlay() {
    const { width, height } = result;
    overlay = document.createElement("canvas");
    overlay.width = width; overlay.height = height;
    const ctx = overlay.getContext("2d");
    const image = ctx.createImageData(width, height);
    for (let i = 0; i < classes.length; i++) {
      const c = classes[i];
      const colour = Console.COLOURS[c];
      if (!colour || !shown.has(c)) continue;
      image.data.set([colour[0], colour[1], colour[2], 255], i * 4);
    }
    ctx.putImageData(image, 0, 0);
  }

  function draw() {
    if (!result) return;
    const view = $("view");
    const { width, height } = result;
    const room = $("stage").clientWidth - 16;
    const scale = Math.max(1, Math.min(8, Math.floor(room / width) || 1));
    view.width = width; view.height = height;
    view.style.width = `${width * scale}px`;
    const ctx = view.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = 1;
    ctx.drawImage(scan, 0, 0);
    ctx.globalAlpha = Number($("opacity").value) / 100;
    ctx.drawImage(overlay, 0, 0);
    ctx.globalAlpha = 1;
    if (picked >= 0) {
      const r = result.regions[picked];
      const c = Console.COLOURS[r.class_id] || [255, 255, 255];
      ctx.strokeStyle = `rgb(${c.join(",")})`;
      ctx.lineWidth = Math.max(1, Math.round(width / 400));
      ctx.strokeRect(r.x - 0.5, r.y - 0.5, r.width + 1, r.height + 1);
    }
  }

  function swatch(classId) {
    const s = document.createElement("span");
    s.className = "swatch";
    s.style.background = `rgb(${(Console.COLOURS[classId] || [200, 200, 200]).join(",")})`;
    return s;
  }

  function showClasses() {
    const box = $("classes");
    box.replaceChildren();
    Console.CLASSES.forEach((name, id) => {
      if (id === 0) return;
      const label = document.createElement("label");
      const check = document.createElement("input");
      check.type = "checkbox"; check.checked = shown.has(id);
      check.onchange = () => { if (check.checked) shown.add(id); else shown.delete(id); paintOverlay(); draw(); };
      const fraction = document.createElement("span");
      fraction.className = "fraction";
      fraction.textContent = `${(100 * (result.class_fractions[name] || 0)).toFixed(2)}%`;
      label.append(check, swatch(id), document.createTextNode(name.replaceAll("_", " ")), fraction);
      box.appendChild(label);
    });
  }

  function showRegions() {
    const body = $("regions").querySelector("tbody");
    body.replaceChildren();
    if (!result.regions.length) {
      const tr = body.insertRow(); const td = tr.insertCell();
      td.colSpan = 6; td.className = "muted"; td.textContent = "no defect regions";
      return;
    }
    result.regions.forEach((r, i) => {
      const tr = body.insertRow();
      const name = tr.insertCell();
      name.append(swatch(r.class_id), document.createTextNode(r.class_name.replaceAll("_", " ")));
      for (const text of [`${r.x}, ${r.y}`, `${r.width} × ${r.height}`, `${r.area_px} px`,
                          r.mean_confidence.toFixed(2), r.doubt.toFixed(2)]) tr.insertCell().textContent = text;
      tr.onclick = () => {
        picked = picked === i ? -1 : i;
        body.querySelectorAll("tr").forEach((row, j) => row.classList.toggle("selected", j === picked));
        draw();
      };
    });
  }

  function showFacts(name) {
    $("version").textContent = `v${result.version}`;
    $("scan-name").textContent = name;
    $("size").textContent = `${result.width} × ${result.height} px`;
    $("doubt").textContent = result.doubt.toFixed(3);
    $("doubt-bar").style.width = `${Math.round(100 * result.doubt)}%`;
    $("latency").textContent = `${result.server_latency_ms} ms`;
    $("empty").classList.add("hidden");
    $("result").classList.remove("hidden");
  }

  async function submit(file) {
    if (!file) return;
    const message = $("message");
    Console.notice(message, `Segmenting ${file.name}…`);
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const answer = await Console.api("/api/segment", { method: "POST", body: form });
      const [scanImg, maskImg] = await Promise.all([loadImage(`/api/segment/${answer.id}/scan.png`),
                                                    loadImage(`/api/segment/${answer.id}/mask.png`)]);
      result = answer; scan = scanImg; classes = readClasses(maskImg); picked = -1;
      paintOverlay();
      $("stage").classList.remove("hidden");
      showFacts(file.name); showClasses(); showRegions(); draw();
      const defects = answer.regions.length;
      Console.notice(message, `${file.name}: ${defects} defect region${defects === 1 ? "" : "s"} ` +
                              `from model version ${answer.version}.`, "ok");
    } catch (error) {
      Console.notice(message, error.message, "error");
    }
  }

  function wireDrop() {
    const drop = $("drop");
    $("file").addEventListener("change", (e) => { submit(e.target.files[0]); e.target.value = ""; });
    for (const kind of ["dragenter", "dragover"]) {
      drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
    }
    for (const kind of ["dragleave", "drop"]) drop.addEventListener(kind, () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => { e.preventDefault(); submit(e.dataTransfer.files[0]); });
  }

  async function main() {
    await Console.start("try");
    wireDrop();
    $("opacity").addEventListener("input", () => {
      $("opacity-value").textContent = `${$("opacity").value}%`;
      draw();
    });
    window.addEventListener("resize", draw);
  }

  main().catch((error) => Console.notice($("message"), error.message, "error"));
})();
