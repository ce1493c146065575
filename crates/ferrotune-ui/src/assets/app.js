// ferrotune ui: the page. Everything it shows comes from the server's JSON API; text from
// data and models is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const c of children) e.append(c);
  return e;
};

// ---- errors: shown as the CLI prints them --------------------------------------------
function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  let value;
  try {
    value = await response.json();
  } catch (e) {
    throw new Error(`${path}: ${response.status} ${response.statusText}`);
  }
  if (!response.ok || value.error) throw new Error(value.error || response.statusText);
  return value;
}

async function guarded(action) {
  showError("");
  try {
    return await action();
  } catch (e) {
    showError(e.message);
  }
}

// ---- tabs ---------------------------------------------------------------------------
function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== `panel-${name}`;
  if (name === "train") { refreshYaml(); refreshRuns(); }
  if (name === "chat" || name === "evaluate" || name === "export") fillAdapters();
  history.replaceState(null, "", `#${name}`);
}
for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => showTab(b.dataset.tab);

// ---- pickers ------------------------------------------------------------------------
async function fillList(id, kinds) {
  const { entries } = await api(`/api/find?kinds=${kinds}`);
  const list = $(id);
  list.replaceChildren(...entries.map((e) => el("option", { value: e.path })));
  return entries;
}

async function fillModels() {
  const { local, hub, cache } = await api("/api/models");
  const option = (value, label) => el("option", { value, label });
  $("model-list").replaceChildren(
    ...local.map((e) => option(e.path, e.kind === "gguf" ? "GGUF file" : "model folder")),
    ...hub.map((id) => option(id, "Hugging Face cache")),
    ...cache.map((p) => option(p, "ferrotune's model cache")),
  );
}

async function fillAdapters() {
  const entries = await fillList("adapter-list", "adapter");
  for (const id of ["chat-adapter", "eval-adapter", "export-adapter"]) {
    if (!$(id).value && entries.length) $(id).value = entries[entries.length - 1].path;
  }
  if (!$("eval-dataset").value) $("eval-dataset").value = $("f-dataset").value;
  if (!$("eval-dataset-dir").value) $("eval-dataset-dir").value = $("f-dataset_dir").value;
}

// ---- the file browser: the server's listing of the served folder ----------------------
let browsing = { target: null, path: "." };

async function browse(path) {
  const { entries } = await api(`/api/files?path=${encodeURIComponent(path)}`);
  browsing.path = path;
  $("browser-path").textContent = path === "." ? "/" : `/${path}`;
  const kinds = { model: "model folder", adapter: "LoRA adapter / run", gguf: "GGUF file", dataset_dir: "dataset folder", data_file: "data file", yaml: "config", folder: "folder", file: "file" };
  $("browser-list").tBodies[0].replaceChildren(...entries.map((e) => {
    const open = e.size == null && (e.kind === "folder" || e.kind === "dataset_dir");
    const name = el("button", { className: "link", textContent: open ? `${e.name}/` : e.name, type: "button" });
    name.onclick = () => (open ? guarded(() => browse(e.path)) : pick(e.path));
    const use = el("button", { textContent: "choose", type: "button", onclick: () => pick(e.path) });
    return el("tr", {}, el("td", {}, name), el("td", { textContent: kinds[e.kind] ?? e.kind }), el("td", {}, use));
  }));
}

function pick(path) {
  const input = $(browsing.target);
  input.value = path;
  input.dispatchEvent(new Event("change"));
  $("browser").close();
}

for (const b of document.querySelectorAll("button.browse")) {
  b.onclick = () => guarded(async () => {
    browsing.target = b.dataset.for;
    await browse(".");
    $("browser").showModal();
  });
}
$("browser-up").onclick = () => guarded(() => browse(browsing.path.includes("/") ? browsing.path.slice(0, browsing.path.lastIndexOf("/")) : "."));
$("browser-pick-folder").onclick = () => pick(browsing.path);
$("browser-close").onclick = () => $("browser").close();

