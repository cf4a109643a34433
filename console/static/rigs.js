// The rigs page: a row per rig with sparklines of doubt and drift on one time axis, drift events marked.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 280, HEIGHT = 52, PAD = 4, LABEL = 10;
  const HIGH_DOUBT = 0.5, HIGH_DRIFT = 3;
  let timer = null;

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  // Points [at, value] on the window [from, to]; a gap in the data (no scans) breaks the line.
  function spark(points, from, to, top, kind, events = [], reference = null) {
    const svg = el("svg", { class: "spark", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, "data-kind": kind });
    const x = (at) => PAD + ((at - from) / Math.max(to - from, 1)) * (WIDTH - 2 * PAD);
    const y = (v) => HEIGHT - PAD - (Math.min(v, top) / top) * (HEIGHT - 2 * PAD - LABEL);
    if (reference !== null) el("line", { x1: PAD, x2: WIDTH - PAD, y1: y(reference), y2: y(reference), class: "ref" }, svg);
    let run = [];
    const flush = () => {
      if (run.length === 1) el("circle", { cx: run[0][0], cy: run[0][1], r: 1.8, class: kind }, svg);
      if (run.length > 1) {
        el("polyline", { points: run.map((p) => p.join(",")).join(" "), fill: "none", class: kind,
                         "stroke-width": 1.6 }, svg);
      }
      run = [];
    };
    for (const [at, value] of points) {
      if (value === null || value === undefined) { flush(); continue; }
      run.push([x(at).toFixed(1), y(value).toFixed(1)]);
    }
    flush();
    for (const e of events) {
      const line = el("line", { x1: x(e.at), x2: x(e.at), y1: PAD + LABEL, y2: HEIGHT - PAD, class: "event" }, svg);
      el("title", {}, line).textContent = `${e.count} drift event(s) at ${Console.when(e.at)} (v${e.version})`;
    }
    el("text", { x: WIDTH - PAD, y: 11, "text-anchor": "end" }, svg).textContent = top.toFixed(top < 2 ? 1 : 0);
    if (!points.some(([, v]) => v !== null && v !== undefined)) {
      el("text", { x: WIDTH / 2, y: HEIGHT / 2 + 4, "text-anchor": "middle" }, svg).textContent = "no readings";
    }
    return svg;
  }

  function cell(tr, content, className = "") {
    const td = document.createElement("td");
    if (content instanceof Node) td.appendChild(content);
    else td.textContent = content === null || content === undefined ? "–" : String(content);
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function serverLine(server) {
    const box = $("server");
    if (server.up === null) {
      Console.notice(box, `reading the server's metrics at ${server.url} …`);
    } else if (server.up) {
      Console.notice(box, `server metrics at ${server.url}: up, serving version ${server.version ?? "–"}, ` +
                          `${Math.round(server.requests)} requests answered; read every ${server.interval_s} s ` +
                          `(last ${Console.when(server.checked_at)})`, "ok");
    } else {
      Console.notice(box, `the server's metrics at ${server.url} do not answer (${server.error}); ` +
                          `last tried ${Console.when(server.checked_at)}. The rows below are the last readings.`,
                     "error");
    }
  }

  async function refresh() {
    clearTimeout(timer);
    const hours = Number($("hours").value);
    let answer;
    try {
      answer = await Console.api("/api/rigs");
    } catch (error) {
      Console.notice($("server"), error.message, "error");
      timer = setTimeout(refresh, 15000);
      return;
    }
    serverLine(answer.server);
    // One time axis for every rig: the window, or less while the history is shorter than it.
    const to = Date.now() / 1000;
    const first = Math.min(to - 1, ...answer.rigs.map((r) => r.first_at));
    const from = Math.max(to - hours * 3600, first - 0.02 * (to - first));
    const series = await Promise.all(answer.rigs.map((r) =>
      Console.api(`/api/rigs/${encodeURIComponent(r.rig)}?hours=${hours}`).catch(() => ({ samples: [], events: [] }))));
    const tbody = $("rigs").querySelector("tbody");
    tbody.replaceChildren();
    answer.rigs.forEach((r, i) => {
      const { samples, events } = series[i];
      const tr = document.createElement("tr");
      tr.dataset.rig = r.rig;
      cell(tr, r.rig, "rig");
      cell(tr, r.scans.toLocaleString(), "num");
      cell(tr, r.doubt === null ? "–" : r.doubt.toFixed(3), "num" + (r.doubt >= HIGH_DOUBT ? " high" : ""));
      cell(tr, spark(samples.map((s) => [s.at, s.doubt]), from, to, 1, "doubt"));
      cell(tr, r.drift === null ? "–" : r.drift.toFixed(2), "num" + (r.drift >= HIGH_DRIFT ? " high" : ""));
      const top = Math.max(HIGH_DRIFT, ...samples.map((s) => s.drift || 0));
      cell(tr, spark(samples.map((s) => [s.at, s.drift]), from, to, top, "drift", events, 1));
      cell(tr, r.drift_events, "num" + (r.drift_events ? " high" : ""));
      cell(tr, r.version === null ? "–" : "v" + r.version);
      cell(tr, r.normalisation || "–", "normalisation");
      cell(tr, Console.when(r.last_at));
      tbody.appendChild(tr);
    });
    if (!answer.rigs.length) {
      const tr = document.createElement("tr");
      cell(tr, "no rig has been served yet", "muted").colSpan = 10;
      tbody.appendChild(tr);
    }
    timer = setTimeout(refresh, Math.max(5, answer.server.interval_s) * 1000);
  }

  $("hours").addEventListener("change", refresh);
  (async () => {
    await Console.start("rigs");
    await refresh();
  })();
})();
