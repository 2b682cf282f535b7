// Vesper Studio's own small script: JSON calls with the CSRF header, polling, plotly charts.
"use strict";

function csrfToken() { return document.querySelector('meta[name="csrf-token"]').content; }

async function api(url, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json", "X-Vesper-CSRF": csrfToken()},
    body: JSON.stringify(body)};
  const response = await fetch(url, options);
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = {error: text}; }
  if (!response.ok) throw new Error((data && data.error) || text || response.statusText);
  return data;
}

function say(text, ok) {
  const el = document.getElementById("message");
  el.textContent = text; el.className = ok ? "message ok" : "message";
}

function formData(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    out[el.name] = el.type === "checkbox" ? el.checked : el.value;
  }
  return out;
}

function esc(s) { const d = document.createElement("div"); d.textContent = String(s); return d.innerHTML; }

const LAYOUT = (title, ytype) => ({title: {text: title, font: {size: 13}}, margin: {l: 50, r: 10, t: 30, b: 35},
  xaxis: {title: {text: "step"}}, yaxis: {type: ytype || "linear"}, legend: {orientation: "h"}});

// ---- one run: charts that follow events.jsonl ---------------------------------------------------------------
function initRun() {
  const root = document.getElementById("run");
  const path = root.dataset.run;
  const series = {loss: [], ppl: [], lr: [], entropy_scale: [], ppl_scale: [], beta1: [], grad_norm: [], val_loss: [], val_ppl: []};
  let offset = 0, jobId = null;
  const charts = [
    ["chart-loss", "training loss", [["loss", "loss"]]],
    ["chart-ppl", "perplexity", [["ppl", "train ppl"], ["val_ppl", "val ppl"]], "log"],
    ["chart-lr", "learning rate", [["lr", "lr"]], "log"],
    ["chart-scales", "Velvet's scales", [["entropy_scale", "entropy scale"], ["ppl_scale", "perplexity scale"], ["beta1", "beta1"]]],
    ["chart-gnorm", "gradient norm", [["grad_norm", "grad norm"]]],
    ["chart-val", "validation loss", [["val_loss", "val loss"]]],
  ];
  function draw() {
    for (const [id, title, keys, ytype] of charts) {
      const traces = keys.filter(([k]) => series[k].length).map(([k, name]) => ({
        x: series[k].map(p => p[0]), y: series[k].map(p => p[1]), name: name, mode: "lines+markers", marker: {size: 3}}));
      Plotly.react(id, traces, LAYOUT(title, ytype), {displaylogo: false, responsive: true});
    }
    document.getElementById("chart-loss").dataset.points = series.loss.length;
  }
  async function poll() {
    try {
      const data = await api(`/api/events?path=${encodeURIComponent(path)}&offset=${offset}`);
      if (data.offset < offset) { for (const k in series) series[k] = []; }
      offset = data.offset;
      for (const e of data.events) {
        if (e.event === "step") {
          for (const k of ["loss", "ppl", "lr", "entropy_scale", "ppl_scale", "beta1", "grad_norm"])
            if (e[k] !== undefined && e[k] !== null) series[k].push([e.step, e[k]]);
        } else if (e.event === "eval") {
          series.val_loss.push([e.step, e.val_loss]); series.val_ppl.push([e.step, e.val_ppl]);
        }
      }
      if (data.events.length) draw();
      const run = await api(`/api/run?path=${encodeURIComponent(path)}`);
      document.getElementById("run-status").textContent = run.status;
      document.getElementById("run-step").textContent = run.step;
      document.getElementById("run-tps").textContent = run.tokens_per_sec ? Math.round(run.tokens_per_sec).toLocaleString() : "-";
      document.getElementById("run-eta").textContent = run.eta_s === null ? "-" : `${Math.round(run.eta_s)} s`;
      document.getElementById("checkpoints").innerHTML = run.checkpoints.map(c =>
        `<li>${esc(c.name)}${c.emergency ? " <em>(emergency)</em>" : ""}</li>`).join("");
      if (run.run_config) document.getElementById("run-config").textContent = JSON.stringify(run.run_config, null, 2);
      const running = run.job && run.job.running;
      jobId = run.job ? run.job.id : null;
      document.getElementById("stop-button").disabled = !running;
      document.getElementById("resume-button").disabled = running || !run.checkpoints.some(c => c.resumable);
      if (jobId) {
        const job = await api(`/api/jobs/${jobId}`);
        const log = document.getElementById("job-log");
        log.textContent = job.log_tail; log.scrollTop = log.scrollHeight;
      }
    } catch (err) { say(err.message); }
  }
  document.getElementById("stop-button").onclick = async () => {
    try { await api("/api/stop", {run: path}); say("Stop sent: the run writes an emergency checkpoint and exits.", true); }
    catch (err) { say(err.message); }
  };
  document.getElementById("resume-button").onclick = async () => {
    try { await api("/api/resume", {run: path}); say("Resumed from the newest checkpoint.", true); }
    catch (err) { say(err.message); }
  };
  draw(); poll(); setInterval(poll, 1000);
}

