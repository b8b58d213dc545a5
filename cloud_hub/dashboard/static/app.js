/* fedfleet dashboard: a small single-page app over the hub's REST API.
 * Views re-read their data when the server-sent-events stream announces a change. */
"use strict";

const ROLE_RANK = { viewer: 0, operator: 1, admin: 2 };
const state = { token: sessionStorage.getItem("fedfleet.token") || "", who: null, source: null, refresh: null,
  fleet: { offset: 0, limit: 50, q: "", device_class: "", online: "", label: "" } };
const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const ago = (ts) => { if (!ts) return "—"; const s = Date.now() / 1000 - ts; return s < 60 ? `${Math.round(s)}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`; };
const pill = (text, cls) => `<span class="pill ${esc(cls ?? text)}">${esc(text)}</span>`;
const canOperate = () => state.who && ROLE_RANK[state.who.role] >= ROLE_RANK.operator;

function toast(msg, err = false) {
  const t = $("#toast"); t.textContent = msg; t.className = "show" + (err ? " err" : "");
  clearTimeout(toast.timer); toast.timer = setTimeout(() => (t.className = ""), 4000);
}

async function api(path, opts = {}) {
  const res = await fetch(path, { ...opts, headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json", ...(opts.headers || {}) } });
  const text = await res.text();
  let body = null; try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text }; }
  if (res.status === 401) { logout(); throw new Error("session expired: log in again"); }
  if (!res.ok) throw new Error((body && (body.message || body.detail || body.error)) || `HTTP ${res.status}`);
  return body;
}

/* ---------- login ---------- */
function renderLogin(error = "") {
  $("#nav").hidden = true; $("#logout").hidden = true; $("#who").textContent = "";
  $("#view").innerHTML = `<div class="card login"><h1>Log in</h1>
    <p class="muted">Paste an API token (<code>cloud-hub token create --role viewer|operator|admin</code>).</p>
    <form id="login-form"><input id="token" type="password" placeholder="API token" autocomplete="off" required>
    <button class="primary" type="submit">Log in</button></form><p class="err" style="color:var(--bad)">${esc(error)}</p></div>`;
  $("#login-form").onsubmit = async (e) => {
    e.preventDefault(); state.token = $("#token").value.trim();
    try { await login(); } catch (err) { state.token = ""; renderLogin(err.message); }
  };
}

async function login() {
  state.who = await api("/api/v1/whoami");
  sessionStorage.setItem("fedfleet.token", state.token);
  $("#nav").hidden = false; $("#logout").hidden = false;
  $("#who").textContent = `${state.who.name} · ${state.who.role}`;
  connectStream(); route();
}

function logout() {
  sessionStorage.removeItem("fedfleet.token"); state.token = ""; state.who = null;
  clearTimeout(connectStream.timer);
  if (state.source) state.source.close(); state.source = null; $("#live").className = "live off";
  renderLogin();
}

/* The stream is opened with a single-use ticket, never the API token (URLs end up in logs).
 * A spent ticket cannot reconnect, so on any error the page asks for a new one; the server
 * closes the stream with a "revoked" event when the token is revoked. */
async function connectStream() {
  if (state.source) state.source.close();
  state.source = null;
  clearTimeout(connectStream.timer);
  if (!state.token) return;
  let ticket;
  try { ticket = (await api("/api/v1/stream-tickets", { method: "POST" })).ticket; }
  catch (e) { if (state.token) connectStream.timer = setTimeout(connectStream, 5000); return; }
  const src = new EventSource(`/ui/stream?ticket=${encodeURIComponent(ticket)}`);
  src.addEventListener("change", () => { if (state.refresh) state.refresh().catch((e) => console.warn(e)); });
  src.addEventListener("revoked", () => { logout(); renderLogin("the API token was revoked"); });
  src.onopen = () => ($("#live").className = "live on");
  src.onerror = () => {
    $("#live").className = "live off";
    if (state.source !== src) return;
    src.close(); state.source = null;
    connectStream.timer = setTimeout(connectStream, 2000);
  };
  state.source = src;
}

