// The petanda web console (client/tools/web.py serves it). Text from peers and files is only ever
// set as textContent, never as HTML.
"use strict";

const LABEL = {match: "MATCH", no_match: "no match", unavailable: "unavailable",
  rate_limited: "rate limited", stale: "stale", unknown: "unknown"};
let session = null;
let current = null; // {id, rows, peers, next}

const $ = (id) => document.getElementById(id);

// Control and bidi-formatting characters become \uXXXX, as the CLI prints them.
function shown(text) {
  return String(text ?? "").replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, {credentials: "same-origin", ...options});
  let doc = null;
  try { doc = await response.json(); } catch (e) { doc = null; }
  if (!response.ok) {
    throw new Error((doc && doc.error) || `the console answered ${response.status} ${response.statusText}`);
  }
  return doc;
}

function megabytes(bytes) { return (bytes / 1e6).toFixed(1) + " MB"; }

// --- checking ----------------------------------------------------------------------------------------

async function submit(body, name, source, kind, region) {
  showError("");
  if (body.size > session.max_upload) {
    showError(`${name} is ${megabytes(body.size)}; this console takes at most ${megabytes(session.max_upload)} ` +
      "(petanda web --max-upload-mb N), or check it with petanda check --file. Nothing was sent.");
    return;
  }
  const query = new URLSearchParams({name, source, kind, region});
  let job;
  try {
    job = await api("/api/jobs?" + query, {method: "POST", body,
      headers: {"Content-Type": "application/octet-stream"}});
  } catch (error) {
    showError(`${name} was not checked: ${error.message}`);
    return;
  }
  current = {id: job.id, rows: [], peers: [], next: 0};
  $("job").hidden = false;
  $("job-title").textContent = shown(name);
  $("exports").hidden = true;
  $("job-stopped").hidden = true;
  $("hidden-rows").hidden = true;
  $("job-summary").textContent = "";
  $("job-state").textContent = "sent";
  $("job-state").dataset.state = "queued";
  $("progress").removeAttribute("value");
  $("job-peers").replaceChildren();
  rebuild();
  poll(job.id);
}

