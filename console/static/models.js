// The models page: every version's scores as lines, one version's lineage and rounds, replicas, refused
// rounds, operator actions; pin, unpin and roll back behind a confirmation; consolidation jobs.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f6feb", "#e53935", "#2e7d32", "#8e24aa", "#f57c00", "#00838f", "#6d4c41", "#c2185b"];
  const REFRESH_MS = 5000;
  let data = null;
  let selected = null;
  let jobTimer = null;

  function cell(row, text, className = "") {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function fill(tbody, rows, build) {
    tbody.replaceChildren();
    for (const item of rows) { const tr = document.createElement("tr"); build(tr, item); tbody.appendChild(tr); }
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(tr, "none", "muted");
      td.colSpan = tbody.parentElement.querySelector("thead tr")?.children.length || 1;
      tbody.appendChild(tr);
    }
  }

  function domains() { return [...new Set(data.versions.flatMap((v) => Object.keys(v.scores)))].sort(); }
  const colour = (i) => PALETTE[i % PALETTE.length];
  const score = (v, d) => (v.scores[d] ? v.scores[d].miou : null);

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  // One line per domain over the versions in order; a column per version to pick it.
  function drawChart() {
    const svg = $("chart");
    svg.replaceChildren();
    const width = svg.clientWidth || 900, height = svg.clientHeight || 300;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const left = 44, right = 12, top = 10, bottom = 28;
    const versions = data.versions, names = domains();
    const values = versions.flatMap((v) => names.map((d) => score(v, d))).filter((s) => s !== null);
    const low = values.length ? Math.max(0, Math.floor((Math.min(...values) - 0.05) * 10) / 10) : 0;
    const high = values.length ? Math.min(1, Math.ceil((Math.max(...values) + 0.05) * 10) / 10) : 1;
    const step = versions.length > 1 ? (width - left - right) / (versions.length - 1) : 0;
    const x = (i) => (versions.length > 1 ? left + i * step : (left + width - right) / 2);
    const y = (s) => top + (1 - (s - low) / Math.max(high - low, 1e-6)) * (height - top - bottom);
    for (let t = 0; t <= 4; t++) {
      const s = low + ((high - low) * t) / 4;
      el("line", { x1: left, x2: width - right, y1: y(s), y2: y(s), class: "axis" }, svg);
      el("text", { x: left - 6, y: y(s) + 4, "text-anchor": "end" }, svg).textContent = s.toFixed(2);
    }
    const every = Math.max(1, Math.ceil(versions.length / Math.max(1, (width - left) / 48)));
    versions.forEach((v, i) => {
      const half = Math.max(step / 2, 6);
      const column = el("rect", { x: x(i) - half, y: top, width: 2 * half, height: height - top - bottom,
                                  class: "column" + (v.version === selected ? " selected" : "") }, svg);
      column.dataset.version = v.version;
      el("title", {}, column).textContent = `version ${v.version} (${v.strategy || "-"})`;
      column.addEventListener("click", () => select(v.version));
      if (v.served) el("line", { x1: x(i), x2: x(i), y1: top, y2: height - bottom, class: "served" }, svg);
      if (i % every === 0 || i === versions.length - 1) {
        el("text", { x: x(i), y: height - 8, "text-anchor": "middle" }, svg).textContent = "v" + v.version;
      }
    });
    names.forEach((d, k) => {
      const points = versions.map((v, i) => [i, score(v, d)]).filter(([, s]) => s !== null);
      if (points.length > 1) {
        el("polyline", { points: points.map(([i, s]) => `${x(i)},${y(s)}`).join(" "), fill: "none",
                         stroke: colour(k), "stroke-width": 2 }, svg);
      }
      for (const [i, s] of points) {
        const dot = el("circle", { cx: x(i), cy: y(s), r: 3.5, fill: colour(k), "pointer-events": "none" }, svg);
        el("title", {}, dot).textContent = `${d}: ${s.toFixed(4)}`;
      }
    });
    const legend = $("legend");
    legend.replaceChildren();
    names.forEach((d, k) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = colour(k);
      item.append(swatch, d);
      legend.appendChild(item);
    });
  }

  function drawVersions() {
    const names = domains();
    const head = document.createElement("tr");
    for (const title of ["Version", "Parent", "Created", "Strategy", ...names, ""]) {
      const th = document.createElement("th"); th.textContent = title; head.appendChild(th);
    }
    $("versions").querySelector("thead").replaceChildren(head);
    const rows = [...data.versions].reverse();
    fill($("versions").querySelector("tbody"), rows, (tr, v) => {
      tr.dataset.version = v.version;
      tr.classList.toggle("selected", v.version === selected);
      const first = cell(tr, "v" + v.version);
      if (v.served) first.append(" ", tag(v.pinned ? "pinned" : "served", v.pinned));
      cell(tr, v.parent);
      cell(tr, Console.when(v.created_at));
      cell(tr, v.strategy || "–");
      for (const d of names) cell(tr, score(v, d) === null ? "–" : score(v, d).toFixed(4), "num");
      const actions = cell(tr, "");
      if (Console.may("operator") && !(v.served && v.pinned)) {
        const button = document.createElement("button");
        button.textContent = "Pin";
        button.dataset.pin = v.version;
        button.dataset.role = "operator";
        button.addEventListener("click", (event) => { event.stopPropagation(); pin(v.version); });
        actions.appendChild(button);
      }
      tr.addEventListener("click", () => select(v.version));
    });
  }

  function tag(text, pinned) {
    const span = document.createElement("span");
    span.className = "tag" + (pinned ? " pin" : "");
    span.textContent = text;
    return span;
  }

  function drawSide() {
    $("served").textContent = data.served === null ? "nothing yet" : "version " + data.served;
    $("pin-state").replaceChildren(data.pinned !== null ? tag("pinned", true) : tag("follows the newest", false));
    $("store").textContent = `store ${data.store}; newest version ${data.latest ?? "–"}`;
    $("unpin").disabled = data.pinned === null;
    const servedRow = data.versions.find((v) => v.version === data.served);
    $("rollback").disabled = !servedRow || servedRow.parent === 0;
    fill($("replicas").querySelector("tbody"), data.replicas, (tr, r) => {
      cell(tr, r.server); cell(tr, "v" + r.version); cell(tr, Console.when(r.since));
    });
    fill($("refused").querySelector("tbody"), data.refused, (tr, r) => {
      cell(tr, Console.when(r.started_at)); cell(tr, r.trainer); cell(tr, r.strategy); cell(tr, r.scans);
      cell(tr, "v" + r.compared_with); cell(tr, r.reason);
    });
    fill($("actions").querySelector("tbody"), data.actions, (tr, a) => {
      cell(tr, Console.when(a.at)); cell(tr, a.action); cell(tr, a.version); cell(tr, a.previous);
      cell(tr, a.actor); cell(tr, a.reason);
    });
  }

  async function select(version) {
    selected = version;
    drawChart();
    drawVersions();
    const v = await Console.api(`/api/models/${version}`);
    $("detail-version").textContent = "v" + v.version;
    const box = $("detail");
    box.className = "";
    box.replaceChildren();
    const line = (label, text) => {
      const p = document.createElement("p"); p.style.margin = ".3rem 0";
      const b = document.createElement("b"); b.textContent = label + " ";
      p.append(b, text); box.appendChild(p); return p;
    };
    line("Strategy", v.strategy || "–");
    line("Created", Console.when(v.created_at));
    line("Lineage", v.lineage.map((n) => "v" + n).join(" ← ")).classList.add("lineage");
    line("SHA-256", v.sha256.slice(0, 16) + "…").title = v.sha256;
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>Domain</th><th>mIoU</th><th>Dice</th><th>Scans</th></tr></thead><tbody></tbody>";
    fill(table.querySelector("tbody"), Object.entries(v.scores).sort(), (tr, [d, s]) => {
      cell(tr, d); cell(tr, s.miou.toFixed(4), "num"); cell(tr, s.dice.toFixed(4), "num"); cell(tr, s.samples, "num");
    });
    box.appendChild(table);
    for (const r of v.rounds) {
      line("Round", `${r.trainer} ${r.strategy}: ${r.outcome}, ${r.scans} scans, ${r.steps} steps in ` +
                    `${r.duration_s.toFixed(1)} s, against v${r.compared_with}${r.reason ? " — " + r.reason : ""}`);
    }
    for (const s of v.serving) {
      line("Served by", `${s.server} from ${Console.when(s.since)} to ${s.until ? Console.when(s.until) : "now"}`);
    }
  }

  // Every change goes through this dialog and asks why; the answer is kept in the registry.
  function confirmed(title, text) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-reason").value = "";
    dialog.returnValue = "";
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? $("confirm-reason").value : null),
                              { once: true });
    });
  }

  async function change(path, json, done) {
    try {
      const answer = await Console.api(path, { method: "POST", json });
      Console.notice($("message"), done(answer) + (answer.warning ? ` (${answer.warning})` : ""), "ok");
    } catch (error) {
      Console.notice($("message"), error.message, "error");
    }
    await refresh();
  }

  async function pin(version) {
    const reason = await confirmed(`Pin version ${version}?`, `Every server serves version ${version} until ` +
                                   "unpinned; the learner keeps learning and publishing meanwhile.");
    if (reason !== null) {
      await change("/api/models/pin", { version, reason }, (a) => `pinned version ${a.served_now}`);
    }
  }

  $("unpin").addEventListener("click", async () => {
    const reason = await confirmed("Unpin?", "Servers follow the newest version again.");
    if (reason !== null) await change("/api/models/unpin", { reason }, (a) => `unpinned: serving v${a.served_now}`);
  });

  $("rollback").addEventListener("click", async () => {
    const parent = data.versions.find((v) => v.version === data.served)?.parent;
    const reason = await confirmed("Roll back?", `Pin version ${parent}, the parent of the served version ` +
                                   `${data.served}, on every server.`);
    if (reason !== null) await change("/api/models/rollback", { reason }, (a) => `rolled back to v${a.served_now}`);
  });

  // -- consolidation jobs
  function showJob(job) {
    $("job").classList.remove("hidden");
    $("job-state").textContent = job.state;
    $("job-progress").textContent = `${job.detail.strategy} · ${job.detail.progress || ""}`;
    $("job-bar").style.width = job.total ? `${(100 * job.done) / job.total}%` : "0";
    $("job-log").textContent = (job.detail.log || []).join("\n");
    $("job-log").scrollTop = $("job-log").scrollHeight;
    $("cancel").classList.toggle("hidden", job.state !== "running");
    $("cancel").dataset.job = job.id;
    $("start").disabled = job.state === "running";
    clearTimeout(jobTimer);
    if (job.state === "running") jobTimer = setTimeout(() => follow(job.id), 1000);
  }

  async function follow(id) {
    try { showJob(await Console.api(`/api/consolidations/${id}`)); }
    catch (error) { Console.notice($("message"), error.message, "error"); }
  }

  $("consolidate-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const json = { strategy: $("strategy").value, epochs: Number($("epochs").value) || null,
                   data: $("data").value.trim(), from_scratch: $("from-scratch").checked,
                   domains: $("domains").value.split(",").map((d) => d.trim()).filter(Boolean) };
    try {
      const { job } = await Console.api("/api/consolidations", { method: "POST", json });
      Console.notice($("message"), `consolidation job ${job} started`, "ok");
      await follow(job);
    } catch (error) {
      Console.notice($("message"), error.message, "error");
    }
  });

  $("cancel").addEventListener("click", async () => {
    const id = $("cancel").dataset.job;
    $("cancel").disabled = true;
    try { showJob(await Console.api(`/api/consolidations/${id}/cancel`, { method: "POST", json: {} })); }
    catch (error) { Console.notice($("message"), error.message, "error"); }
    $("cancel").disabled = false;
  });

  async function refresh() {
    try {
      data = await Console.api("/api/models");
    } catch (error) {
      Console.notice($("message"), error.message, "error");
      return;
    }
    if (selected === null || !data.versions.some((v) => v.version === selected)) selected = data.served;
    drawChart();
    drawVersions();
    drawSide();
    if (selected !== null) await select(selected);
  }

  (async () => {
    await Console.start("models");
    await refresh();
    const jobs = (await Console.api("/api/consolidations")).jobs;
    if (jobs.length) showJob(jobs[0]);
    setInterval(() => { if (!$("confirm").open) refresh(); }, REFRESH_MS);
    window.addEventListener("resize", () => data && drawChart());
  })();
})();