// ---- the runs list: refreshed every two seconds -------------------------------------------------------------
function initRuns() {
  const body = document.querySelector("#runs-table tbody");
  const num = (v, digits) => (v === null || v === undefined) ? "-" : Number(v).toFixed(digits);
  async function poll() {
    try {
      const runs = await api("/api/runs");
      body.innerHTML = runs.map(r => `<tr data-run="${esc(r.path)}"><td><a href="/runs/${esc(r.path)}">${esc(r.path)}</a></td>
        <td>${esc(r.status)}</td><td>${r.step}${r.total_steps ? " / " + r.total_steps : ""}</td>
        <td>${num(r.loss, 4)}</td><td>${num(r.val_loss, 4)}</td>
        <td>${r.tokens_per_sec ? Math.round(r.tokens_per_sec).toLocaleString() : "-"}</td>
        <td>${r.eta_s === null ? "-" : Math.round(r.eta_s) + " s"}</td><td>${r.checkpoints.length}</td></tr>`).join("");
    } catch (err) { say(err.message); }
  }
  setInterval(poll, 2000);
}

// ---- train form ------------------------------------------------------------------------------------------------
function initTrain() {
  const form = document.getElementById("train-form");
  document.getElementById("train-name").value = "run-" + new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "");
  async function suggest() {
    const data = formData(form);
    const out = document.getElementById("scale-result");
    if (data.dataset === "demo") { out.textContent = "The demo corpus is built in: no suggestion."; return; }
    out.textContent = "counting tokens…";
    try {
      const q = new URLSearchParams({dataset: data.dataset, tokenizer: data.tokenizer, batch_size: data.batch_size, seq_len: data.seq_len});
      const plan = await api(`/api/scale?${q}`);
      const rows = plan.suggestions.map(s => `<tr><td>${esc(s.name)}</td><td>${s.num_params.toLocaleString()}</td>
        <td>${s.config.num_layers}×${s.config.hidden_size}</td><td>${s.tokens_per_param.toPrecision(2)}</td>
        <td>${s.recommended_steps.toLocaleString()}</td><td>${s.epochs.toFixed(1)}</td></tr>`).join("");
      out.innerHTML = `<p>${plan.estimated ? "≈" : ""}${plan.dataset_tokens.toLocaleString()} tokens (vocab ${plan.vocab_size}) →
        about ${plan.optimal_params.toLocaleString()} parameters at 20 tokens per parameter.</p>
        ${plan.note ? `<p class="hint">${esc(plan.note)}</p>` : ""}
        <table><tr><th>size</th><th>params</th><th>layers×hidden</th><th>tokens/param</th><th>steps</th><th>epochs</th></tr>${rows}</table>`;
    } catch (err) { out.textContent = err.message; }
  }
  for (const name of ["dataset", "tokenizer", "batch_size", "seq_len"]) form.elements[name].addEventListener("change", suggest);
  suggest();
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const job = await api("/api/train", formData(form));
      window.location.href = "/runs/" + job.folder;
    } catch (err) { say(err.message); }
  };
}

// ---- benchmark -------------------------------------------------------------------------------------------------
function initBenchmark() {
  const form = document.getElementById("bench-form");
  document.getElementById("bench-name").value = "bench-" + new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "");
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const data = formData(form);
      await api("/api/benchmark", data);
      window.location.href = "/benchmark/" + data.name;
    } catch (err) { say(err.message); }
  };
}

