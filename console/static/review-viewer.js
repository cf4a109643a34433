// The review station's viewer: one canvas showing the scan and its label under a view transform (zoom, pan),
// with brush, eraser and fill by mouse, pen or touch. The scan and the label's colours are offscreen canvases at
// the scan's size; a frame (at most one per animation frame, only when something changed) is two drawImage calls
// under the transform, so a 2048 x 2048 scan pans as smoothly as a small one. A paint stroke recolours only the
// box it changed.
"use strict";

// hooks: map() the open ReviewLabel.LabelMap or null, regions() its regions, tool {name, cls, radius, eraseOnly},
// look {label, opacity, boxes, region}, canEdit() whether this account may paint, zoomed(scale) after each change.
function ReviewViewer(canvas, hooks) {
  const MIN_ZOOM = 1 / 32, MAX_ZOOM = 64;
  const ctx = canvas.getContext("2d"), { tool, look } = hooks;
  const view = { scale: 1, tx: 0, ty: 0 };
  const PALETTE = new Uint32Array(256);  // class -> RGBA as the platform stores it; class 0 and unknown: clear
  Console.COLOURS.forEach((c, k) => { if (c) new Uint8Array(PALETTE.buffer).set([...c, 255], 4 * k); });
  let scan = null, overlay = null, octx = null, image = null, pixels = null, pending = null, frame = 0;
  let hover = null, gesture = null, space = false, fitted = false;  // fitted: kept fitted as the canvas resizes
  const pointers = new Map();  // the pointers down, for a two-finger pinch

  function redraw() { if (!frame) frame = requestAnimationFrame(draw); }
  function recolour() {  // the label's changed box into the colour canvas, nothing else
    const map = hooks.map();
    if (!pending || !map) return;
    const [x0, y0, x1, y1] = pending, { width, labels } = map;
    pending = null;
    for (let y = y0; y < y1; y++) {
      for (let i = y * width + x0, end = y * width + x1; i < end; i++) pixels[i] = PALETTE[labels[i]];
    }
    octx.putImageData(image, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }
  function draw() {
    frame = 0;
    const dpr = devicePixelRatio || 1, s = view.scale;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!scan) return;
    recolour();
    ctx.imageSmoothingEnabled = s < 1;  // zoomed in: each scan pixel a crisp square
    ctx.setTransform(s * dpr, 0, 0, s * dpr, view.tx * dpr, view.ty * dpr);
    ctx.drawImage(scan, 0, 0);
    if (look.label && look.opacity > 0) {
      ctx.globalAlpha = look.opacity;
      ctx.drawImage(overlay, 0, 0);
      ctx.globalAlpha = 1;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (look.boxes) {
      for (const region of hooks.regions()) {
        const [x, y, w, h] = region.bbox, colour = Console.COLOURS[region.class_id] || [255, 255, 255];
        ctx.strokeStyle = `rgb(${colour.join(", ")})`;
        ctx.lineWidth = region === look.region ? 3 : 1.5;
        ctx.strokeRect(view.tx + x * s - 1, view.ty + y * s - 1, w * s + 2, h * s + 2);
      }
    }
    if (hover && hooks.canEdit() && !gesture && !space && (tool.name === "brush" || tool.name === "eraser")) {
      ctx.beginPath();
      ctx.arc(view.tx + (hover[0] + 0.5) * s, view.ty + (hover[1] + 0.5) * s, (tool.radius + 0.5) * s, 0, 2 * Math.PI);
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1;
      ctx.setLineDash([4, 3]);
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }
  function changed() { hooks.zoomed(view.scale); redraw(); }
  function resize() {
    const dpr = devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    canvas.height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (fitted) fit(); else redraw();
  }
  function zoomAt(factor, x, y) {  // about a point of the canvas, which stays where it is
    const s = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, view.scale * factor)), k = s / view.scale;
    view.tx = x - (x - view.tx) * k;
    view.ty = y - (y - view.ty) * k;
    view.scale = s;
    fitted = false;
    changed();
  }
  function frameBox(x, y, w, h, most = MAX_ZOOM) {  // centre a box of the scan, as large as fits (up to ``most``)
    const cw = canvas.clientWidth, ch = canvas.clientHeight;
    const s = Math.min(most, Math.max(MIN_ZOOM, 0.96 * Math.min(cw / w, ch / h)));
    Object.assign(view, { scale: s, tx: cw / 2 - (x + w / 2) * s, ty: ch / 2 - (y + h / 2) * s });
    fitted = false;
    changed();
  }
  function fit() {
    const map = hooks.map();
    if (!scan || !map) return;
    frameBox(0, 0, map.width, map.height);
    fitted = true;
  }
  function local(e) { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }
  const toScan = ([x, y]) => [Math.floor((x - view.tx) / view.scale), Math.floor((y - view.ty) / view.scale)];
  function visible() {  // the scan pixels on screen, [x0, y0, x1, y1)
    const map = hooks.map(), [x0, y0] = toScan([0, 0]), [x1, y1] = toScan([canvas.clientWidth, canvas.clientHeight]);
    return [Math.max(0, x0), Math.max(0, y0), Math.min(map.width, x1 + 1), Math.min(map.height, y1 + 1)];
  }
  function pinch() {
    const [a, b] = [...pointers.values()];
    return { kind: "pinch", mid: [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2], dist: Math.hypot(a[0] - b[0], a[1] - b[1]) };
  }

  canvas.addEventListener("pointerdown", (e) => {
    const map = hooks.map();
    if (!scan || !map) return;
    if (e.isPrimary) {  // a new first pointer: whatever an earlier one left behind is over
      if (gesture && gesture.kind === "paint") map.commit();
      pointers.clear();
      gesture = null;
    }
    canvas.focus({ preventScroll: true });
    pointers.set(e.pointerId, local(e));
    try { canvas.setPointerCapture(e.pointerId); } catch (_) { /* a pointer the browser no longer tracks */ }
    if (pointers.size === 2) {  // a second finger: pinch and pan; what the first one painted is taken back
      if (gesture && gesture.kind === "paint") map.cancel();
      gesture = pinch();
      return;
    }
    if (pointers.size > 2 || gesture) return;
    e.preventDefault();
    if (e.button === 1 || space || tool.name === "pan" || !hooks.canEdit()) {
      gesture = { kind: "pan", at: local(e) };
      canvas.classList.add("grabbing");
      return;
    }
    const penEraser = e.button === 5;
    if (e.button !== 0 && !penEraser) return;
    const at = toScan(local(e));
    if (tool.name === "fill" && !penEraser) { map.fill(at[0], at[1], tool.cls, visible()); return; }
    const erasing = penEraser || tool.name === "eraser";
    const paint = { value: erasing ? 0 : tool.cls, only: erasing && tool.eraseOnly ? tool.cls : -1 };
    gesture = { kind: "paint", paint, radius: tool.radius, last: at };
    map.stamp(at[0], at[1], tool.radius, paint);
  });
  canvas.addEventListener("pointermove", (e) => {
    const map = hooks.map();
    if (!scan || !map) return;
    if (pointers.has(e.pointerId)) pointers.set(e.pointerId, local(e));
    if (gesture && gesture.kind === "pinch") {
      if (pointers.size < 2) return;
      const next = pinch();
      view.tx += next.mid[0] - gesture.mid[0];
      view.ty += next.mid[1] - gesture.mid[1];
      if (gesture.dist > 0 && next.dist > 0) zoomAt(next.dist / gesture.dist, next.mid[0], next.mid[1]);
      gesture = next;
      fitted = false;
      changed();
    } else if (gesture && gesture.kind === "pan") {
      const [x, y] = local(e);
      view.tx += x - gesture.at[0];
      view.ty += y - gesture.at[1];
      gesture.at = [x, y];
      fitted = false;
      changed();
    } else if (gesture && gesture.kind === "paint") {
      const samples = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
      for (const sample of samples.length ? samples : [e]) {  // every sample the browser had, joined by lines
        const at = toScan(local(sample));
        if (at[0] === gesture.last[0] && at[1] === gesture.last[1]) continue;
        map.strokeTo(gesture.last, at, gesture.radius, gesture.paint);
        gesture.last = at;
      }
    }
    hover = toScan(local(e));
    redraw();
  });
  function end(e) {
    pointers.delete(e.pointerId);
    if (!gesture) return;
    if (gesture.kind === "paint") {
      if (e.type === "pointercancel") hooks.map()?.cancel(); else hooks.map()?.commit();
    } else if (gesture.kind === "pinch" && pointers.size) return;  // until the last finger lifts
    gesture = null;
    canvas.classList.remove("grabbing");
    redraw();
  }
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("pointerleave", () => { hover = null; redraw(); });
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("wheel", (e) => {
    if (!scan) return;
    e.preventDefault();
    const [x, y] = local(e);
    zoomAt(Math.exp(-e.deltaY * (e.deltaMode === 1 ? 33 : 1) * 0.0015), x, y);
  }, { passive: false });
  new ResizeObserver(resize).observe(canvas);

  return {
    view, frameBox, redraw, fit,
    set(scale, tx, ty) { Object.assign(view, { scale, tx, ty }); fitted = false; changed(); },
    zoom(factor) { if (scan) zoomAt(factor, canvas.clientWidth / 2, canvas.clientHeight / 2); },
    touched(box) { pending = ReviewLabel.grow(pending, ...box); redraw(); },
    setSpace(down) {
      space = down;
      canvas.classList.toggle("pan", down || tool.name === "pan" || !hooks.canEdit());
      redraw();
    },
    show(bitmap, width, height) {  // a newly opened scan, fitted; its label is recoloured on the first frame
      scan = document.createElement("canvas");
      Object.assign(scan, { width, height });
      scan.getContext("2d").drawImage(bitmap, 0, 0);
      overlay = document.createElement("canvas");
      Object.assign(overlay, { width, height });
      octx = overlay.getContext("2d");
      image = octx.createImageData(width, height);
      pixels = new Uint32Array(image.data.buffer);
      pending = [0, 0, width, height];
      gesture = null;
      pointers.clear();
      resize();
      fit();
    },
    clear() { scan = overlay = octx = image = pixels = pending = gesture = null; redraw(); },
    clientPoint(x, y) {  // where the centre of a scan pixel is, in client coordinates
      const r = canvas.getBoundingClientRect();
      return { x: r.left + view.tx + (x + 0.5) * view.scale, y: r.top + view.ty + (y + 0.5) * view.scale };
    },
  };
}