/* ---------- routing ---------- */
function route() {
  if (!state.who) return renderLogin();
  const [, page, id] = location.hash.split("/");
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === (page === "device" ? "fleet" : page === "rollout" ? "rollouts" : page || "fleet")));
  const views = { fleet: viewFleet, device: viewDevice, rollouts: viewRollouts, rollout: viewRollout, models: viewModels };
  const view = views[page] || viewFleet;
  state.refresh = () => view(decodeURIComponent(id || ""));
  state.refresh().catch((e) => { $("#view").innerHTML = `<div class="card">${esc(e.message)}</div>`; });
}
window.addEventListener("hashchange", route);

/* ---------- charts ---------- */
function chart(el, title, series) {
  // series: [{label, points: [[ts, value], ...]}]; x is shared (union of timestamps).
  el.innerHTML = "";
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  if (!xs.length) { el.innerHTML = `<div class="muted">${esc(title)}: no data yet</div>`; return; }
  const data = [xs, ...series.map((s) => { const m = new Map(s.points); return xs.map((x) => (m.has(x) ? m.get(x) : null)); })];
  const colors = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989"];
  new uPlot({ title, width: Math.max(360, el.clientWidth || 480), height: 200,
    series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: colors[i % colors.length], spanGaps: true }))],
    axes: [{}, { size: 60 }] }, data, el);
}

/* ---------- fleet ---------- */
async function viewFleet() {
  const f = state.fleet;
  const params = new URLSearchParams({ limit: f.limit, offset: f.offset, sort: "device_id" });
  if (f.q) params.set("q", f.q);
  if (f.device_class) params.set("device_class", f.device_class);
  if (f.online) params.set("online", f.online);
  if (f.label) params.set("label", f.label);
  const [summary, page] = await Promise.all([api("/api/v1/fleet/summary"), api(`/api/v1/devices?${params}`)]);
  const focused = document.activeElement && document.activeElement.id;
  const classes = Object.entries(summary.by_class).map(([k, v]) => `<div class="stat"><b>${v}</b><span>${esc(k)}</span></div>`).join("");
  const versions = Object.entries(summary.by_version).map(([k, v]) => `<div class="stat"><b>${v}</b><span>${esc(k)}</span></div>`).join("");
  const rows = page.items.map((d) => {
    const fallback = d.provider && /CPU/i.test(d.provider) && (d.runtimes || []).some((r) => /cuda|tensorrt|gpu/i.test(r));
    return `<tr data-device="${esc(d.device_id)}"><td><a href="#/device/${encodeURIComponent(d.device_id)}">${esc(d.device_id)}</a></td>
      <td>${esc(d.device_class)}</td><td>${Object.entries(d.labels || {}).map(([k, v]) => pill(`${k}=${v}`, "")).join(" ")}</td>
      <td>${d.online ? pill("online") : pill("offline")}</td>
      <td>${d.installed_model ? `${esc(d.installed_model)} v${esc(d.installed_version)}` : "—"}</td>
      <td>${esc(d.runtime || "—")} ${d.provider ? `<span class="muted">${esc(d.provider)}</span>` : ""} ${fallback ? pill("CPU fallback", "fallback") : ""}</td>
      <td>${d.healthy ? pill("healthy", "ok") : pill("unhealthy", "bad")} ${d.ota_state && d.ota_state !== "idle" ? pill(d.ota_state, "deploying") : ""}</td>
      <td>${ago(d.last_seen)}</td></tr>`;
  }).join("");
  $("#view").innerHTML = `<h1>Fleet</h1>
    <div class="stats"><div class="stat"><b id="n-total">${summary.total}</b><span>devices</span></div>
      <div class="stat"><b id="n-online">${summary.online}</b><span>online</span></div>
      <div class="stat"><b>${summary.cpu_fallback}</b><span>GPU→CPU fallback</span></div>${classes}</div>
    <h2>Installed versions</h2><div class="stats">${versions || '<span class="muted">none</span>'}</div>
    <h2>Devices</h2>
    <div class="filters"><input id="f-q" placeholder="search id" value="${esc(f.q)}">
      <input id="f-class" placeholder="class" value="${esc(f.device_class)}" size="10">
      <input id="f-label" placeholder="label k=v" value="${esc(f.label)}" size="12">
      <select id="f-online"><option value="">any state</option><option value="true" ${f.online === "true" ? "selected" : ""}>online</option><option value="false" ${f.online === "false" ? "selected" : ""}>offline</option></select></div>
    <table id="devices"><thead><tr><th>device</th><th>class</th><th>labels</th><th>state</th><th>model</th><th>runtime</th><th>health</th><th>last seen</th></tr></thead><tbody>${rows}</tbody></table>
    <div class="pager"><button id="prev" ${f.offset === 0 ? "disabled" : ""}>‹ prev</button>
      <span id="page-info">${page.total ? f.offset + 1 : 0}–${Math.min(f.offset + f.limit, page.total)} of ${page.total}</span>
      <button id="next" ${f.offset + f.limit >= page.total ? "disabled" : ""}>next ›</button></div>`;
  let timer;
  const onFilter = () => { clearTimeout(timer); timer = setTimeout(() => {
    Object.assign(f, { q: $("#f-q").value.trim(), device_class: $("#f-class").value.trim(), label: $("#f-label").value.trim(), online: $("#f-online").value, offset: 0 });
    viewFleet().catch((e) => toast(e.message, true)); }, 250); };
  ["#f-q", "#f-class", "#f-label"].forEach((s) => ($(s).oninput = onFilter)); $("#f-online").onchange = onFilter;
  $("#prev").onclick = () => { f.offset = Math.max(0, f.offset - f.limit); viewFleet(); };
  $("#next").onclick = () => { f.offset += f.limit; viewFleet(); };
  if (focused && $(`#${focused}`)) { const el = $(`#${focused}`); el.focus(); if (el.setSelectionRange && el.value) el.setSelectionRange(el.value.length, el.value.length); }
}

