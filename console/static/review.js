// The review station: an inspector takes the scans the model doubted most (claimed for a lease, so nobody else
// works on them), corrects the model's label pixel by pixel, and accepts, submits or rejects it; the label goes to
// the learner through Kafka. Viewers see the queue and the scans and change nothing. The label and its PNG are in
// review-label.js, the canvas in review-viewer.js.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const REFRESH_MS = 4000;
  const { COLOURS, CLASSES } = Console;
  const rgb = (c) => `rgb(${c.join(", ")})`;
  const path = (id, rest = "") => `/api/review/${encodeURIComponent(id)}${rest}`;
  function el(tag, props = {}, ...children) {  // an element with properties and children (text set as text)
    const element = Object.assign(document.createElement(tag), props);
    element.append(...children);
    return element;
  }

  const st = { item: null, map: null, leaseUntil: 0 };  // the open item, its label, the end of our claim
  const tool = { name: "brush", cls: 1, radius: 4, eraseOnly: false };
  const look = { label: true, opacity: 0.55, boxes: true, region: null };
  let canEdit = false;
  const viewer = ReviewViewer($("view"), {
    tool, look, map: () => st.map, regions: () => (st.item ? st.item.regions : []), canEdit: () => canEdit,
    zoomed: (scale) => { $("zoom-value").textContent = `${Math.round(scale * 100)}%`; },
  });

  // ---- The queue, the open item, the decision ----
  const station = (() => {
    let items = [], shown = "", loading = false, again = false, opening = false, sending = false, leaving = null;
    const QUEUE_DOWN = "The queue did not load";

    function options(select, values, all) {
      const keep = select.value;
      values = values.filter(Boolean);
      select.replaceChildren(new Option(all, ""), ...values.map((v) => new Option(v, v)));
      select.value = values.includes(keep) ? keep : "";
    }
    function entry(item) {
      const meta = [item.rig_id, item.domain || "no domain", `doubt ${item.doubt.toFixed(2)}`, `v${item.version}`,
                    ...item.reasons].join(" · ");
      const current = st.item && st.item.scan_id === item.scan_id, level = Math.round(Math.min(1, item.doubt) * 100);
      const button = el("button", { className: "queue-item" + (current ? " current" : "") },
        el("span", { className: "id", textContent: item.scan_id }),
        el("span", { className: "meta", textContent: meta }),
        el("div", { className: "doubt" }, el("div", { style: `width: ${level}%` })));
      button.dataset.scanId = item.scan_id;
      button.addEventListener("click", () => open(item.scan_id));
      return el("li", {}, button);
    }
    function render(answer) {
      options($("rig-filter"), answer.rigs, "all rigs");
      options($("domain-filter"), answer.domains, "all domains");
      $("domain-list").replaceChildren(...answer.domains.filter(Boolean).map((d) => new Option(d)));
      $("counts").textContent = ["queued", "claimed", "labeled", "rejected"]
        .map((state) => `${answer.counts[state] || 0} ${state}`).join(" · ");
      $("queue-list").replaceChildren(...items.map(entry));
      const empty = el("li", { className: "queue-empty", textContent: "Nothing waiting for review." });
      if (!items.length) $("queue-list").append(empty);
    }
    async function refresh() {
      if (loading) { again = true; return; }
      loading = true;
      try {
        const query = new URLSearchParams(
          { limit: "200", rig: $("rig-filter").value, domain: $("domain-filter").value });
        const answer = await Console.api(`/api/review?${query}`), seen = JSON.stringify(answer);
        if (seen !== shown) { items = answer.items; render(answer); shown = seen; }  // a list under the pointer stays
        if ($("queue-message").textContent.startsWith(QUEUE_DOWN)) Console.notice($("queue-message"), "");
      } catch (error) {
        Console.notice($("queue-message"), `${QUEUE_DOWN}: ${error.message}`, "error");
      } finally {
        loading = false;
      }
      if (again) { again = false; await refresh(); }
    }

    async function claim(scanId) {  // the lease's end, or 0 when another inspector holds the scan (409)
      try {
        return (await Console.api(path(scanId, "/claim"), { method: "POST" })).lease_until;
      } catch (error) {
        if (error.status !== 409) throw error;
        Console.notice($("queue-message"), error.message, "error");
        await refresh();
        return 0;
      }
    }
    async function open(scanId) {  // claim it (inspectors), then fetch the item, its scan and its pre-label
      if (opening || sending) return false;
      const map = st.map;
      if (map && (map.changed || map.undos.length) && st.item.scan_id !== scanId && leaving !== scanId) {
        leaving = scanId;
        Console.notice($("queue-message"),
                       `${st.item.scan_id} has changes not sent; open ${scanId} again to leave them.`);
        return false;
      }
      leaving = null;
      opening = true;
      Console.notice($("queue-message"), "");
      Console.notice($("viewer-message"), "");
      try {
        const lease = canEdit ? await claim(scanId) : 0;
        if (canEdit && !lease) return false;
        const [detail, scanPng, prePng] = await Promise.all(
          [path(scanId), path(scanId, "/scan.png"), path(scanId, "/prelabel.png")].map((url) => Console.api(url)));
        const bitmap = await createImageBitmap(await scanPng.blob());
        const pre = await ReviewLabel.decodePng(await prePng.arrayBuffer());
        const { width, height } = detail;
        if (pre.width !== width || pre.height !== height || bitmap.width !== width || bitmap.height !== height) {
          throw new Error(`the scan is ${width}x${height} px but its pictures are not`);
        }
        st.item = detail;
        st.leaseUntil = lease;
        st.map = new ReviewLabel.LabelMap(pre.data, width, height, { touched: viewer.touched, committed: edited });
        look.region = null;
        show();
        viewer.show(bitmap, width, height);
        bitmap.close();
        history.replaceState(null, "", `?scan=${encodeURIComponent(scanId)}`);
        return true;
      } catch (error) {
        Console.notice($("viewer-message"), `Could not open ${scanId}: ${error.message}`, "error");
        return false;
      } finally {
        opening = false;
      }
    }
    function regionRow(region) {
      const colour = rgb(COLOURS[region.class_id] || [128, 128, 128]);
      const swatch = el("span", { className: "swatch", style: `background: ${colour}` });
      const cells = [region.class_name, region.doubt.toFixed(3), `${region.area_px} px`, region.bbox.join(", ")];
      const tr = el("tr", {}, ...cells.map((text) => el("td", { textContent: text })));
      tr.firstChild.prepend(swatch);
      tr.addEventListener("click", () => {  // centre the region with its surroundings
        look.region = region;
        document.querySelectorAll("#regions tr").forEach((r) => r.classList.toggle("selected", r === tr));
        const [x, y, w, h] = region.bbox;
        viewer.frameBox(x - w, y - h, 3 * w, 3 * h, 16);
      });
      return tr;
    }
    function show() {
      const item = st.item;
      $("stage-empty").classList.toggle("hidden", !!item);
      $("item-title").textContent = item ? item.scan_id : "No scan open";
      $("item-meta").textContent = item ? [item.rig_id, item.domain || "no domain", `model v${item.version}`,
        `doubt ${item.doubt.toFixed(3)}`, `drift ${item.drift.toFixed(3)}`, `${item.width}×${item.height} px`]
        .join(" · ")
        : "";
      $("renew").classList.toggle("hidden", !item || !canEdit);
      document.querySelectorAll(".queue-item").forEach(
        (b) => b.classList.toggle("current", !!item && b.dataset.scanId === item.scan_id));
      $("regions").replaceChildren(...(item ? item.regions : []).map(regionRow));
      $("no-regions").classList.toggle("hidden", !item || item.regions.length > 0);
      edited();
      lease();
    }
    function edited() {
      const map = st.map;
      $("changed").textContent = map ? `${map.changed.toLocaleString()} px changed from the pre-label.`
        : "No scan open.";
      for (const id of ["accept", "submit", "reject", "renew"]) $(id).disabled = !map || sending;
      $("undo").disabled = !map || !map.undos.length;
      $("redo").disabled = !map || !map.redos.length;
    }
    function lease() {
      const el = $("lease");
      if (!st.item || !st.leaseUntil) { el.textContent = ""; return; }
      const left = Math.round(st.leaseUntil - Date.now() / 1000);
      const clock = new Date(st.leaseUntil * 1000).toLocaleTimeString();
      const remaining = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
      el.textContent = left > 0 ? `yours until ${clock} (${remaining} left)`
        : `your claim ended at ${clock}; extend it before deciding`;
      el.className = "lease " + (left <= 0 ? "error" : left < 120 ? "warn" : "ok");
    }
    async function renew() {
      if (!st.item) return;
      const until = await claim(st.item.scan_id).catch((error) => {
        Console.notice($("action-message"), error.message, "error");
        return 0;
      });
      if (until) { st.leaseUntil = until; lease(); }
    }
    function close() {
      Object.assign(st, { item: null, map: null, leaseUntil: 0 });
      viewer.clear();
      history.replaceState(null, "", location.pathname);
      show();
    }
    async function decide(what, request) {  // send a decision; once it is taken, on to the next item
      if (!st.item || sending || !canEdit) return false;
      const scanId = st.item.scan_id;
      sending = true;
      edited();
      Console.notice($("action-message"), `${scanId}: sending…`);
      try {
        const answer = await request(scanId);
        Console.notice($("action-message"), `${scanId} ${what}` + (answer.domain === undefined ? "" :
          ` as domain ${answer.domain}: ${answer.pixels_changed} px changed from the pre-label ` +
          `(partition ${answer.partition}, offset ${answer.offset})`), "ok");
        sending = false;
        close();
        await refresh();
        const next = items.find((i) => i.scan_id !== scanId);
        if (next) await open(next.scan_id);
        return true;
      } catch (error) {
        Console.notice($("action-message"), `${scanId} was not ${what}: ${error.message}`, "error");
        return false;
      } finally {
        sending = false;
        edited();
      }
    }
    function label(what, classes) {
      if (!st.map || sending) return Promise.resolve(false);
      const { width, height } = st.map, domain = $("domain").value.trim();
      const query = domain ? `?domain=${encodeURIComponent(domain)}` : "";
      return decide(what, async (scanId) => Console.api(path(scanId, `/label${query}`), {
        method: "POST", headers: { "Content-Type": "image/png" },
        body: await ReviewLabel.encodePng(classes, width, height),
      }));
    }
    const accept = () => label("accepted", st.map && st.map.prelabel);
    const submit = () => label("labeled", st.map && st.map.labels);
    async function reject() {
      const text = $("reject-text").value.trim(), reason = $("reject-reason").value + (text ? `: ${text}` : "");
      const send = (scanId) => Console.api(path(scanId, "/reject"), { method: "POST", json: { reason } });
      if (await decide("rejected", send)) $("reject-text").value = "";
    }
    function next() {
      const candidate = items.find((i) => !st.item || i.scan_id !== st.item.scan_id);
      if (candidate) return open(candidate.scan_id);
      Console.notice($("queue-message"), "Nothing else is waiting for review.");
      return Promise.resolve(false);
    }
    return { refresh, open, next, show, lease, renew, accept, submit, reject };
  })();

  // ---- Controls and keys ----
  function setTool(name) {
    tool.name = name;
    document.querySelectorAll("[data-tool]").forEach((b) => b.classList.toggle("active", b.dataset.tool === name));
    viewer.setSpace(false);
  }
  function setClass(cls) {
    tool.cls = cls;
    document.querySelectorAll("[data-class]").forEach(
      (b) => b.classList.toggle("active", Number(b.dataset.class) === cls));
  }
  function setRadius(r) {
    tool.radius = Math.max(0, Math.min(64, Math.round(r)));
    $("size").value = String(tool.radius);
    $("size-value").textContent = String(tool.radius);
    viewer.redraw();
  }
  const resize = (sign) => setRadius(tool.radius + sign * Math.max(1, Math.round(tool.radius / 8)));
  function showLabel(on) { look.label = on; $("show-label").checked = on; viewer.redraw(); }
  const undo = () => st.map?.undo(), redo = () => st.map?.redo();

  function wire() {
    for (let k = 1; k < CLASSES.length; k++) {
      const swatch = el("span", { className: "swatch", style: `background: ${rgb(COLOURS[k])}` }), name = CLASSES[k];
      const b = el("button", { id: "class-" + k, title: `${name} (${k})` }, swatch, name.replaceAll("_", " "));
      b.dataset.class = String(k);
      b.addEventListener("click", () => setClass(k));
      $("class-picker").appendChild(b);
    }
    document.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
    const on = (id, event, handler) => $(id).addEventListener(event, handler);
    on("size", "input", () => setRadius(Number($("size").value)));
    on("erase-only", "change", () => { tool.eraseOnly = $("erase-only").checked; });
    on("undo", "click", undo);
    on("redo", "click", redo);
    on("zoom-in", "click", () => viewer.zoom(1.25));
    on("zoom-out", "click", () => viewer.zoom(0.8));
    on("fit", "click", viewer.fit);
    on("show-label", "change", () => showLabel($("show-label").checked));
    on("opacity", "input", () => { look.opacity = Number($("opacity").value) / 100; viewer.redraw(); });
    on("show-boxes", "change", () => { look.boxes = $("show-boxes").checked; viewer.redraw(); });
    on("rig-filter", "change", station.refresh);
    on("domain-filter", "change", station.refresh);
    on("open-next", "click", station.next);
    on("renew", "click", station.renew);
    on("accept", "click", station.accept);
    on("submit", "click", station.submit);
    on("reject", "click", station.reject);

    const editKeys = {
      b: () => setTool("brush"), e: () => setTool("eraser"), f: () => setTool("fill"), "[": () => resize(-1),
      "]": () => resize(1), 1: () => setClass(1), 2: () => setClass(2), 3: () => setClass(3), 4: () => setClass(4),
      a: station.accept, enter: station.submit, r: station.reject,
    };
    const viewKeys = { p: () => setTool("pan"), h: () => showLabel(!look.label), 0: viewer.fit,
                       "+": () => viewer.zoom(1.25), "=": () => viewer.zoom(1.25), "-": () => viewer.zoom(0.8) };
    document.addEventListener("keydown", (e) => {
      const t = e.target, key = e.key.toLowerCase();
      if (t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement) return;
      if (t instanceof HTMLInputElement && !["range", "checkbox"].includes(t.type)) return;
      if (t instanceof HTMLButtonElement && (key === "enter" || key === " ")) return;  // the button's own action
      if (key === " ") {
        if (st.item) { e.preventDefault(); viewer.setSpace(true); }
        return;
      }
      if ((e.ctrlKey || e.metaKey) && canEdit && (key === "z" || key === "y")) {
        e.preventDefault();
        if (key === "y" || e.shiftKey) redo(); else undo();
        return;
      }
      if (e.ctrlKey || e.metaKey || e.altKey || (e.repeat && ["enter", "a", "r"].includes(key))) return;
      const act = viewKeys[key] || (canEdit ? editKeys[key] : undefined);
      if (act) { e.preventDefault(); act(); }
    });
    document.addEventListener("keyup", (e) => { if (e.key === " ") viewer.setSpace(false); });
    window.addEventListener("blur", () => viewer.setSpace(false));
  }

  async function start() {
    await Console.start("review");
    canEdit = Console.may("inspector");
    wire();
    setTool(canEdit ? "brush" : "pan");
    setClass(1);
    setRadius(4);
    station.show();
    await station.refresh();
    setInterval(station.refresh, REFRESH_MS);
    setInterval(station.lease, 1000);
    const wanted = new URLSearchParams(location.search).get("scan");
    if (wanted) await station.open(wanted);
  }

  // A handle for scripts that drive the page (kiosk set-ups, browser tests): the view, and where a scan pixel is.
  window.reviewStation = {
    open: (scanId) => station.open(scanId),
    refresh: () => station.refresh(),
    clientPoint: (x, y) => viewer.clientPoint(x, y),
    setView: (scale, tx, ty) => viewer.set(scale, tx, ty),
    state: () => ({
      scanId: st.item ? st.item.scan_id : null, ...viewer.view, tool: tool.name, cls: tool.cls, radius: tool.radius,
      changed: st.map ? st.map.changed : 0, undo: st.map ? st.map.undos.length : 0,
      redo: st.map ? st.map.redos.length : 0,
      leaseUntil: st.leaseUntil, label: look.label,
    }),
    labels: () => (st.map ? Array.from(st.map.labels) : null),
    ready: start().catch(
      (error) => Console.notice($("viewer-message"), `The station did not start: ${error.message}`, "error")),
  };
})();
