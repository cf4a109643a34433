// The console's pages share this: who is logged in, the navigation bar, and a fetch wrapper that sends the
// CSRF token with every change and turns an error into a message naming it.
"use strict";

const Console = (() => {
  const CLASSES = ["background", "crack", "porosity", "lack_of_fusion", "inclusion"];
  const COLOURS = [null, [229, 57, 53], [30, 136, 229], [253, 216, 53], [142, 36, 170]];
  const PAGES = [["review", "Review"], ["try", "Try a scan"], ["datasets", "Datasets"], ["models", "Models"],
                 ["rigs", "Rigs"]];
  const ROLES = ["viewer", "inspector", "operator"];
  let me = null;

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    const method = (options.method || "GET").toUpperCase();
    if (me && me.csrf && method !== "GET") headers["X-CSRF-Token"] = me.csrf;
    let body = options.body;
    if (options.json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(options.json); }
    const response = await fetch(path, { method, headers, body, credentials: "same-origin" });
    if (response.status === 401 && !path.startsWith("/api/login")) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("not logged in");
    }
    if (!response.ok) {
      let detail = response.statusText;
      try { const j = await response.json(); detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail); }
      catch (e) { /* not JSON */ }
      const error = new Error(`${response.status}: ${detail}`);
      error.status = response.status;
      throw error;
    }
    const type = response.headers.get("content-type") || "";
    return type.includes("application/json") ? response.json() : response;
  }

  function may(role) { return me !== null && ROLES.indexOf(me.role) >= ROLES.indexOf(role); }

  // Elements marked data-role="inspector" (or operator) are hidden from accounts that may not use them.
  function applyRoles(root = document) {
    root.querySelectorAll("[data-role]").forEach((el) => el.classList.toggle("hidden", !may(el.dataset.role)));
  }

  async function start(page) {
    me = await api("/api/me");
    const bar = document.createElement("header");
    bar.className = "bar";
    bar.innerHTML = `<span class="brand">weldstream</span><nav></nav><span class="who"></span>`;
    for (const [name, title] of PAGES) {
      const a = document.createElement("a");
      a.href = "/" + name; a.textContent = title;
      if (name === page) a.className = "here";
      bar.querySelector("nav").appendChild(a);
    }
    bar.querySelector(".who").textContent = `${me.name} (${me.role}) `;
    const out = document.createElement("button");
    out.textContent = "Log out";
    out.onclick = async () => { await api("/api/logout", { method: "POST" }); location.href = "/login"; };
    bar.querySelector(".who").appendChild(out);
    document.body.prepend(bar);
    applyRoles();
    return me;
  }

  function notice(el, text, kind = "") {
    el.textContent = text;
    el.className = "notice " + kind;
    el.classList.toggle("hidden", !text);
  }

  function when(seconds) { return seconds ? new Date(seconds * 1000).toLocaleString() : ""; }

  return { api, start, may, applyRoles, notice, when, CLASSES, COLOURS, get me() { return me; } };
})();
