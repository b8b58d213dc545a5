/* Models and training: versions with the accuracy that was measured (named), the artifact
 * each build profile got (from the bundles that carry it), and per federated run the global
 * model's accuracy per round on a rounds axis. */
"use strict";

/* Per build profile, the model artifact of this version's full bundles. */
function artifactsOf(version, bundles) {
  const mine = bundles.filter((b) => b.model_name === version.model_name && b.version === version.version && b.kind === "full");
  const rows = mine.map((b) => {
    const m = b.manifest || {}; const metrics = m.metrics || {};
    const model = (m.artifacts || []).find((a) => a.role === "model") || {};
    const lat = metrics.latency_ms && metrics.latency_ms.b1;
    return `<div class="artifact"><b>${esc(m.profile || b.device_class)}</b> <span class="muted">${esc(b.device_class)}${(m.targets || []).length ? ` · ${esc(m.targets.join(", "))}` : ""}</span><br>
      ${esc(model.name || "model")} ${kib(model.size ?? b.size)}${metrics.accuracy !== undefined ? ` · artifact acc ${fixed(metrics.accuracy, 3)}` : ""}${lat !== undefined ? ` · ${fixed(lat, 2)} ms (batch 1, hub CPU)` : ""}</div>`;
  });
  if (rows.length) return rows.join("");
  const m = version.metrics || {};
  if (m.size_bytes !== undefined) return `<div class="artifact"><b>${esc((version.lineage || {}).profile || "profile")}</b><br>${kib(m.size_bytes)}${m.accuracy !== undefined ? ` · artifact acc ${fixed(m.accuracy, 3)}` : ""}</div>`;
  return '<span class="muted">no bundle built yet</span>';
}

/* The accuracy a version is known by, and what it is: the hub's validation set (fp32 model)
 * when trained here, else the compressed artifact's on the compression eval set. */
function accuracyOf(v) {
  const m = v.metrics || {};
  if (m.validation_accuracy !== undefined) return `${fixed(m.validation_accuracy, 3)} <span class="muted">validation, fp32</span>`;
  if (m.accuracy !== undefined) return `${fixed(m.accuracy, 3)} <span class="muted">artifact, eval set${m.eval_samples ? ` (${esc(m.eval_samples)})` : ""}</span>`;
  return "—";
}

function runRounds(r) {
  const rounds = (r.metrics && (r.metrics.rounds || (r.metrics.fl && r.metrics.fl.rounds) || r.metrics.history)) || [];
  return Array.isArray(rounds) ? rounds.filter((x) => x && typeof x === "object") : [];
}

/* An asynchronous run (FedBuff): its secure buffers, each with the devices folded into it,
 * the version each started from and its staleness. */
function runBuffers(r) {
  const buffers = (r.metrics && r.metrics.buffers) || [];
  if (!Array.isArray(buffers) || !buffers.length) return "";
  const rows = buffers.map((b) => {
    const folded = Array.isArray(b.folded) ? b.folded : [];
    const stale = folded.map((f) => f.staleness).filter((x) => typeof x === "number");
    return `<tr><td>${esc(b.buffer)}</td><td>${b.new_version != null ? `v${esc(b.base_version)} → v${esc(b.new_version)}` : pill("failed")}</td>
      <td>${b.secure ? "SecAgg+" : pill("plain", "failed")}</td><td class="mono wrap">${esc(folded.map((f) => f.device).join(", ") || "—")}</td>
      <td>${stale.length ? `${Math.min(...stale)}-${Math.max(...stale)}` : "—"}</td><td class="wrap">${esc(b.error || "")}</td></tr>`;
  }).join("");
  return `<details class="buffers"><summary>${buffers.length} buffers</summary>${scroll(`<table class="buffer-table"><thead><tr><th>buffer</th><th>versions</th><th>aggregation</th><th>devices folded</th><th>staleness</th><th></th></tr></thead><tbody>${rows}</tbody></table>`)}</details>`;
}

/* Who could take an asynchronous order: the verdict of the run's first order round
 * ("3 devices not eligible: 2 too hot, 1 serving"), each device's reasons on demand. */
