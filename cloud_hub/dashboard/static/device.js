/* One device: its facts, health verdict, charts, the drift of the model it runs (per feature,
 * in natural order, against the detector's thresholds), installs and paged events. */
"use strict";

const naturalOrder = (a, b) => a.localeCompare(b, undefined, { numeric: true, sensitivity: "base" });

/* A feature's figures as stored: {psi, ks, extra: {psi_critical, ks_critical, drifted}}. */
function featureRow(name, v) {
  const x = v.extra || {};
  const psiLimit = x.psi_critical ?? v.psi_critical; const ksLimit = x.ks_critical ?? v.ks_critical;
  const psiOver = psiLimit !== undefined && +v.psi > +psiLimit; const ksOver = ksLimit !== undefined && +v.ks > +ksLimit;
  const drifted = x.drifted ?? v.drifted ?? (psiOver || ksOver);
  return `<tr class="${drifted ? "row-bad" : ""}"><td>${esc(name)}</td>
    <td class="num ${psiOver ? "over" : ""}">${fixed(v.psi, 3)}</td><td class="num muted">${fixed(psiLimit, 3)}</td>
    <td class="num ${ksOver ? "over" : ""}">${fixed(v.ks, 3)}</td><td class="num muted">${fixed(ksLimit, 3)}</td>
    <td>${drifted ? pill("drift", "drift-bad") : pill("ok", "drift-ok")}</td></tr>`;
}

function driftCard(d, reports) {
  if (!d.installed_model) return '<span class="muted">no model installed</span>';
  const running = reports.filter((r) => r.model_version === d.installed_version && r.model_name === d.installed_model);
  const latest = running[0];
  if (!latest) {
    const other = reports[0];
    return `<span class="muted">no drift report for ${esc(d.installed_model)} v${esc(d.installed_version)} yet${other ? ` (the newest is for v${esc(other.model_version)})` : ""}</span>`;
  }
  const names = Object.keys(latest.features).sort(naturalOrder);
  return `<div class="muted">${esc(latest.model_name)} v${esc(latest.model_version)} (the model the device runs) · window of ${esc(latest.window_size)} · ${esc(ago(latest.ts))} ·
      score ${fixed(latest.drift_score, 3)} ${latest.drifted ? pill("drift", "drift-bad") : pill("no drift", "drift-ok")}</div>
    ${scroll(`<table id="drift-features"><thead><tr><th>feature</th><th>PSI</th><th>PSI limit</th><th>KS</th><th>KS limit</th><th></th></tr></thead>
      <tbody>${names.map((n) => featureRow(n, latest.features[n])).join("")}</tbody></table>`)}`;
}

function factsTable(d) {
  const f = d.facts || {};
  if (!d.facts) return '<span class="muted">this device has not reported its CPU/GPU facts</span>';
  return `<table id="facts"><tbody>
    <tr><th>int8 target</th><td>${esc(d.target || "unknown")}</td></tr>
    <tr><th>CPU</th><td>${esc(f.cpu_model || "—")} <span class="muted">${esc(f.arch || "")}</span></td></tr>
    <tr><th>ISA flags</th><td class="wrap">${(f.isa_flags || []).map((x) => pill(x, "")).join(" ") || "—"}</td></tr>
    <tr><th>GPU</th><td>${esc(f.gpu_model || "none")}${f.compute_capability ? ` <span class="muted">compute ${esc(f.compute_capability)}</span>` : ""}</td></tr>
    <tr><th>TensorRT</th><td>${esc(f.tensorrt_version || "—")}</td></tr></tbody></table>`;
}

async function deviceEvents(id) {
  const ev = state.events;
  if (ev.device !== id) Object.assign(ev, { device: id, offset: 0 });
  const page = await api(`/api/v1/devices/${encodeURIComponent(id)}/events?limit=${ev.limit}&offset=${ev.offset}`);
  const rows = page.items.map((e) => {
    const data = e.data && Object.keys(e.data).length ? `<details><summary>data</summary><pre>${esc(JSON.stringify(e.data, null, 1))}</pre></details>` : "";
    return `<tr><td title="${esc(when(e.ts))}">${ago(e.ts)}</td><td>${pill(e.kind, e.kind)}</td><td class="mono">${esc(e.deployment_id || "")}</td>
      <td class="wrap">${esc(e.detail)}${data}</td></tr>`;
  }).join("");
  return `${scroll(`<table id="events"><thead><tr><th>when</th><th>kind</th><th>deployment</th><th>detail</th></tr></thead><tbody>${rows || '<tr><td colspan="4" class="muted">no events</td></tr>'}</tbody></table>`)}
    <div class="pager"><button id="ev-prev" ${ev.offset === 0 ? "disabled" : ""}>‹ newer</button>
      <span id="ev-info">${page.total ? ev.offset + 1 : 0}–${Math.min(ev.offset + ev.limit, page.total)} of ${page.total}</span>
      <button id="ev-next" ${ev.offset + ev.limit >= page.total ? "disabled" : ""}>older ›</button></div>`;
}

