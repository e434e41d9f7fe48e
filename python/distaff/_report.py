"""The self-contained HTML report of a recorded run: a zoomable timeline (one row per worker, a
slice per interval an execution ran; rows per executor and event loop, a slice per interval a body
spent there), the DAG (parent and dependency edges), a per-workflow summary
and the failures with their tracebacks. Everything — data, CSS, JavaScript — is inline: the file
opens from disk, offline, in any current browser. ``window.distaffReport`` tells what was drawn
(the browser test in tests/python/test_report_browser.py reads it)."""

from __future__ import annotations

import json

from . import _trace

DAG_LIMIT = 300  # nodes drawn in the graph; a bigger run shows its first ones and says so


def _data(events: list, end: int | None = None) -> dict:
    exs, t0 = _trace.executions(events, end)
    tracks, track_of = _trace.remote_tracks(exs)
    rows = []
    for x in exs:
        rows.append({
            "id": x["id"], "name": x["name"], "kind": x["kind"], "wf": x["workflow_id"], "parent": x["parent_id"],
            "deps": x["dependencies"], "state": x["state"], "attempts": x["attempts"], "error": x["error"],
            "tb": x["traceback"],
            "sub": None if x["submitted"] is None else x["submitted"] - t0,
            "start": None if x["started"] is None else x["started"] - t0,
            "fin": None if x["finished"] is None else x["finished"] - t0,
            "sl": [[-1 if w is None else w, a - t0, b - t0] for (w, a, b) in x["slices"]],
        })
        if x["remote"]:  # elsewhere: [track, shipped, returned, attempt, outcome of that attempt or None]
            rows[-1]["rm"] = [[track_of[(x["id"], i)], a - t0, b - t0, att, outcome]
                              for i, (_where, a, b, att, outcome) in enumerate(x["remote"])]
    first = min((e["timestamp"] for e in events if e.get("timestamp")), default=None)
    end = _trace.recording_end(events, end)
    return {"executions": rows, "tracks": tracks, "started": first, "dagLimit": DAG_LIMIT,
            "end": None if end is None or not rows else max(end - t0, 0)}