function runEligibility(r) {
  const rounds = (r.metrics && r.metrics.eligibility) || [];
  if (!Array.isArray(rounds) || !rounds.length || !rounds[0]) return "";
  const first = rounds[0];
  const devices = Object.entries(first.devices || {});
  const rows = devices.map(([d, reasons]) => `<tr><td class="mono">${esc(d)}</td><td>${esc((reasons || []).join(", "))}</td></tr>`).join("");
  const detail = devices.length ? scroll(`<table class="eligibility-table"><thead><tr><th>device</th><th>not eligible: why</th></tr></thead><tbody>${rows}</tbody></table>`) : "";
  return `<details class="eligibility"><summary>${esc(first.summary || "")}</summary>${detail}</details>`;
}

async function viewModels() {
  const [models, runs, bundles] = await Promise.all([api("/api/v1/models"), api("/api/v1/training-runs?limit=50"), api("/api/v1/bundles?limit=200")]);
  const versions = (await Promise.all(models.map((m) => api(`/api/v1/models/${encodeURIComponent(m.name)}/versions`)))).flat();
  versions.sort((a, b) => a.model_name.localeCompare(b.model_name) || b.version - a.version);
  const vrows = versions.map((v) => `<tr><td>${esc(v.model_name)}</td><td>v${v.version}</td><td>${v.parent_version ? `v${esc(v.parent_version)}` : "—"}</td>
      <td class="mono">${esc(v.training_run_id || (v.lineage || {}).training_run_id || "—")}</td><td>${accuracyOf(v)}</td><td class="artifacts">${artifactsOf(v, bundles.items)}</td>
      <td><details><summary>lineage</summary><pre>${esc(JSON.stringify(v.lineage, null, 1))}</pre></details></td></tr>`).join("");
  const rrows = runs.items.map((r) => {
    const rounds = runRounds(r); const last = rounds[rounds.length - 1];
    const mode = (r.config && r.config.mode) || "sync";
    return `<tr><td class="mono">${esc(r.run_id)}</td><td>${esc(r.model_name)}</td><td>${pill(r.state)}</td><td>${esc(r.trigger)}</td><td>${esc(mode)}</td>
      <td>${rounds.length ? `${rounds.length - (rounds[0].round === 0 ? 1 : 0)} · acc ${fixed(last.accuracy, 3)}` : "—"}${runBuffers(r)}${runEligibility(r)}</td><td>${r.result_version ? `v${esc(r.result_version)}` : "—"}</td><td class="wrap">${esc(r.detail)}</td><td>${ago(r.created_at)}</td></tr>`;
  }).join("");
  $("#view").innerHTML = `<h1>Models &amp; training</h1><h2>Versions</h2>
    <p class="muted">Accuracy: on the hub's validation set for the fp32 model a federated run produced; for a version built elsewhere, its compressed artifact on the compression eval set.</p>
    ${scroll(`<table id="versions"><thead><tr><th>model</th><th>version</th><th>parent</th><th>run</th><th>accuracy</th><th>artifacts per profile</th><th></th></tr></thead><tbody>${vrows}</tbody></table>`)}
    <h2>Federated runs</h2><p class="muted">Charts: the global model's accuracy after each round (sync) or buffer (async), evaluated by the hub (round 0 = the model the run started from). An async run lists its buffers: devices folded, versions, staleness.</p>
    <div class="grid2" id="run-charts"></div>
    ${scroll(`<table id="runs"><thead><tr><th>run</th><th>model</th><th>state</th><th>trigger</th><th>mode</th><th>rounds or buffers · last acc</th><th>version</th><th>detail</th><th>created</th></tr></thead><tbody>${rrows}</tbody></table>`)}`;
  for (const r of runs.items.slice(0, 4)) {
    const rounds = runRounds(r);
    if (!rounds.length) continue;
    const el = document.createElement("div"); el.className = "card chart run-chart"; $("#run-charts").appendChild(el);
    const points = rounds.map((x, i) => [x.round ?? i + 1, x.accuracy ?? x.server_accuracy ?? null]).filter((p) => p[1] !== null);
    chart(el, `${r.run_id} · global accuracy per round`, [{ label: "accuracy", points }], { x: "rounds", y: [0, 1], yLabel: "accuracy" });
  }
}