/* ---------- device ---------- */
async function viewDevice(id) {
  const since = Date.now() / 1000 - 6 * 3600;
  const [detail, telemetry, drift] = await Promise.all([
    api(`/api/v1/devices/${encodeURIComponent(id)}`),
    api(`/api/v1/devices/${encodeURIComponent(id)}/telemetry?since=${since}`),
    api(`/api/v1/devices/${encodeURIComponent(id)}/drift?limit=200`),
  ]);
  const d = detail.device;
  const byMetric = {};
  for (const t of telemetry) (byMetric[t.metric] ||= []).push([t.minute * 60, t.count ? t.sum / t.count : t.last]);
  const series = (names) => names.filter((n) => byMetric[n]).map((n) => ({ label: n, points: byMetric[n] }));
  const latest = drift.items[0];
  const featureRows = latest ? Object.entries(latest.features).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${(+v.psi).toFixed(3)}</td><td>${(+v.ks).toFixed(3)}</td></tr>`).join("") : "";
  const events = detail.recent_events.map((e) => `<tr><td>${ago(e.ts)}</td><td>${pill(e.kind, e.kind)}</td><td>${esc(e.deployment_id || "")}</td><td>${esc(e.detail)}</td></tr>`).join("");
  const f = d.facts || {};
  const facts = d.facts ? `<table id="facts"><tbody>
      <tr><th>int8 target</th><td>${esc(d.target || "unknown")}</td></tr>
      <tr><th>CPU</th><td>${esc(f.cpu_model || "—")} <span class="muted">${esc(f.arch || "")}</span></td></tr>
      <tr><th>ISA flags</th><td>${(f.isa_flags || []).map((x) => pill(x, "")).join(" ") || "—"}</td></tr>
      <tr><th>GPU</th><td>${esc(f.gpu_model || "none")}${f.compute_capability ? ` <span class="muted">compute ${esc(f.compute_capability)}</span>` : ""}</td></tr>
      <tr><th>TensorRT</th><td>${esc(f.tensorrt_version || "—")}</td></tr></tbody></table>` : '<span class="muted">this device has not reported its CPU/GPU facts</span>';
  const num = (v, n) => (v === null || v === undefined ? "—" : (+v).toFixed(n));
  const golden = (detail.golden_refusals || []).map((e) => `<tr><td>${ago(e.ts)}</td><td>${esc(e.deployment_id || "")}</td><td>${esc(e.data.runtime || "")}</td>
      <td>${num(e.data.top1_agreement, 3)} <span class="muted">min ${num(e.data.min_top1_agreement, 3)}</span></td>
      <td>${num(e.data.max_abs_logit_error, 4)} <span class="muted">max ${num(e.data.max_abs_logit_error_allowed, 4)}</span></td><td>${e.data.samples ?? "—"}</td></tr>`).join("");
  const installs = detail.rollouts.map((t) => `<tr><td><a href="#/rollout/${encodeURIComponent(t.rollout_id)}">${esc(t.rollout_id)}</a></td><td>${t.stage_index}</td><td>${pill(t.state)}</td><td>${t.attempts}</td><td>${esc(t.detail)}</td></tr>`).join("");
  $("#view").innerHTML = `<h1>${esc(d.device_id)} ${d.online ? pill("online") : pill("offline")}</h1>
    <div class="stats"><div class="stat"><b>${esc(d.device_class)}</b><span>class</span></div>
      <div class="stat"><b>${d.installed_model ? `v${esc(d.installed_version)}` : "—"}</b><span>${esc(d.installed_model || "no model")}</span></div>
      <div class="stat"><b>${esc(d.runtime || "—")}</b><span>${esc(d.provider || "provider")}</span></div>
      <div class="stat"><b>${esc(d.ota_state)}</b><span>OTA state</span></div><div class="stat"><b>${ago(d.last_seen)}</b><span>last seen</span></div></div>
    <div class="grid2"><div class="card" id="c-lat"></div><div class="card" id="c-cpu"></div><div class="card" id="c-mem"></div><div class="card" id="c-temp"></div><div class="card" id="c-drift"></div>
      <div class="card"><h2>Drift per feature ${latest ? `<span class="muted">(v${latest.model_version}, ${ago(latest.ts)}, score ${(+latest.drift_score).toFixed(3)})</span>` : ""}</h2>
        ${latest ? `<table><thead><tr><th>feature</th><th>PSI</th><th>KS</th></tr></thead><tbody>${featureRows}</tbody></table>` : '<span class="muted">no drift reports</span>'}</div></div>
    <div class="grid2"><div class="card"><h2>Platform</h2>${facts}</div>
      <div class="card" style="overflow-x:auto"><h2>Golden-batch refusals</h2>${golden ? `<table id="golden"><thead><tr><th>when</th><th>deployment</th><th>runtime</th><th>top-1 agreement</th><th>max |logit error|</th><th>samples</th></tr></thead><tbody>${golden}</tbody></table>` : '<span class="muted">none: every install agreed with its golden batch</span>'}</div></div>
    <h2>Install history</h2><table><thead><tr><th>rollout</th><th>stage</th><th>state</th><th>attempts</th><th>detail</th></tr></thead><tbody>${installs}</tbody></table>
    <h2>Events</h2><table><thead><tr><th>when</th><th>kind</th><th>deployment</th><th>detail</th></tr></thead><tbody>${events}</tbody></table>`;
  chart($("#c-lat"), "latency (ms)", series(["p50_ms", "p95_ms"]));
  chart($("#c-cpu"), "CPU / GPU (%)", series(["cpu_percent", "gpu_util_percent"]));
  chart($("#c-mem"), "memory / disk (%)", series(["memory_percent", "disk_percent"]));
  chart($("#c-temp"), "temperature (°C)", series(["temperature_c", "gpu_temperature_c"]));
  chart($("#c-drift"), "drift score", [{ label: "drift", points: drift.items.map((r) => [r.ts, r.drift_score]).reverse() }]);
}

/* ---------- rollouts ---------- */
async function viewRollouts() {
  const page = await api("/api/v1/rollouts?limit=200");
  const rows = page.items.map((r) => `<tr data-rollout="${esc(r.rollout_id)}"><td><a href="#/rollout/${encodeURIComponent(r.rollout_id)}">${esc(r.name || r.rollout_id)}</a></td>
    <td>${pill(r.state)}</td><td>${r.current_stage}</td><td>${esc(r.device_class)}</td><td class="muted">${esc(r.bundle_id.slice(0, 12))}…</td><td>${esc(r.reason)}</td><td>${ago(r.updated_at)}</td></tr>`).join("");
  $("#view").innerHTML = `<h1>Rollouts</h1>
    ${canOperate() ? `<details class="card" id="create"><summary><b>Create a rollout</b></summary>
      <div class="filters" style="margin-top:10px"><select id="r-bundle"></select><input id="r-class" placeholder="device class">
      <input id="r-labels" placeholder="labels k=v,k=v"><input id="r-stages" value="1,50,100" title="canary device count, then wave percentages" size="10">
      <input id="r-window" type="number" value="60" min="1" title="gate window (s)" size="5"> s gate
      <button class="primary" id="r-create">Create</button></div></details>` : ""}
    <table id="rollouts"><thead><tr><th>rollout</th><th>state</th><th>stage</th><th>class</th><th>bundle</th><th>reason</th><th>updated</th></tr></thead><tbody>${rows}</tbody></table>`;
  if (canOperate()) {
    const bundles = await api("/api/v1/bundles?limit=200");
    $("#r-bundle").innerHTML = bundles.items.map((b) => `<option value="${esc(b.bundle_id)}" data-class="${esc(b.device_class)}">${esc(b.model_name)} v${b.version} · ${esc(b.device_class)} · ${esc(b.kind)}</option>`).join("");
    const syncClass = () => { const o = $("#r-bundle").selectedOptions[0]; if (o) $("#r-class").value = o.dataset.class; };
    $("#r-bundle").onchange = syncClass; syncClass();
    $("#r-create").onclick = async () => {
      const [canary, ...waves] = $("#r-stages").value.split(",").map((s) => +s.trim()).filter((n) => n > 0);
      const labels = Object.fromEntries($("#r-labels").value.split(",").map((s) => s.trim()).filter(Boolean).map((kv) => kv.split("=")));
      const config = { bundle_id: $("#r-bundle").value, target: { device_class: $("#r-class").value, labels },
        stages: [{ count: canary || 1 }, ...waves.map((p) => ({ percent: p }))], gate_window_s: +$("#r-window").value || 60 };
      try { const r = await api("/api/v1/rollouts", { method: "POST", body: JSON.stringify({ config }) }); toast(`created ${r.rollout_id}`); location.hash = `#/rollout/${encodeURIComponent(r.rollout_id)}`; }
      catch (e) { toast(e.message, true); }
    };
  }
}