function initReport() {
  const name = document.getElementById("report").dataset.name;
  let timer = null, drawn = false;
  async function poll() {
    try {
      const data = await api(`/api/benchmarks/${encodeURIComponent(name)}`);
      const state = data.job ? data.job.state : (data.report ? "finished" : "unknown");
      document.getElementById("report-state").textContent = `state: ${state}`;
      document.getElementById("report-log").textContent = data.log_tail;
      if (data.report && !drawn) { drawn = true; drawReport(data.report); }
      if (data.report && !(data.job && data.job.running)) clearInterval(timer);
    } catch (err) { say(err.message); }
  }
  poll(); timer = setInterval(poll, 1000);
}

function drawReport(report) {
  const summary = report.summary || {};
  const names = Object.keys(summary);
  const fmt = (m) => m ? `${m.mean.toFixed(4)} ± ${m.std.toFixed(4)}` : "-";
  document.getElementById("report-table").innerHTML =
    "<tr><th>optimizer</th><th>lr</th><th>val loss</th><th>train loss</th><th>tokens/s</th><th>ms/step</th></tr>" +
    names.map(n => { const s = summary[n]; return `<tr><td>${esc(n)}</td><td>${s.lr}</td><td>${fmt(s.val_loss)}</td>
      <td>${fmt(s.final_train_loss)}</td><td>${s.tokens_per_sec ? Math.round(s.tokens_per_sec.mean) : "-"}</td>
      <td>${s.time_per_step_ms ? s.time_per_step_ms.mean.toFixed(1) : "-"}</td></tr>`; }).join("");
  document.getElementById("report-verdict").textContent = report.verdict || "";
  const curves = names.filter(n => report[n] && report[n].step_metrics).map(n => ({
    x: report[n].step_metrics.map(m => m.step), y: report[n].step_metrics.map(m => m.loss), name: n, mode: "lines"}));
  Plotly.react("chart-bench-loss", curves, LAYOUT("training loss (first seed)"), {displaylogo: false});
  Plotly.react("chart-bench-val", [{type: "bar", x: names, y: names.map(n => summary[n].val_loss ? summary[n].val_loss.mean : null),
    error_y: {type: "data", array: names.map(n => summary[n].val_loss ? summary[n].val_loss.std : 0)}}],
    {...LAYOUT("held-out loss (mean ± std over seeds)"), xaxis: {}}, {displaylogo: false});
  document.getElementById("chart-bench-loss").dataset.drawn = "1";
}

// ---- chat ------------------------------------------------------------------------------------------------------
function confidenceColour(c) {
  if (c === null || c === undefined) return "";
  const hue = Math.round(Math.max(0, Math.min(1, c)) * 120);
  return `background: hsla(${hue}, 70%, 50%, 0.25)`;
}

function initChat() {
  if (!document.getElementById("chat")) return;
  let session = null;
  const log = document.getElementById("chat-log");
  document.getElementById("chat-open").onclick = async () => {
    try {
      const data = await api("/api/chat/open", {checkpoint: document.getElementById("chat-checkpoint").value});
      session = data.session; log.innerHTML = ""; say("Checkpoint loaded.", true);
    } catch (err) { say(err.message); }
  };
  document.getElementById("chat-reset").onclick = async () => {
    if (!session) return;
    try { await api("/api/chat/reset", {session}); log.innerHTML = ""; } catch (err) { say(err.message); }
  };
  document.getElementById("chat-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("chat-input");
    const text = input.value.trim();
    if (!text) return;
    if (!session) { say("Load a checkpoint first."); return; }
    input.value = "";
    log.insertAdjacentHTML("beforeend", `<div class="user">${esc(text)}</div>`);
    const reply = document.createElement("div"); reply.className = "assistant"; log.appendChild(reply);
    const response = await fetch("/api/chat/message", {method: "POST",
      headers: {"Content-Type": "application/json", "X-Vesper-CSRF": csrfToken()}, body: JSON.stringify({session, text})});
    if (!response.ok) { say((await response.json()).error || response.statusText); return; }
    const reader = response.body.getReader(); const decoder = new TextDecoder(); let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const piece = JSON.parse(buffer.slice(0, cut)); buffer = buffer.slice(cut + 1);
        if (piece.error) { say(piece.error); continue; }
        const span = document.createElement("span"); span.textContent = piece.text;
        if (piece.confidence !== null) { span.style.cssText = confidenceColour(piece.confidence); span.title = `confidence ${piece.confidence.toFixed(2)}`; }
        reply.appendChild(span);
      }
    }
    reply.dataset.done = "1";
  };
}

