// The pccl run dashboard: polls /api/run once a second and redraws. No network access
// beyond this master; uPlot (vendored, MIT) draws the time series.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const short = (id) => (id || "").slice(0, 8);

function human(bytesPerS) {
  if (!bytesPerS) return "–";
  const units = ["B/s", "KB/s", "MB/s", "GB/s", "TB/s"];
  let v = bytesPerS, i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return v.toFixed(v < 10 ? 2 : 1) + " " + units[i];
}

// Red (slow) → yellow → green (fast), relative to the fastest value shown.
function speedColour(v, max) {
  if (!v || !max) return "#6e7681";
  const f = Math.max(0, Math.min(1, v / max));
  const hue = Math.round(f * 120);
  return `hsl(${hue}, 70%, 50%)`;
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function drawSummary(run) {
  const t = run.totals;
  const s = $("summary");
  s.textContent = "";
  const parts = [
    ["world size", run.world_size],
    ["ops ok", t.ops_ok], ["failed", t.ops_failed], ["retries", t.retries],
    ["recoveries", t.recoveries], ["evictions", t.evictions],
    ["uptime", Math.round(run.uptime_s) + " s"],
  ];
  for (const [k, v] of parts) {
    const span = el("span");
    span.append(k + " ", el("b", {}, String(v)));
    s.append(span);
  }
  s.setAttribute("data-world", run.world_size);
}

function drawRing(run) {
  const box = $("ring");
  box.textContent = "";
  const root = svg("svg", { viewBox: "0 0 400 320", "data-nodes": run.ring.length });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
    markerWidth: "6", markerHeight: "6", orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a97a6" }));
  defs.append(marker);
  root.append(defs);
  const n = run.ring.length;
  const pos = {};
  const cx = 200, cy = 160, r = n > 1 ? 115 : 0;
  run.ring.forEach((id, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
    pos[id] = [cx + r * Math.cos(a), cy + r * Math.sin(a)];
  });
  const max = Math.max(0, ...run.links.map((l) => l.busbw));
  for (const l of run.links) {
    const [x1, y1] = pos[l.from] || [cx, cy];
    const [x2, y2] = pos[l.to] || [cx, cy];
    const d = Math.hypot(x2 - x1, y2 - y1) || 1;
    const ux = (x2 - x1) / d, uy = (y2 - y1) / d;
    const line = svg("line", {
      class: "link", x1: x1 + ux * 20, y1: y1 + uy * 20, x2: x2 - ux * 22, y2: y2 - uy * 22,
      stroke: speedColour(l.busbw, max), "stroke-width": 4, "marker-end": "url(#arrow)",
      "data-from": l.from, "data-to": l.to,
    });
    const title = svg("title");
    title.textContent = `${short(l.from)} → ${short(l.to)}: ${human(l.busbw)}`;
    line.append(title);
    root.append(line);
  }
  for (const id of run.ring) {
    const [x, y] = pos[id];
    root.append(svg("circle", { class: "node", cx: x, cy: y, r: 18, fill: "#1f6feb",
      stroke: "#dde3ea", "data-peer": id }));
    // The label sits outside the ring, away from the links.
    const dx = x - cx, dy = y - cy, d = Math.hypot(dx, dy) || 1;
    const lx = n > 1 ? x + (dx / d) * 34 : x, ly = n > 1 ? y + (dy / d) * 34 + 4 : y + 34;
    const label = svg("text", { x: lx, y: ly, "text-anchor": "middle" });
    label.textContent = short(id);
    root.append(label);
  }
  if (n === 0) {
    const t = svg("text", { x: cx, y: cy, "text-anchor": "middle" });
    t.textContent = "no peers in the ring";
    root.append(t);
  }
  box.append(root);
}

function drawPeers(run) {
  const body = $("peers");
  body.textContent = "";
  for (const p of run.peers) {
    const tr = el("tr", { "data-peer": p.id, "data-state": p.state });
    tr.append(
      el("td", { title: p.id }, short(p.id)),
      el("td", {}, p.address || "–"),
      el("td", {}, String(p.group)),
      el("td", { class: "state-" + p.state }, p.state),
      el("td", {}, p.last_heartbeat_s.toFixed(1) + " s ago"),
      el("td", {}, human(p.busbw)),
      el("td", {}, `${p.reduces_ok} / ${p.reduces_failed}`),
      el("td", {}, String(p.retries)),
    );
    body.append(tr);
  }
}

function drawEvents(run) {
  const body = $("events");
  body.textContent = "";
  const start = run.started_unix_ms;
  for (const e of run.events.slice().reverse()) {
    const when = new Date(start + e.t * 1000).toLocaleTimeString();
    const tr = el("tr", { class: "ev-" + e.kind, "data-kind": e.kind });
    tr.append(el("td", {}, when), el("td", {}, e.kind), el("td", {}, short(e.peer) || "–"),
      el("td", { class: "detail" }, e.detail));
    body.append(tr);
  }
}

function drawHeatmap(run) {
  const box = $("heatmap");
  // The links of a peer that left go with it: with none left, say so again rather than
  // keep showing the old matrix.
  if (!run.bandwidth.length) {
    if (box.querySelector("table")) {
      box.textContent = "";
      box.append(el("p", { class: "muted" }, "no links measured yet (optimize_topology measures them)"));
    }
    return;
  }
  const ids = [...new Set(run.bandwidth.flatMap((b) => [b.from, b.to]))].sort();
  const max = Math.max(...run.bandwidth.map((b) => b.bytes_per_s));
  const get = {};
  for (const b of run.bandwidth) get[b.from + b.to] = b.bytes_per_s;
  const table = el("table", { "data-links": run.bandwidth.length });
  const head = el("tr");
  head.append(el("th", {}, "from \\ to"));
  for (const id of ids) head.append(el("th", {}, short(id)));
  table.append(head);
  for (const a of ids) {
    const tr = el("tr");
    tr.append(el("th", {}, short(a)));
    for (const b of ids) {
      const v = get[a + b];
      const td = el("td", { class: "cell" }, v === undefined ? "" : human(v));
      if (v !== undefined) td.style.background = speedColour(v, max);
      tr.append(td);
    }
    table.append(tr);
  }
  box.textContent = "";
  box.append(table);
}

// Time series, one uPlot each; created on first data, updated in place afterwards.
const charts = {};
function series(id, label, colour, pick, fmt) {
  return { id, label, colour, pick, fmt };
}
const SERIES = [
  series("world-chart", "peers", "#1f6feb", (s) => s.world, (v) => v),
  series("busbw-chart", "bus bandwidth", "#57ab5a", (s) => s.busbw, human),
];

function drawCharts(run) {
  const start = run.started_unix_ms / 1000;
  const xs = run.history.map((s) => start + s.t);
  for (const s of SERIES) {
    const ys = run.history.map(s.pick);
    const box = $(s.id);
    box.setAttribute("data-points", ys.filter((v) => v > 0).length);
    const data = [xs, ys];
    if (!charts[s.id]) {
      const width = Math.max(300, box.clientWidth || 440);
      charts[s.id] = new uPlot({
        width, height: 200,
        series: [{}, { label: s.label, stroke: s.colour, width: 2, value: (u, v) => v == null ? "–" : s.fmt(v) }],
        axes: [{ stroke: "#8a97a6" }, { stroke: "#8a97a6", size: 90, values: (u, vals) => vals.map(s.fmt) }],
        scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      }, data, box);
    } else {
      charts[s.id].setData(data);
    }
  }
}

async function tick() {
  try {
    const r = await fetch("api/run", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const run = await r.json();
    drawSummary(run);
    drawRing(run);
    drawPeers(run);
    drawCharts(run);
    drawEvents(run);
    drawHeatmap(run);
    $("status").textContent = "live · updated " + new Date().toLocaleTimeString();
    $("status").className = "status";
    document.body.setAttribute("data-updated", String(Date.now()));
  } catch (e) {
    $("status").textContent = "master unreachable: " + e.message;
    $("status").className = "status down";
  }
}

tick();
setInterval(tick, 1000);