// ---- model --------------------------------------------------------------------------
function table(rows, head) {
  const t = el("table");
  if (head) t.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { textContent: h })))));
  t.append(el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", { textContent: c }))))));
  return t;
}

const gib = (bytes) => (bytes >= 2 ** 30 ? (bytes / 2 ** 30).toFixed(2) + " GiB" : (bytes / 2 ** 20).toFixed(1) + " MiB");

$("model-info-btn").onclick = () => guarded(async () => {
  const info = await api("/api/model/info", {
    model: $("model-path").value,
    cutoff_len: Number($("f-cutoff_len").value) || 1024,
    batch_size: Number($("f-per_device_train_batch_size").value) || 4,
    lora_rank: Number($("f-lora_rank").value) || 8,
  });
  const out = $("model-info");
  out.replaceChildren(
    table([
      ["architecture", info.architecture],
      ["parameters", (info.parameters / 1e6).toFixed(1) + "M"],
      ["layers", String(info.layers)],
      ["hidden size", String(info.hidden_size)],
      ["vocabulary", String(info.vocab_size)],
      ["memory available", info.available_bytes ? gib(info.available_bytes) : "unknown"],
    ]),
    el("h3", { textContent: `Memory plan (batch ${info.batch_size} x ${info.seq_len} tokens${info.checkpointing ? ", checkpointing" : ""})` }),
    table(Object.entries(info.memory).map(([method, plan]) => [
      method, gib(plan.weights_bytes), gib(plan.trainable_bytes), gib(plan.activations_bytes + plan.head_bytes), gib(plan.overhead_bytes), gib(plan.total_bytes),
      info.available_bytes && plan.total_bytes > info.available_bytes ? "does not fit" : "fits",
    ]), ["method, storage", "weights", "trainable + optimizer", "activations + head", "runtime", "planned peak", ""]),
  );
  refreshYaml();
});

// ---- the config: form fields + keys the form has no field for ------------------------
let configExtra = {};
const fields = () => [...document.querySelectorAll("[data-key]")];

function fieldValue(f) {
  const v = f.value.trim();
  if (v === "") return undefined;
  if (f.dataset.key === "placeholders") {
    const map = {};
    for (const pair of v.split(",")) {
      const [k, ...rest] = pair.split("=");
      if (k.trim()) map[k.trim()] = rest.join("=").trim();
    }
    return map;
  }
  if (v === "true") return true;
  if (f.type === "number" || /^-?\d+(\.\d+)?(e-?\d+)?$/i.test(v)) return Number(v);
  return v;
}

function configValues() {
  const values = { model_name_or_path: $("model-path").value.trim() || undefined, ...configExtra };
  for (const f of fields()) {
    const v = fieldValue(f);
    if (v === undefined) delete values[f.dataset.key]; else values[f.dataset.key] = v;
  }
  return values;
}

// YAML a value at a time: plain words as they are, anything else as JSON (valid YAML).
function yamlValue(v) {
  if (typeof v === "string" && /^[A-Za-z0-9_.\/@+-]+$/.test(v) && !/^(true|false|null|yes|no|on|off|~|[-+.\d].*)$/i.test(v)) return v;
  if (typeof v === "number") return String(v);
  return JSON.stringify(v);
}