// ---- data ------------------------------------------------------------------------------------------------------
function initData() {
  document.getElementById("inspect-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("inspect-result");
    out.textContent = "reading…";
    try {
      const q = new URLSearchParams({path: document.getElementById("inspect-file").value,
                                     tokenizer: document.getElementById("inspect-tokenizer").value});
      const r = await api(`/api/inspect?${q}`);
      const column = r.conversation ? `conversation (${r.conversation.join(" / ")})` : (r.text_column || "— (plain text)");
      const about = r.estimated ? "≈" : "";
      out.innerHTML = `<table id="inspect-table">
        <tr><td>format</td><td id="inspect-format">${esc(r.format)}</td></tr>
        <tr><td>size</td><td>${r.size_bytes.toLocaleString()} bytes</td></tr>
        <tr><td>records</td><td>${r.num_records === null ? "?" : r.num_records.toLocaleString()}</td></tr>
        <tr><td>columns</td><td>${esc(r.columns.join(", ") || "—")}</td></tr>
        <tr><td>suggested text column</td><td>${esc(column)}</td></tr>
        <tr><td>characters</td><td id="inspect-chars">${about}${r.num_chars.toLocaleString()}</td></tr>
        <tr><td>tokens (${esc(r.tokenizer || "none")})</td><td id="inspect-tokens">${r.num_tokens === null ? "—" : about + r.num_tokens.toLocaleString()}</td></tr>
        </table><h3>Samples</h3>` + r.samples.map(s => `<pre>${esc(typeof s === "string" ? s : JSON.stringify(s, null, 1))}</pre>`).join("");
    } catch (err) { out.textContent = err.message; }
  };
  document.getElementById("cache-button").onclick = async () => {
    try {
      const job = await api("/api/cache", {dataset: document.getElementById("inspect-file").value,
                                           tokenizer: document.getElementById("inspect-tokenizer").value});
      say(`Building the cache into ${job.folder}/ (log: ${job.log}).`, true);
    } catch (err) { say(err.message); }
  };
  document.getElementById("search-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("search-result");
    try {
      const hits = await api(`/api/search?q=${encodeURIComponent(document.getElementById("search-query").value)}`);
      out.innerHTML = hits.map(h => `<li><a href="#" data-id="${esc(h.id)}">${esc(h.id)}</a> (${(h.downloads || 0).toLocaleString()} downloads)</li>`).join("");
      for (const a of out.querySelectorAll("a")) a.onclick = (e) => { e.preventDefault(); document.getElementById("download-name").value = a.dataset.id; };
    } catch (err) { out.innerHTML = `<li class="message">${esc(err.message)}</li>`; }
  };
  const download = async (body) => {
    const out = document.getElementById("download-result");
    try { const job = await api("/api/download", body); out.textContent = `Downloading into ${job.folder}/ (log: ${job.log}).`; }
    catch (err) { out.textContent = err.message; out.className = "message"; }
  };
  document.getElementById("download-form").onsubmit = (ev) => { ev.preventDefault(); download({
    name: document.getElementById("download-name").value, config: document.getElementById("download-config").value,
    split: document.getElementById("download-split").value, max_rows: document.getElementById("download-rows").value}); };
  document.getElementById("fineweb-form").onsubmit = (ev) => { ev.preventDefault(); download({
    name: "HuggingFaceFW/fineweb-edu", config: "sample-10BT", tokens: document.getElementById("fineweb-tokens").value}); };
}

// ---- models ----------------------------------------------------------------------------------------------------
function initModels() {
  for (const form of document.querySelectorAll(".command-form")) {
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      const data = formData(form); const outputName = data.output_name; delete data.output_name;
      try { const job = await api(`/api/command/${form.dataset.command}`, {output_name: outputName, options: data});
            say(`Started vesper ${form.dataset.command}: output in ${job.folder}/ (log: ${job.log}).`, true); }
      catch (err) { say(err.message); }
    };
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const init = {runs: initRuns, run: initRun, train: initTrain, benchmark: initBenchmark, report: initReport, chat: initChat,
                data: initData, models: initModels}[document.body.dataset.page];
  if (init) init();
});