async function viewDevice(id) {
  const at = location.hash;
  const since = Date.now() / 1000 - 6 * 3600;
  const enc = encodeURIComponent(id);
  const [detail, telemetry, drift, overview, events] = await Promise.all([
    api(`/api/v1/devices/${enc}`), api(`/api/v1/devices/${enc}/telemetry?since=${since}`),
    api(`/api/v1/devices/${enc}/drift?limit=200`), api(`/api/v1/fleet/overview?device_id=${enc}`), deviceEvents(id),
  ]);
  const d = detail.device; const o = overview[0] || { health: { state: "offline", reason: "" } };
  const byMetric = {};
  for (const t of telemetry) (byMetric[t.metric] ||= []).push([t.minute * 60, t.count ? t.sum / t.count : t.last]);
  const series = (names) => names.filter((n) => byMetric[n]).map((n) => ({ label: n, points: byMetric[n] }));
  const golden = (detail.golden_refusals || []).map((e) => `<tr><td>${ago(e.ts)}</td><td class="mono">${esc(e.deployment_id || "")}</td><td>${esc(e.data.runtime || "")}</td>
      <td>${fixed(e.data.top1_agreement, 3)} <span class="muted">min ${fixed(e.data.min_top1_agreement, 3)}</span></td>
      <td>${fixed(e.data.max_abs_logit_error, 4)} <span class="muted">max ${fixed(e.data.max_abs_logit_error_allowed, 4)}</span></td><td>${e.data.samples ?? "—"}</td></tr>`).join("");
  const installs = detail.rollouts.map((t) => `<tr><td><a href="#/rollout/${encodeURIComponent(t.rollout_id)}">${esc(t.rollout_id)}</a></td><td>${t.stage_index + 1}</td><td>${pill(t.state, `t-${t.state}`)}</td><td>${t.attempts}</td><td class="wrap">${esc(t.detail)}</td></tr>`).join("");
  const connection = o.health.state === "never_connected" ? pill("never connected", "never") : d.online ? pill("online") : pill("offline");
  if (location.hash !== at) return; // the operator moved on while this loaded
  $("#view").innerHTML = `<h1>${esc(d.device_id)} ${connection} <span id="device-health">${healthPill(o.health)}</span></h1>
    <div class="stats"><div class="stat"><b>${esc(d.device_class || "—")}</b><span>class</span></div>
      <div class="stat"><b>${d.installed_model ? `v${esc(d.installed_version)}` : "—"}</b><span>${esc(d.installed_model || "no model")}</span></div>
      <div class="stat"><b>${esc(d.runtime || "—")}</b><span>${esc(d.provider || "provider")}</span></div>
      <div class="stat"><b>${esc(d.ota_state)}</b><span>OTA state</span></div><div class="stat"><b>${ago(d.last_seen)}</b><span>last seen</span></div></div>
    <p class="muted" id="charts-empty"></p>
    <div class="grid2"><div class="card chart" id="c-lat"></div><div class="card chart" id="c-cpu"></div><div class="card chart" id="c-mem"></div><div class="card chart" id="c-temp"></div>
      <div class="card chart" id="c-drift"></div>
      <div class="card" id="drift-card"><h2>Drift per feature</h2>${driftCard(d, drift.items)}</div></div>
    <div class="grid2"><div class="card"><h2>Platform</h2>${factsTable(d)}</div>
      <div class="card"><h2>Golden-batch refusals</h2>${golden ? scroll(`<table id="golden"><thead><tr><th>when</th><th>deployment</th><th>runtime</th><th>top-1 agreement</th><th>max |logit error|</th><th>samples</th></tr></thead><tbody>${golden}</tbody></table>`) : '<span class="muted">none: every install agreed with its golden batch</span>'}</div></div>
    <h2>Install history</h2>${scroll(`<table id="installs"><thead><tr><th>rollout</th><th>stage</th><th>state</th><th>attempts</th><th>detail</th></tr></thead><tbody>${installs || '<tr><td colspan="5" class="muted">no rollout has targeted this device</td></tr>'}</tbody></table>`)}
    <h2>Events</h2><div id="events-box">${events}</div>`;
  const pct = [0, 100];
  const running = drift.items.filter((r) => r.model_version === d.installed_version).reverse();
  const charts = [
    ["#c-lat", "latency (ms)", series(["p50_ms", "p95_ms"]), { yLabel: "ms" }],
    ["#c-cpu", "CPU / GPU (%)", series(["cpu_percent", "gpu_util_percent"]), { y: pct, yLabel: "%" }],
    ["#c-mem", "memory / disk (%)", series(["memory_percent", "disk_percent"]), { y: pct, yLabel: "%" }],
    ["#c-temp", "temperature (°C)", series(["temperature_c", "gpu_temperature_c"]), { yLabel: "°C" }],
    ["#c-drift", `drift score (max PSI) · v${d.installed_version ?? "—"}`, [{ label: "drift", points: running.map((r) => [r.ts, r.drift_score]) }], { yLabel: "PSI" }],
  ];
  // charts without data collapse into one line instead of empty cards
  const empty = charts.filter(([, , s]) => !s.some((x) => x.points.length)).map(([sel, title]) => { $(sel).remove(); return title; });
  charts.filter(([sel]) => $(sel)).forEach(([sel, title, s, opts]) => chart($(sel), title, s, opts));
  $("#charts-empty").textContent = empty.length ? `No data in the last 6 hours: ${empty.join(", ")}` : "";
  const page = (delta) => async () => { state.events.offset = Math.max(0, state.events.offset + delta); $("#events-box").innerHTML = await deviceEvents(id); bindEvents(); };
  const bindEvents = () => { $("#ev-prev").onclick = page(-state.events.limit); $("#ev-next").onclick = page(state.events.limit); };
  bindEvents();
}