function toYaml(values) {
  return Object.entries(values).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}: ${yamlValue(v)}`).join("\n") + "\n";
}

// The form is kept in the browser, so a reload or a new tab starts where the page was.
function refreshYaml() {
  const values = configValues();
  $("yaml").value = toYaml(values);
  localStorage.setItem("ferrotune-config", JSON.stringify(values));
}

function fillForm(values) {
  configExtra = {};
  const byKey = Object.fromEntries(fields().map((f) => [f.dataset.key, f]));
  for (const f of fields()) f.value = f.tagName === "SELECT" ? (f.options[0]?.value ?? "") : "";
  for (const [k, v] of Object.entries(values)) {
    if (k === "model_name_or_path") { $("model-path").value = v; continue; }
    const f = byKey[k];
    if (!f) { configExtra[k] = v; continue; }
    if (k === "placeholders" && v && typeof v === "object") f.value = Object.entries(v).map(([a, b]) => `${a}=${b}`).join(", ");
    else f.value = v === true ? "true" : v === false ? "" : String(v);
  }
}

$("form-tab").onclick = () => { $("form-tab").classList.add("active"); $("yaml-tab").classList.remove("active"); $("train-form").hidden = false; $("yaml-pane").hidden = true; };
$("yaml-tab").onclick = () => { refreshYaml(); $("yaml-tab").classList.add("active"); $("form-tab").classList.remove("active"); $("train-form").hidden = true; $("yaml-pane").hidden = false; };
$("yaml-load").onclick = () => guarded(async () => {
  const { values } = await api("/api/config/check", { yaml: $("yaml").value });
  fillForm(values);
  $("train-note").textContent = "config checked and loaded";
});
$("yaml-copy").onclick = () => navigator.clipboard?.writeText($("yaml").value);

// The YAML pane, when shown, is what runs (edited or not); else the form's YAML.
// The form's YAML; the data panel previews, counts and checks with it.
const formYaml = () => toYaml(configValues());
const currentYaml = () => ($("yaml-pane").hidden ? formYaml() : $("yaml").value);

// ---- data ---------------------------------------------------------------------------
// The dataset picker offers the names of the dataset folder's dataset_info.json, then files.
async function fillDatasets() {
  const dir = $("f-dataset_dir").value.trim() || ".";
  const [{ names }, { entries }] = await Promise.all([api(`/api/datasets?dir=${encodeURIComponent(dir)}`), api("/api/find?kinds=data_file")]);
  $("data-list").replaceChildren(...names.map((n) => el("option", { value: n, label: "dataset_info.json" })), ...entries.map((e) => el("option", { value: e.path })));
}
$("f-dataset_dir").addEventListener("change", () => guarded(fillDatasets));

$("data-preview-btn").onclick = () => guarded(async () => {
  const { samples } = await api("/api/data/preview", { yaml: formYaml(), num: 5 });
  const out = $("data-out");
  out.replaceChildren(...samples.map((s, n) => {
    const box = el("div", { className: "sample" });
    const supervised = s.labels.filter((l) => l !== -100).length;
    box.append(el("div", { className: "sample-head", textContent: `sample ${n + 1} · ${s.at} · ${s.input_ids.length} tokens, ${supervised} supervised${s.truncated ? ", truncated" : ""}` }));
    s.segments.forEach((sequence, k) => {
      if (s.segments.length === 2) box.append(el("div", { className: "sample-head", textContent: k === 0 ? (s.kto_tag === undefined ? "chosen" : "example") : (s.kto_tag === undefined ? "rejected" : "KL sequence") }));
      const pre = el("pre", { className: "tokens" });
      for (const seg of sequence) pre.append(seg.supervised ? el("mark", { className: "sup", textContent: seg.text }) : el("span", { textContent: seg.text }));
      box.append(pre);
    });
    return box;
  }));
  if (!samples.length) out.textContent = "no samples";
});

const pct = (x) => (x == null ? "" : (100 * x).toFixed(1) + "%");

$("data-stats-btn").onclick = () => guarded(async () => {
  const stats = await api("/api/data/stats", { yaml: formYaml() });
  const rows = [...stats.datasets, stats.total].map((d) => [
    d.name, String(d.records), String(d.samples), String(d.tokens), pct(d.supervised_fraction),
    String(d.truncated), String(d.dropped_too_long + d.all_masked + d.unrenderable + d.invalid),
    `${d.length.p50} / ${d.length.p90} / ${d.length.p99} / ${d.length.max}`,
  ]);
  const template = stats.template ? `template ${stats.template.name}, end of turn ${JSON.stringify(stats.template.end_of_turn)}` : "no template (stage pt)";
  const problems = [...stats.datasets.flatMap((d) => d.problems ?? [])];
  $("data-out").replaceChildren(
    el("p", { className: "hint", textContent: `stage ${stats.stage} · cutoff ${stats.cutoff_len} tokens · ${template}` }),
    table(rows, ["dataset", "records", "samples", "tokens", "supervised", "truncated", "lost", "length p50 / p90 / p99 / max"]),
    ...problems.map((p) => el("div", { className: "finding warning", textContent: typeof p === "string" ? p : JSON.stringify(p) })),
  );
});

async function showRecords(finding, box) {
  const { records } = await api("/api/data/records", { yaml: formYaml(), dataset: finding.dataset, records: finding.records.slice(0, 10) });
  box.replaceChildren(...records.map((r) => el("div", { className: "record" },
    el("div", { className: "sample-head", textContent: `record ${r.record} · ${r.at}` }),
    el("pre", { textContent: r.problem ?? JSON.stringify(r.value, null, 2) }))));
}

$("data-check-btn").onclick = () => guarded(async () => {
  const report = await api("/api/data/check", { yaml: formYaml() });
  const findings = report.findings ?? [];
  const out = $("data-out");
  const summary = report.summary.datasets.map((d) => [d.name, String(d.records), String(d.clean), Object.entries(d.checks).map(([k, v]) => `${k} ${v.records}`).join(", ")]);
  out.replaceChildren(table(summary, ["dataset", "records", "clean", "flagged records by check"]), el("h3", { textContent: `${findings.length} finding(s)` }));
  for (const f of findings) {
    const item = el("details", { className: `finding ${f.severity}` });
    const records = el("div");
    item.append(el("summary", { textContent: `${f.severity} · ${f.check} · ${f.dataset} · record${f.records.length > 1 ? "s" : ""} ${f.records.slice(0, 10).join(", ")}${f.records.length > 10 ? ", ..." : ""}` }));
    item.append(el("pre", { textContent: [f.detail, f.example].filter(Boolean).join("\n") }), records);
    // The finding's records, as they are in their file, when it is opened.
    item.addEventListener("toggle", () => { if (item.open && !records.childElementCount) guarded(() => showRecords(f, records)); });
    out.append(item);
  }
});

// ---- training -----------------------------------------------------------------------
let selectedRun = null;
let events = null;

$("train-start").onclick = () => guarded(async () => {
  const yaml = currentYaml();
  $("yaml").value = yaml;
  const { id } = await api("/api/train/start", { yaml });
  $("train-note").textContent = `started ${id}`;
  await refreshRuns();
  watchRun({ id, output: configValues().output_dir });
});

async function refreshRuns() {
  const runs = await api("/api/runs");
  const body = $("runs").tBodies[0];
  body.replaceChildren(...runs.map((r) => {
    const open = el("button", { textContent: "open", onclick: () => watchRun(r) });
    const tr = el("tr", {}, el("td", { textContent: r.output }), el("td", { textContent: r.status, className: `status ${r.status}` }), el("td", { textContent: String(r.step) }), el("td", { textContent: r.loss == null ? "" : r.loss.toFixed(4) }), el("td", {}, open));
    tr.dataset.id = r.id ?? "";
    return tr;
  }));
  if (!selectedRun) {
    const live = runs.find((r) => r.status === "running" && r.id);
    if (live) watchRun(live);
  }
  return runs;
}

const points = { loss: [], eval: [], lr: [] };
// The run's total steps, read from its progress line ("step 70/400 ..."), for the x axis.
let totalSteps = 0;

function watchRun(run) {
  selectedRun = run;
  localStorage.setItem("ferrotune-run", JSON.stringify(run));
  if (events) events.close();
  for (const k in points) points[k] = [];
  totalSteps = 0;
  drawChart();
  $("run-view").hidden = false;
  $("run-title").textContent = run.output;
  $("progress").textContent = "";
  const query = run.id ? `id=${encodeURIComponent(run.id)}` : `output=${encodeURIComponent(run.output)}`;
  events = new EventSource(`/api/runs/events?${query}`);
  events.onmessage = (message) => {
    const e = JSON.parse(message.data);
    if (e.reset) { for (const k in points) points[k] = []; }
    if (e.metrics) {
      const m = e.metrics;
      if (m.loss !== undefined) points.loss.push([m.step, m.loss]);
      if (m.lr !== undefined) points.lr.push([m.step, m.lr]);
      if (m.eval_loss !== undefined) points.eval.push([m.step, m.eval_loss]);
      drawChart();
    }
    if (e.progress !== undefined) {
      $("progress").textContent = e.progress;
      const total = /^step \d+\/(\d+)/.exec(e.progress);
      if (total && Number(total[1]) !== totalSteps) { totalSteps = Number(total[1]); drawChart(); }
    }
    if (e.status) {
      $("run-view").dataset.status = e.status;
      $("run-stop").disabled = e.status !== "running";
      $("run-resume").disabled = e.status === "running" || e.status === "finished" || !run.id;
      if (e.error) showError(e.error);
      if (e.status !== "running") { events.close(); refreshRuns(); }
    }
  };
}

function drawChart() {
  const svg = $("chart");
  const W = 640, H = 260, L = 56, R = 56, T = 12, B = 28;
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  svg.replaceChildren();
  svg.dataset.points = String(points.loss.length);
  const all = [...points.loss, ...points.eval];
  if (!all.length) { svg.append(node("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "waiting for the first logged step")); return; }
  const maxStep = Math.max(1, totalSteps, ...all.map((p) => p[0]), ...points.lr.map((p) => p[0]));
  const lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  const span = hi - lo || 1;
  const x = (s) => L + (s / maxStep) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / span) * (H - T - B);
  const lrMax = Math.max(...points.lr.map((p) => p[1]), 1e-12);
  const ylr = (v) => T + (1 - v / lrMax) * (H - T - B);
  svg.append(node("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis-line" }));
  svg.append(node("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis-line" }));
  svg.append(node("text", { x: L - 6, y: y(hi) + 4, "text-anchor": "end", class: "axis" }, hi.toFixed(3)));
  svg.append(node("text", { x: L - 6, y: y(lo) + 4, "text-anchor": "end", class: "axis" }, lo.toFixed(3)));
  svg.append(node("text", { x: W - R + 6, y: T + 8, class: "axis" }, lrMax.toExponential(1)));
  svg.append(node("text", { x: W - R, y: H - 8, "text-anchor": "end", class: "axis" }, `step ${maxStep}`));
  const line = (pts, f, cls) => { if (pts.length) svg.append(node("polyline", { points: pts.map((p) => `${x(p[0]).toFixed(1)},${f(p[1]).toFixed(1)}`).join(" "), class: cls })); };
  line(points.lr, ylr, "lr-line");
  line(points.loss, y, "loss-line");
  line(points.eval, y, "eval-line");
  for (const p of points.loss) svg.append(node("circle", { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 2.5, class: "loss-point" }));
  for (const p of points.eval) svg.append(node("circle", { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 3.5, class: "eval-point" }));
}

$("run-stop").onclick = () => guarded(async () => { if (selectedRun?.id) await api("/api/train/stop", { id: selectedRun.id }); });
$("run-resume").onclick = () => guarded(async () => {
  if (!selectedRun?.id) return;
  await api("/api/train/resume", { id: selectedRun.id });
  watchRun(selectedRun);
});

// ---- chat ---------------------------------------------------------------------------
let conversation = [];

async function streamAnswer(target, body) {
  const bubble = el("div", { className: "answer" });
  target.append(bubble);
  const response = await fetch("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) {
    const e = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(e.error);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).replace(/^data: /, "");
      buffer = buffer.slice(cut + 2);
      const e = JSON.parse(line);
      if (e.error) throw new Error(e.error);
      if (e.text) { text += e.text; bubble.textContent = text; }
      if (e.done) bubble.dataset.done = e.finish;
    }
  }
  return text;
}

$("chat-send").onclick = () => guarded(async () => {
  const message = $("chat-input").value.trim();
  if (!message) return;
  $("chat-input").value = "";
  const adapter = $("chat-adapter").value.trim();
  const base = $("model-path").value.trim() || configValues().model_name_or_path;
  if (!adapter) throw new Error("pick a run's output folder to chat with");
  for (const side of ["chat-base", "chat-tuned"]) $(side).append(el("div", { className: "question", textContent: message }));
  const history = [...conversation, { role: "user", content: message }];
  const common = { messages: history, max_new_tokens: Number($("chat-max").value) || 64, temperature: 0 };
  // Without a model picked, the base is the one the adapter names.
  const baseModel = base ? { model: base } : { model: adapter, base_only: true };
  const [, tunedText] = await Promise.all([
    streamAnswer($("chat-base"), { ...common, ...baseModel }),
    streamAnswer($("chat-tuned"), { ...common, model: adapter }),
  ]);
  conversation = [...history, { role: "assistant", content: tunedText }];
});
$("chat-input").onkeydown = (e) => { if (e.key === "Enter") $("chat-send").click(); };
$("chat-reset").onclick = () => { conversation = []; $("chat-base").replaceChildren(); $("chat-tuned").replaceChildren(); };

// ---- jobs: evaluation and export ----------------------------------------------------
async function followJob(id, statusBox, onDone) {
  for (;;) {
    const job = await api(`/api/jobs?id=${encodeURIComponent(id)}`);
    statusBox.textContent = `${job.status}: ${job.progress}`;
    statusBox.dataset.status = job.status;
    if (job.status !== "running") {
      if (job.error) showError(job.error);
      onDone(job);
      return job;
    }
    await new Promise((r) => setTimeout(r, 700));
  }
}

function markdownTable(md) {
  const lines = md.split("\n").filter((l) => l.startsWith("|"));
  if (lines.length < 2) return el("pre", { textContent: md });
  const cells = (l) => l.slice(1, -1).split("|").map((c) => c.trim().replace(/\*\*/g, ""));
  return table(lines.slice(2).map(cells), cells(lines[0]));
}

$("eval-start").onclick = () => guarded(async () => {
  const { id } = await api("/api/evaluate", {
    adapter: $("eval-adapter").value, dataset: $("eval-dataset").value,
    dataset_dir: $("eval-dataset-dir").value || ".", max_samples: Number($("eval-samples").value) || 20,
  });
  await followJob(id, $("eval-status"), (job) => { if (job.table) $("eval-table").replaceChildren(markdownTable(job.table)); });
});

$("export-start").onclick = () => guarded(async () => {
  const { id } = await api("/api/export", {
    adapter: $("export-adapter").value, out: $("export-out").value.trim(), gguf: $("export-gguf").value.trim(), gguf_type: $("export-gguf-type").value,
  });
  await followJob(id, $("export-status"), (job) => { $("export-log").textContent = job.log ?? ""; });
});

// ---- start ----------------------------------------------------------------------------
for (const f of [...fields(), $("model-path")]) f.addEventListener("change", refreshYaml);
try {
  const saved = JSON.parse(localStorage.getItem("ferrotune-config") || "null");
  if (saved) fillForm(saved);
} catch (e) { /* a config saved by another version: start from the defaults */ }
guarded(async () => {
  await Promise.all([fillModels(), fillDatasets(), fillList("datadir-list", "dataset_dir")]);
  const remembered = localStorage.getItem("ferrotune-run");
  const tab = location.hash.slice(1) || "model";
  showTab(["model", "data", "train", "chat", "evaluate", "export"].includes(tab) ? tab : "model");
  if (remembered && tab === "train") {
    const runs = await refreshRuns();
    const run = JSON.parse(remembered);
    if (runs.some((r) => r.id === run.id && r.output === run.output)) watchRun(run);
  }
});