async function poll(id) {
  while (current && current.id === id) {
    let status;
    try {
      status = await api(`/api/jobs/${id}?since=${current.next}`);
    } catch (error) {
      showError(`lost the job: ${error.message}`);
      return;
    }
    update(status);
    if (!["queued", "running"].includes(status.state)) return;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

function update(status) {
  current.rows.push(...status.rows);
  current.next = status.next;
  const newPeers = status.peers.join(",") !== current.peers.join(",");
  if (newPeers) {
    current.peers = status.peers;
    rebuild();
  } else {
    const body = $("results").tBodies[0];
    for (const doc of status.rows) body.append(rowOf(doc));
  }
  const progress = $("progress");
  if (status.total) {
    progress.max = status.total;
    progress.value = Math.min(status.done, status.total);
  } else if (status.state !== "running" && status.state !== "queued") {
    progress.max = 1; progress.value = 1;
  } else {
    progress.removeAttribute("value");
  }
  const counts = status.counts;
  const rows = Object.values(counts).reduce((a, b) => a + b, 0);
  let state = {queued: "queued behind another check", running: `checking: ${rows} rows so far, ${counts.match} match`,
    done: "done", stopped: "stopped before the end", failed: "failed"}[status.state];
  if (status.waiting) state += ` — ${status.waiting}`;
  $("job-state").textContent = state;
  $("job-state").dataset.state = status.state;
  $("job-summary").textContent = shown(status.summary);
  $("job-peers").replaceChildren(...status.peer_lines.map((line) => {
    const li = document.createElement("li"); li.textContent = shown(line); return li;
  }));
  if (status.stopped) {
    $("job-stopped").hidden = false;
    $("job-stopped").textContent = "Stopped at a limit: " + shown(status.stopped) +
      ". The rows answered so far are in the exports; check the rest later.";
  }
  if (status.error) showError(shown(status.error));
  if (status.hidden) {
    $("hidden-rows").hidden = false;
    $("hidden-rows").textContent = `${status.hidden} more rows without a match are in the exports only.`;
  }
  if (!["queued", "running"].includes(status.state) && status.summary) {
    $("exports").hidden = false;
    $("export-csv").href = `/api/jobs/${status.id}/results.csv`;
    $("export-json").href = `/api/jobs/${status.id}/results.jsonl`;
  }
}

function rebuild() {
  const head = $("results").tHead.rows[0];
  head.replaceChildren(...["line", "kind", "value", "canonical", "verdict", ...current.peers].map((name) => {
    const th = document.createElement("th"); th.textContent = shown(name); return th;
  }));
  $("results").tBodies[0].replaceChildren(...current.rows.map(rowOf));
}

function cell(tr, text, className) {
  const td = document.createElement("td");
  td.textContent = shown(text);
  if (className) td.className = className;
  tr.append(td);
  return td;
}

function rowOf(doc) {
  const tr = document.createElement("tr");
  tr.dataset.line = doc.line;
  tr.dataset.verdict = doc.verdict;
  if (doc.verdict === "error") tr.className = "error";
  cell(tr, doc.line);
  cell(tr, doc.kind);
  cell(tr, doc.value, "value");
  cell(tr, doc.canonical, "canonical");
  cell(tr, doc.verdict, "verdict-" + doc.verdict);
  if (doc.verdict === "error") {
    const td = cell(tr, `line ${doc.line}: ${doc.error}`, "reason");
    td.colSpan = Math.max(1, current.peers.length);
    return tr;
  }
  const byPeer = Object.fromEntries(doc.peers.map((p) => [p.peer_id, p]));
  for (const peerId of current.peers) {
    const peer = byPeer[peerId];
    if (!peer) { cell(tr, ""); continue; }
    const td = document.createElement("td");
    td.className = peer.status;
    td.dataset.peer = peerId;
    if (peer.status === "match") {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = LABEL.match;
      button.addEventListener("click", () => openMatch(doc, peer));
      td.append(button);
    } else {
      td.textContent = LABEL[peer.status] || peer.status;
      if (peer.short) td.textContent += ": " + shown(peer.short);
      if (peer.detail) td.title = shown(peer.detail);
    }
    tr.append(td);
  }
  return tr;
}

// --- a match's metadata and its sighting ---------------------------------------------------------------

function openMatch(doc, peer) {
  const m = peer.metadata;
  $("metadata-title").textContent = `${shown(peer.peer_id)} holds ${shown(doc.kind)} ${shown(doc.canonical || doc.value)}`;
  const fields = [["peer", peer.peer_id], ["category", m.category], ["first seen", m.first_seen],
    ["last seen", m.last_seen], ["confidence", m.confidence], ["TLP", m.tlp], ["reports", m.reports],
    ["tier", m.tier], ["version", m.version], ["tag", m.tag]];
  $("metadata-fields").replaceChildren(...fields.flatMap(([name, value]) => {
    const dt = document.createElement("dt"); dt.textContent = name;
    const dd = document.createElement("dd"); dd.textContent = shown(value);
    dd.dataset.field = name;
    return [dt, dd];
  }));
  $("sighting-result").textContent = "";
  $("sighting").disabled = false;
  $("sighting").onclick = () => reportSighting(doc, peer);
  $("metadata").showModal();
}

async function reportSighting(doc, peer) {
  $("sighting").disabled = true;
  const m = peer.metadata;
  try {
    const answer = await api("/api/sighting", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({peer_id: peer.peer_id, kind: doc.kind, tier: m.tier, version: m.version, tag: m.tag})});
    $("sighting-result").textContent = answer.recorded ? "recorded" : "not recorded";
  } catch (error) {
    $("sighting-result").textContent = "not sent: " + error.message;
    $("sighting").disabled = false;
  }
}

// --- the auditor ---------------------------------------------------------------------------------------

async function fetchAudit() {
  showError("");
  $("audit-fetch").disabled = true;
  $("audit-status").textContent = "fetching and verifying…";
  try {
    const r = await api("/api/audit/fetch", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
    $("audit-status").textContent = `node ${shown(r.node_id)}: ${r.entries} entries (${r.new} new); ` +
      (r.verified ? "verified. " : "VERIFICATION FAILED. ") + shown(r.message);
    $("audit-status").dataset.verified = r.verified;
    const frame = $("audit-report");
    frame.src = "/audit/report?at=" + Date.now();
    frame.hidden = false;
  } catch (error) {
    $("audit-status").textContent = "";
    showError("the audit log was not fetched: " + error.message);
  } finally {
    $("audit-fetch").disabled = false;
  }
}

// --- start ---------------------------------------------------------------------------------------------

function fileChosen(file) {
  if (!file) return;
  submit(file, file.name, "file", $("file-kind").value, $("file-region").value.trim());
}

async function start() {
  try {
    session = await api("/api/session");
  } catch (error) {
    showError(error.message);
    $("who").textContent = "";
    return;
  }
  $("who").textContent = `${session.role} ${shown(session.identity)} · node ${shown(session.node)}`;
  document.body.dataset.role = session.role;
  if (session.role === "auditor") {
    $("auditor").hidden = false;
    $("audit-fetch").addEventListener("click", fetchAudit);
    return;
  }
  $("investigator").hidden = false;
  for (const select of [$("paste-kind"), $("file-kind")]) {
    for (const kind of session.kinds) select.append(new Option(kind, kind));
  }
  $("limit").textContent = `files up to ${megabytes(session.max_upload)}`;
  $("paste-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("paste").value;
    if (!text.trim()) { showError("nothing to check: paste one value a line"); return; }
    submit(new Blob([text], {type: "text/plain"}), "pasted values", "paste", $("paste-kind").value,
      $("paste-region").value.trim());
  });
  $("file").addEventListener("change", () => { fileChosen($("file").files[0]); $("file").value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    fileChosen(event.dataTransfer.files[0]);
  });
}

start();