def render(events: list, title: str = "distaff run report", end: int | None = None) -> str:
    data = json.dumps(_data(events, end), ensure_ascii=True, separators=(",", ":"), default=str)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _TEMPLATE.replace("@@TITLE@@", _escape(title)).replace("@@DATA@@", data)


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@TITLE@@</title>
<style>
:root { --ok: #2e9d57; --failed: #d64541; --cancelled: #9aa0a6; --running: #3b7dd8; --pending: #e0a800; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328; background: #fafbfc; }
header { padding: 16px 24px; background: #24292f; color: #fff; }
header h1 { margin: 0 0 4px; font-size: 20px; }
#summary span { margin-right: 16px; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; }
.succeeded { background: var(--ok); } .failed { background: var(--failed); } .cancelled { background: var(--cancelled); }
.running { background: var(--running); } .pending, .waiting { background: var(--pending); }
section { margin: 16px 24px; background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 12px 16px; }
h2 { font-size: 16px; margin: 0 0 8px; }
.controls { margin-bottom: 6px; } .controls button { margin-right: 4px; } .hint { color: #57606a; font-size: 12px; margin-left: 8px; }
#timeline-wrap { position: relative; }
#timeline { width: 100%; display: block; cursor: grab; border: 1px solid #eaeef2; }
#tooltip { position: absolute; pointer-events: none; background: rgba(36,41,47,.95); color: #fff; padding: 6px 8px;
  border-radius: 4px; font-size: 12px; display: none; white-space: pre; z-index: 2; }
#dag { overflow: auto; max-height: 640px; border: 1px solid #eaeef2; }
#dag text { font-size: 11px; fill: #1f2328; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eaeef2; vertical-align: top; }
th { background: #f6f8fa; }
pre { margin: 4px 0 0; white-space: pre-wrap; font-size: 12px; background: #f6f8fa; padding: 6px; border-radius: 4px; }
.empty { color: #57606a; }
</style>
</head>
<body>
<header><h1>@@TITLE@@</h1><div id="summary"></div></header>
<section id="timeline-section"><h2>Timeline</h2>
<div class="controls"><button id="zoom-in" title="zoom in">+</button><button id="zoom-out" title="zoom out">&minus;</button><button id="zoom-reset">reset</button>
<span id="range" class="hint"></span><span class="hint">wheel: zoom at the pointer &middot; drag: pan &middot; hover: details</span></div>
<div id="timeline-wrap"><canvas id="timeline" height="120"></canvas><div id="tooltip"></div></div>
</section>
<section id="dag-section"><h2>Graph</h2><div class="hint" id="dag-note"></div><div id="dag"></div></section>
<section id="workflows-section"><h2>Workflows</h2>
<table id="workflows"><thead><tr><th>workflow</th><th>executions</th><th>succeeded</th><th>failed</th><th>cancelled</th><th>other</th><th>duration</th></tr></thead><tbody></tbody></table></section>
<section id="failures-section"><h2>Failures</h2>
<table id="failures"><thead><tr><th>id</th><th>name</th><th>workflow</th><th>error</th><th>attempts</th><th>traceback</th></tr></thead><tbody></tbody></table></section>
<script id="distaff-data" type="application/json">@@DATA@@</script>
<script>
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("distaff-data").textContent);
  const EXS = DATA.executions;
  const byId = new Map(EXS.map(x => [x.id, x]));
  const COLORS = { succeeded: "#2e9d57", failed: "#d64541", cancelled: "#9aa0a6", running: "#3b7dd8", pending: "#e0a800", waiting: "#e0a800" };
  const report = { executions: EXS.length, slices: 0, drawn: 0, failures: 0, workflows: 0, dagNodes: 0, ready: false };
  window.distaffReport = report;

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(ns) {
    if (ns === null || ns === undefined) return "\u2014";
    const a = Math.abs(ns);
    if (a >= 1e9) return (ns / 1e9).toFixed(3) + " s";
    if (a >= 1e6) return (ns / 1e6).toFixed(3) + " ms";
    if (a >= 1e3) return (ns / 1e3).toFixed(1) + " \u00b5s";
    return ns.toFixed(0) + " ns";
  }
  function label(x) { return (x.name || "execution") + " #" + x.id; }

  // ---- summary ----
  const counts = {};
  let tEnd = 0;
  for (const x of EXS) {
    counts[x.state] = (counts[x.state] || 0) + 1;
    for (const s of x.sl) tEnd = Math.max(tEnd, s[2]);
    for (const s of (x.rm || [])) tEnd = Math.max(tEnd, s[2]);
    if (x.fin !== null) tEnd = Math.max(tEnd, x.fin);
  }
  if (DATA.end !== null && DATA.end !== undefined) tEnd = Math.max(tEnd, DATA.end);
  const summary = document.getElementById("summary");
  summary.appendChild(el("span", null, EXS.length + " executions"));
  for (const st of ["succeeded", "failed", "cancelled", "running", "pending", "waiting"]) {
    if (counts[st]) { const s = el("span"); s.appendChild(el("span", { class: "pill " + st }, counts[st] + " " + st)); summary.appendChild(s); }
  }
  summary.appendChild(el("span", null, "span " + fmt(tEnd)));
  if (DATA.started) summary.appendChild(el("span", null, "from " + DATA.started));

  // ---- timeline ----
  // Rows: -1 other threads, 0.. workers, REMOTE + i the executors' and event loops' tracks
  // (DATA.tracks[i]), after the workers.
  const REMOTE = 1e6, TRACKS = DATA.tracks || [];
  const rowsMap = new Map();  // row -> slices [a, b, x, elsewhere: [attempt, outcome, track name] or undefined]
  for (const x of EXS) for (const s of x.sl) {
    if (!rowsMap.has(s[0])) rowsMap.set(s[0], []);
    rowsMap.get(s[0]).push([s[1], s[2], x]);
    report.slices++;
  }
  report.remoteSlices = 0;
  for (const x of EXS) for (const s of (x.rm || [])) {
    const k = REMOTE + s[0];
    if (!rowsMap.has(k)) rowsMap.set(k, []);
    rowsMap.get(k).push([s[1], s[2], x, [s[3], s[4], TRACKS[s[0]]]]);
    report.remoteSlices++;
  }
  function rowName(k) { return k < 0 ? "other threads" : k >= REMOTE ? TRACKS[k - REMOTE] : "worker " + k; }
  const never = EXS.filter(x => x.sl.length === 0 && x.fin !== null);
  if (never.length) { if (!rowsMap.has(-1)) rowsMap.set(-1, []); }
  const rowKeys = Array.from(rowsMap.keys()).sort((a, b) => a - b);
  for (const k of rowKeys) rowsMap.get(k).sort((p, q) => p[0] - q[0]);
  const canvas = document.getElementById("timeline");
  const ctx = canvas.getContext("2d");
  const ROW = 28, TOP = 22;
  ctx.font = "11px system-ui, sans-serif";
  const LEFT = Math.min(260, Math.max(90, ...rowKeys.map(k => ctx.measureText(rowName(k)).width + 14)));
  const span = Math.max(tEnd, 1);
  let v0 = 0, v1 = span * 1.02;
  report.rows = rowKeys.map(rowName);
  report.rowSlices = rowKeys.map(k => rowsMap.get(k).length);

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 800;
    const h = TOP + Math.max(rowKeys.length, 1) * ROW + 6;
    canvas.style.height = h + "px";
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    draw();
  }
  function xOf(t) { return LEFT + (t - v0) / (v1 - v0) * ((canvas.clientWidth || 800) - LEFT); }
  function tOf(px) { return v0 + (px - LEFT) / ((canvas.clientWidth || 800) - LEFT) * (v1 - v0); }
  function draw() {
    const W = canvas.clientWidth || 800, H = TOP + Math.max(rowKeys.length, 1) * ROW + 6;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    ctx.fillStyle = "#57606a"; ctx.font = "11px system-ui, sans-serif"; ctx.strokeStyle = "#eaeef2";
    if (!rowKeys.length) {  // nothing ran in the recording: say so rather than draw an empty axis
      report.note = "nothing recorded: no execution ran on this engine inside the trace's block";
      ctx.fillText(report.note, 6, TOP + ROW / 2);
      return;
    }
    // axis
    const ticks = 8;
    for (let i = 0; i <= ticks; i++) {
      const t = v0 + (v1 - v0) * i / ticks, x = xOf(t);
      ctx.beginPath(); ctx.moveTo(x, TOP - 4); ctx.lineTo(x, H); ctx.stroke();
      ctx.fillText(fmt(t), Math.min(x + 2, W - 60), 12);
    }
    let drawn = 0;
    rowKeys.forEach((k, r) => {
      const y = TOP + r * ROW;
      ctx.fillStyle = r % 2 ? "#f6f8fa" : "#fff"; ctx.fillRect(LEFT, y, W - LEFT, ROW);
      ctx.fillStyle = "#1f2328"; ctx.fillText(rowName(k), 6, y + ROW / 2 + 4);
      for (const [a, b, x, away] of rowsMap.get(k)) {
        if (b < v0 || a > v1) continue;
        const xa = Math.max(xOf(a), LEFT), xb = Math.min(xOf(b), W);
        const w = Math.max(xb - xa, 1);
        // elsewhere: coloured by that attempt's outcome (a failed attempt that was retried is red);
        // not back when the recording stopped: running
        ctx.fillStyle = (away ? COLORS[away[1] || "running"] : COLORS[x.state]) || "#3b7dd8";
        ctx.fillRect(xa, y + 4, w, ROW - 8);
        drawn++;
        if (w > 40) {
          ctx.save(); ctx.beginPath(); ctx.rect(xa, y, w, ROW); ctx.clip();
          ctx.fillStyle = "#fff"; ctx.fillText(label(x), xa + 3, y + ROW / 2 + 4); ctx.restore();
        }
      }
      if (k < 0) for (const x of never) {
        if (x.fin < v0 || x.fin > v1) continue;
        const xf = xOf(x.fin);
        ctx.fillStyle = COLORS[x.state] || "#9aa0a6";
        ctx.beginPath(); ctx.moveTo(xf, y + 5); ctx.lineTo(xf + 5, y + ROW / 2); ctx.lineTo(xf, y + ROW - 5); ctx.lineTo(xf - 5, y + ROW / 2); ctx.fill();
        drawn++;
      }
    });
    report.drawn = drawn;
    report.view = [v0, v1];
    document.getElementById("range").textContent = fmt(v0) + " \u2013 " + fmt(v1);
  }
  function zoom(f, center) {
    const c = center === undefined ? (v0 + v1) / 2 : center;
    const n0 = c - (c - v0) * f, n1 = c + (v1 - c) * f;
    if (n1 - n0 < 100) return;  // 100 ns is as close as it gets
    v0 = n0; v1 = n1; draw();
  }
  document.getElementById("zoom-in").addEventListener("click", () => zoom(0.5));
  document.getElementById("zoom-out").addEventListener("click", () => zoom(2));
  document.getElementById("zoom-reset").addEventListener("click", () => { v0 = 0; v1 = span * 1.02; draw(); });
  report.setView = (a, b) => { if (b > a) { v0 = a; v1 = b; draw(); } };  // ns since the first event
  canvas.addEventListener("wheel", ev => {
    ev.preventDefault();
    const r = canvas.getBoundingClientRect();
    zoom(ev.deltaY < 0 ? 0.8 : 1.25, tOf(ev.clientX - r.left));
  }, { passive: false });
  let dragging = null;
  canvas.addEventListener("mousedown", ev => { dragging = { x: ev.clientX, v0, v1 }; canvas.style.cursor = "grabbing"; });
  window.addEventListener("mouseup", () => { dragging = null; canvas.style.cursor = "grab"; });
  const tip = document.getElementById("tooltip");
  function hit(px, py) {
    const r = Math.floor((py - TOP) / ROW);
    if (r < 0 || r >= rowKeys.length || px < LEFT) return null;
    const t = tOf(px), slop = (v1 - v0) / ((canvas.clientWidth || 800) - LEFT) * 2;
    const row = rowsMap.get(rowKeys[r]);
    let lo = 0, hi = row.length - 1, best = null;
    while (lo <= hi) {  // last slice starting before t + slop
      const mid = (lo + hi) >> 1;
      if (row[mid][0] <= t + slop) { best = mid; lo = mid + 1; } else hi = mid - 1;
    }
    for (let i = best; i !== null && i >= 0 && i > best - 50; i--) if (row[i][1] >= t - slop) return row[i];
    return null;
  }
  canvas.addEventListener("mousemove", ev => {
    const r = canvas.getBoundingClientRect(), px = ev.clientX - r.left, py = ev.clientY - r.top;
    if (dragging) {
      const dt = (dragging.x - ev.clientX) / ((canvas.clientWidth || 800) - LEFT) * (dragging.v1 - dragging.v0);
      v0 = dragging.v0 + dt; v1 = dragging.v1 + dt; draw(); return;
    }
    const h = hit(px, py);
    if (!h) { tip.style.display = "none"; return; }
    const x = h[2];
    const away = h[3];
    tip.textContent = label(x) + "  [" + (x.kind || "?") + ", " + x.state + "]\n" +
      (away ? "on " + away[2] + " (attempt " + away[0] + ": " + (away[1] || "not back") + ") " : "ran ") +
      fmt(h[1] - h[0]) + " from " + fmt(h[0]) +
      (x.wf ? "\nworkflow " + x.wf : "") + (x.parent ? "\nparent #" + x.parent : "") +
      (x.error ? "\n" + x.error : "");
    tip.style.display = "block";
    tip.style.left = Math.min(px + 12, (canvas.clientWidth || 800) - 260) + "px";
    tip.style.top = (py + 12) + "px";
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  window.addEventListener("resize", resize);
  resize();

  // ---- DAG ----
  const NS = "http://www.w3.org/2000/svg";
  const shown = EXS.slice(0, DATA.dagLimit);
  const shownIds = new Set(shown.map(x => x.id));
  const depth = new Map();
  for (const x of shown) {  // parents and dependencies always have smaller ids: one pass in id order
    let d = 0;
    if (shownIds.has(x.parent)) d = Math.max(d, depth.get(x.parent) + 1);
    for (const p of x.deps) if (shownIds.has(p)) d = Math.max(d, depth.get(p) + 1);
    depth.set(x.id, d);
  }
  const cols = [];
  for (const x of shown) { const d = depth.get(x.id); (cols[d] = cols[d] || []).push(x); }
  const NW = 150, NH = 26, GX = 60, GY = 10;
  const pos = new Map();
  cols.forEach((col, c) => col.forEach((x, r) => pos.set(x.id, [10 + c * (NW + GX), 10 + r * (NH + GY)])));
  const svgW = 20 + cols.length * (NW + GX), svgH = 20 + Math.max(0, ...cols.map(c => c.length)) * (NH + GY);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", svgW); svg.setAttribute("height", svgH); svg.setAttribute("id", "dag-svg");
  const defs = document.createElementNS(NS, "defs");
  defs.innerHTML = '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#57606a"/></marker>';
  svg.appendChild(defs);
  // The same styles as to_dot()/to_mermaid(): parent edges grey and dashed, dependency edges dark blue and solid.
  function edge(from, to, dependency) {
    const a = pos.get(from), b = pos.get(to);
    if (!a || !b) return;
    const l = document.createElementNS(NS, "path");
    const x1 = a[0] + NW, y1 = a[1] + NH / 2, x2 = b[0], y2 = b[1] + NH / 2, mx = (x1 + x2) / 2;
    l.setAttribute("d", "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + y2 + " " + x2 + "," + y2);
    l.setAttribute("fill", "none"); l.setAttribute("stroke", dependency ? "#1f3b73" : "#8a8a8a");
    if (dependency) l.setAttribute("stroke-width", 1.4); else l.setAttribute("stroke-dasharray", "4 3");
    l.setAttribute("marker-end", "url(#arrow)"); l.setAttribute("class", dependency ? "edge-dependency" : "edge-parent");
    svg.appendChild(l);
  }
  for (const x of shown) { if (x.parent) edge(x.parent, x.id, false); for (const d of x.deps) edge(d, x.id, true); }
  for (const x of shown) {
    const [px, py] = pos.get(x.id);
    const g = document.createElementNS(NS, "g");
    g.setAttribute("class", "node"); g.setAttribute("data-id", x.id);
    const rect = document.createElementNS(NS, "rect");
    rect.setAttribute("x", px); rect.setAttribute("y", py); rect.setAttribute("width", NW); rect.setAttribute("height", NH);
    rect.setAttribute("rx", 4); rect.setAttribute("fill", "#fff"); rect.setAttribute("stroke", COLORS[x.state] || "#57606a");
    rect.setAttribute("stroke-width", 2);
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", px + 6); t.setAttribute("y", py + 17);
    const name = label(x);
    t.textContent = name.length > 22 ? name.slice(0, 21) + "\u2026" : name;
    const title = document.createElementNS(NS, "title");
    title.textContent = name + " (" + x.state + ")" + (x.wf ? " workflow " + x.wf : "") + (x.error ? "\n" + x.error : "");
    g.appendChild(title); g.appendChild(rect); g.appendChild(t); svg.appendChild(g);
  }
  document.getElementById("dag").appendChild(svg);
  report.dagNodes = shown.length;
  document.getElementById("dag-note").textContent = (EXS.length > shown.length ?
    "showing the first " + shown.length + " of " + EXS.length + " executions; " : "") +
    "dashed grey: parent \u2192 child, solid blue: dependency \u2192 dependent, border: state";

  // ---- workflows ----
  const wfs = new Map();
  for (const x of EXS) {
    const k = x.wf === null || x.wf === undefined ? "" : x.wf;
    if (!wfs.has(k)) wfs.set(k, { n: 0, succeeded: 0, failed: 0, cancelled: 0, other: 0, t0: Infinity, t1: -Infinity });
    const w = wfs.get(k);
    w.n++;
    if (x.state in { succeeded: 1, failed: 1, cancelled: 1 }) w[x.state]++; else w.other++;
    const a = x.sub !== null ? x.sub : (x.start !== null ? x.start : x.fin);
    if (a !== null) w.t0 = Math.min(w.t0, a);
    if (x.fin !== null) w.t1 = Math.max(w.t1, x.fin);
  }
  const wbody = document.querySelector("#workflows tbody");
  for (const [k, w] of Array.from(wfs.entries()).sort()) {
    const tr = el("tr", { "data-workflow": k });
    tr.appendChild(el("td", null, k === "" ? "(no workflow)" : k));
    for (const v of [w.n, w.succeeded, w.failed, w.cancelled, w.other]) tr.appendChild(el("td", null, v));
    tr.appendChild(el("td", null, w.t1 >= w.t0 ? fmt(w.t1 - w.t0) : "\u2014"));
    wbody.appendChild(tr);
  }
  report.workflows = wfs.size;

  // ---- failures ----
  const fbody = document.querySelector("#failures tbody");
  const failed = EXS.filter(x => x.state === "failed");
  for (const x of failed.slice(0, 2000)) {
    const tr = el("tr", { "data-id": x.id });
    tr.appendChild(el("td", null, x.id));
    tr.appendChild(el("td", null, x.name || ""));
    tr.appendChild(el("td", null, x.wf || ""));
    tr.appendChild(el("td", { class: "error" }, x.error || "(no exception recorded)"));
    tr.appendChild(el("td", null, x.attempts === null ? "" : x.attempts));
    const td = el("td");
    if (x.tb) { const d = el("details"); d.appendChild(el("summary", null, "traceback")); d.appendChild(el("pre", null, x.tb)); td.appendChild(d); }
    tr.appendChild(td);
    fbody.appendChild(tr);
  }
  if (!failed.length) { const tr = el("tr"); tr.appendChild(el("td", { colspan: 6, class: "empty" }, "no failures")); fbody.appendChild(tr); }
  report.failures = failed.length;
  report.ready = true;
})();
</script>
</body>
</html>
"""
