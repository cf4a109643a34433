// Datasets: a zip of labeled scans uploaded with a progress bar (XMLHttpRequest, which reports upload
// progress), then its job followed: checking, streaming to the learner, the pairs skipped and why.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const RUNNING = ["checking", "streaming"];
  let limits = null;
  let selected = null;
  let timer = null;

  function stateTag(state) {
    const tag = document.createElement("span");
    tag.className = `state ${state}`;
    tag.textContent = state;
    return tag;
  }

  function bar(done, total) {
    const outer = document.createElement("div");
    outer.className = "progress";
    const inner = document.createElement("div");
    inner.style.width = `${total ? Math.round((100 * done) / total) : 0}%`;
    outer.appendChild(inner);
    return outer;
  }

  function progressText(job) {
    if (job.state === "checking") return `checking ${job.done} of ${job.total} pairs`;
    return `${job.done} of ${job.total} sent`;
  }

  async function cancel(job) {
    try {
      await Console.api(`/api/jobs/${job.id}/cancel`, { method: "POST" });
      Console.notice($("message"), `Job ${job.id} cancelled; what was sent stays sent.`, "ok");
    } catch (error) {
      Console.notice($("message"), error.message, "error");
    }
    refresh();
  }

  function showJobs(jobs) {
    const body = $("jobs").querySelector("tbody");
    body.replaceChildren();
    if (!jobs.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = 8; td.className = "muted"; td.textContent = "no dataset uploaded yet";
    }
    for (const job of jobs) {
      const tr = body.insertRow();
      tr.dataset.job = job.id;
      tr.classList.toggle("selected", job.id === selected);
      tr.insertCell().textContent = Console.when(job.started_at);
      tr.insertCell().textContent = job.file || job.id;
      tr.insertCell().textContent = job.actor;
      tr.insertCell().appendChild(stateTag(job.state));
      const progress = tr.insertCell();
      progress.appendChild(bar(job.done, job.total));
      const words = document.createElement("span");
      words.className = "muted"; words.style.fontSize = ".85em"; words.textContent = progressText(job);
      progress.appendChild(words);
      tr.insertCell().textContent = job.sent ?? 0;
      tr.insertCell().textContent = job.skipped_count ?? 0;
      const actions = tr.insertCell();
      if (RUNNING.includes(job.state)) {
        const button = document.createElement("button");
        button.className = "danger"; button.textContent = "Cancel";
        button.onclick = (e) => { e.stopPropagation(); cancel(job); };
        actions.appendChild(button);
      }
      tr.onclick = () => { selected = job.id; refresh(); };
    }
  }

  function showJob(job) {
    $("job-id").textContent = job.id;
    const tag = $("job-state");
    tag.className = `state ${job.state}`; tag.textContent = job.state;
    $("job-empty").classList.add("hidden");
    $("job").classList.remove("hidden");
    const o = job.options || {};
    $("job-summary").textContent = `${job.file || ""}: ${job.files ?? "?"} files, ${job.pairs ?? "?"} pairs found, ` +
      `${job.sent ?? 0} sent to ${job.topic || "the labeled topic"} at ${o.rate ? `${o.rate} scans/s` : "full speed"}` +
      `${o.domain ? `, default domain ${o.domain}` : ""}, rig ${o.rig_id || "import"}; by ${job.actor}.`;
    const reason = $("job-reason");
    reason.textContent = job.reason ? `Failed: ${job.reason}` : "";
    reason.classList.toggle("hidden", !job.reason);
    const skipped = job.skipped || [];
    $("skipped-count").textContent = skipped.length;
    const body = $("skipped").querySelector("tbody");
    body.replaceChildren();
    for (const [path, why] of skipped) {
      const tr = body.insertRow();
      tr.insertCell().textContent = path;
      tr.insertCell().textContent = why;
    }
    if (!skipped.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = 2; td.className = "muted"; td.textContent = "none";
    }
  }

  async function refresh() {
    clearTimeout(timer);
    let running = false;
    try {
      const { jobs } = await Console.api("/api/jobs?kind=dataset&limit=50");
      running = jobs.some((j) => RUNNING.includes(j.state));
      showJobs(jobs);
      if (selected) showJob(await Console.api(`/api/jobs/${selected}`));
    } catch (error) {
      Console.notice($("message"), error.message, "error");
    }
    timer = setTimeout(refresh, running ? 1000 : 5000);
  }

  function sending(text, fraction) {
    $("sending").classList.toggle("hidden", text === null);
    $("sending-text").textContent = text || "";
    $("sending-bar").style.width = `${Math.round(100 * (fraction || 0))}%`;
  }

  function upload(event) {
    event.preventDefault();
    const file = $("file").files[0];
    const message = $("message");
    if (!file) return;
    if (limits && file.size > limits.upload_mb * 1048576) {
      Console.notice(message, `${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; this console takes zips ` +
                              `of at most ${limits.upload_mb} MiB.`, "error");
      return;
    }
    const form = new FormData();
    form.append("rate", $("rate").value || "10");
    form.append("domain", $("domain").value);
    form.append("rig_id", $("rig").value);
    form.append("binary_class", $("binary").value);
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/datasets");
    xhr.setRequestHeader("X-CSRF-Token", Console.me.csrf);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) sending(`Sending ${file.name}: ${Math.round((100 * e.loaded) / e.total)}%`, e.loaded / e.total);
    };
    xhr.upload.onload = () => sending(`Unpacking and checking ${file.name}…`, 1);
    xhr.onload = () => {
      sending(null);
      $("upload").disabled = false;
      const body = xhr.response || {};
      if (xhr.status === 200) {
        selected = body.job;
        Console.notice(message, `${file.name} accepted as job ${body.job}; its pairs are being checked.`, "ok");
        $("upload-form").reset();
      } else {
        const detail = typeof body.detail === "string" ? body.detail : xhr.statusText;
        Console.notice(message, `${xhr.status}: ${detail}`, "error");
      }
      refresh();
    };
    xhr.onerror = () => {
      sending(null);
      $("upload").disabled = false;
      Console.notice(message, `the upload of ${file.name} did not reach the console (network error)`, "error");
    };
    $("upload").disabled = true;
    Console.notice(message, "");
    sending(`Sending ${file.name}: 0%`, 0);
    xhr.send(form);
  }

  async function main() {
    await Console.start("datasets");
    if (!Console.may("operator")) {
      $("not-allowed").classList.remove("hidden");
      return;
    }
    limits = await Console.api("/api/datasets/limits");
    const binary = $("binary");
    limits.classes.forEach((name, id) => {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = id ? name.replaceAll("_", " ") : "nothing: skip binary masks";
      binary.appendChild(option);
    });
    $("limits").textContent = `A zip of at most ${limits.upload_mb} MiB, ${limits.max_files} files and ` +
      `${limits.unpacked_mb} MiB unpacked; each scan at most ${limits.max_side} px a side.`;
    $("upload-form").addEventListener("submit", upload);
    refresh();
  }

  main().catch((error) => Console.notice($("message"), error.message, "error"));
})();