async function viewRollout(id) {
  const r = await api(`/api/v1/rollouts/${encodeURIComponent(id)}`);
  const stages = (r.stages || []).map((s) => {
    const t = s.targets || {}; const total = (s.devices || []).length || Object.values(t).reduce((a, b) => a + b, 0);
    const done = (t.committed || 0) + (t.succeeded || 0); const failed = (t.failed || 0) + (t.rolled_back || 0);
    const fmt = (v) => (v === null || v === undefined ? "—" : typeof v === "number" ? (+v.toFixed(4)).toString() : esc(v));
    const checks = s.gate && Array.isArray(s.gate.checks) ? s.gate.checks : [];
    const gate = checks.map((c) => `<tr><td>${esc(c.name)}</td><td>${fmt(c.value)}</td><td>${esc(c.op || "")} ${fmt(c.threshold)}</td>
      <td>${c.passed === true ? pill("pass") : c.passed === false ? pill("fail") : pill(c.detail || "n/a", "")}</td></tr>`).join("");
    const verdict = s.gate ? s.gate.verdict : undefined;
    return `<div class="card stage" data-stage="${s.index}"><b>${esc(s.name)}</b> ${pill(s.state)} <span class="muted">${total} devices · ${Object.entries(t).map(([k, v]) => `${k}: ${v}`).join(", ")}</span>
      <div class="progress" title="${done}/${total} committed"><div style="width:${total ? (100 * done) / total : 0}%"></div></div>
      ${failed ? `<div class="progress"><div class="fail" style="width:${total ? (100 * failed) / total : 0}%"></div></div>` : ""}
      ${s.gate ? `<h2>Gate ${verdict ? pill(verdict, verdict === "passed" || verdict === "pass" ? "pass" : verdict === "failed" || verdict === "fail" ? "fail" : "") : ""}</h2>
        <div class="muted">${esc(s.gate.reason || "")} · ${s.gate.succeeded ?? 0} succeeded, ${s.gate.failed ?? 0} failed, ${s.gate.timed_out ?? 0} timed out, ${s.gate.pending ?? 0} pending</div>
        <table class="gate"><thead><tr><th>metric</th><th>observed</th><th>threshold</th><th></th></tr></thead><tbody>${gate}</tbody></table>` : ""}</div>`;
  }).join("");
  const targets = await api(`/api/v1/rollouts/${encodeURIComponent(id)}/targets`);
  const trows = targets.map((t) => `<tr><td><a href="#/device/${encodeURIComponent(t.device_id)}">${esc(t.device_id)}</a></td><td>${t.stage_index}</td><td>${pill(t.state)}</td><td>${t.attempts}</td><td>${esc(t.detail)}</td></tr>`).join("");
  const op = canOperate();
  const button = (action, label, cls, enabled) => `<button class="${cls}" data-action="${action}" ${op && enabled ? "" : "disabled"} title="${op ? "" : "needs the operator role"}">${label}</button>`;
  const active = ["canary", "wave"].includes(r.state);
  $("#view").innerHTML = `<h1>Rollout ${esc(r.name || r.rollout_id)} <span id="rollout-state">${pill(r.state)}</span></h1>
    <div class="muted">bundle ${esc(r.bundle_id)} · previous ${esc(r.previous_bundle_id || "—")} · by ${esc(r.created_by)}</div>
    ${r.reason ? `<div class="card" id="reason"><b>Reason:</b> ${esc(r.reason)}</div>` : ""}
    ${(r.warnings || []).length ? `<div class="card" id="warnings"><b>Before you start:</b><ul>${r.warnings.map((w) => `<li>${esc(w)}</li>`).join("")}</ul></div>` : ""}
    ${r.delivery ? `<div class="card" id="delivery"><b>Bytes shipped:</b> ${(r.delivery.bytes_shipped / 1024).toFixed(1)} KiB of ${(r.delivery.bytes_full / 1024).toFixed(1)} KiB that full bundles would have cost
      (${r.delivery.bytes_full ? Math.round((100 * r.delivery.bytes_shipped) / r.delivery.bytes_full) : 100} %, deltas against what devices run)</div>` : ""}
    <div class="actions">${button("start", "Start", "primary", r.state === "draft")}${button("pause", "Pause", "", active)}${button("resume", "Resume", "", r.state === "paused")}
      ${button("abort", "Abort", "danger", active || ["paused", "draft", "rolling_back"].includes(r.state))}${button("rollback", "Roll back", "danger", !["rolled_back", "rolling_back", "draft", "resolved"].includes(r.state))}${button("resolve", "Resolve", "", r.state === "rollback_failed")}</div>
    ${stages}<h2>Devices</h2><table id="targets"><thead><tr><th>device</th><th>stage</th><th>state</th><th>attempts</th><th>detail</th></tr></thead><tbody>${trows}</tbody></table>`;
  document.querySelectorAll("[data-action]").forEach((b) => (b.onclick = async () => {
    const action = b.dataset.action;
    if (action !== "start" && action !== "resume" && !confirm(`${action} rollout ${r.rollout_id}?`)) return;
    try { await api(`/api/v1/rollouts/${encodeURIComponent(id)}/${action}`, { method: "POST", body: JSON.stringify({ reason: `${action} from dashboard` }) }); toast(`${action}: ok`); viewRollout(id); }
    catch (e) { toast(e.message, true); }
  }));
}

/* ---------- models and training runs ---------- */
async function viewModels() {
  const [models, runs] = await Promise.all([api("/api/v1/models"), api("/api/v1/training-runs?limit=50")]);
  const versions = await Promise.all(models.map((m) => api(`/api/v1/models/${encodeURIComponent(m.name)}/versions`)));
  const vrows = versions.flat().map((v) => {
    const artifacts = v.metrics && (v.metrics.artifacts || v.metrics.profiles) || {};
    const arts = Object.entries(artifacts).map(([p, a]) => `${esc(p)}: ${a.size_bytes ? (a.size_bytes / 1024).toFixed(1) + " KiB" : ""} ${a.accuracy !== undefined ? "acc " + (+a.accuracy).toFixed(3) : ""} ${a.latency_b1_ms !== undefined ? (+a.latency_b1_ms).toFixed(2) + " ms" : ""}`).join("<br>");
    return `<tr><td>${esc(v.model_name)}</td><td>v${v.version}</td><td>${esc(v.parent_version ?? "—")}</td><td>${esc(v.training_run_id || "—")}</td>
      <td>${v.metrics && v.metrics.accuracy !== undefined ? (+v.metrics.accuracy).toFixed(3) : "—"}</td><td>${arts || "—"}</td>
      <td><details><summary>lineage</summary><pre>${esc(JSON.stringify(v.lineage, null, 1))}</pre></details></td></tr>`;
  }).join("");
  const rrows = runs.items.map((r) => `<tr><td>${esc(r.run_id)}</td><td>${esc(r.model_name)}</td><td>${pill(r.state)}</td><td>${esc(r.trigger)}</td><td>${esc(r.result_version ?? "—")}</td><td>${esc(r.detail)}</td><td>${ago(r.created_at)}</td></tr>`).join("");
  $("#view").innerHTML = `<h1>Models &amp; training</h1><h2>Versions</h2>
    <table id="versions"><thead><tr><th>model</th><th>version</th><th>parent</th><th>run</th><th>accuracy</th><th>artifacts per profile</th><th></th></tr></thead><tbody>${vrows}</tbody></table>
    <h2>Federated runs</h2><div class="grid2" id="run-charts"></div>
    <table id="runs"><thead><tr><th>run</th><th>model</th><th>state</th><th>trigger</th><th>version</th><th>detail</th><th>created</th></tr></thead><tbody>${rrows}</tbody></table>`;
  for (const r of runs.items.slice(0, 4)) {
    const rounds = (r.metrics && (r.metrics.rounds || r.metrics.history)) || [];
    if (!rounds.length) continue;
    const el = document.createElement("div"); el.className = "card"; $("#run-charts").appendChild(el);
    chart(el, `${r.run_id}: accuracy per round`, [{ label: "accuracy", points: rounds.map((x, i) => [x.round ?? i + 1, x.accuracy ?? x.server_accuracy ?? null]) }]);
  }
}

$("#logout").onclick = logout;
if (state.token) login().catch(() => logout()); else renderLogin();
