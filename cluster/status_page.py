"""The status page for people: every shard as a coloured cell, refreshed from /status."""

from __future__ import annotations

from typing import Final

STATUS_PAGE_HTML: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Titanium Cluster</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#101418;color:#e6e6e6}
 header{padding:14px 20px;background:#182029;display:flex;gap:28px;align-items:baseline;flex-wrap:wrap}
 h1{font-size:18px;margin:0}
 .stat b{font-size:18px}
 main{padding:16px 20px}
 #grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(86px,1fr));gap:6px}
 .cell{border-radius:6px;padding:6px 7px;font-size:12px;color:#0b0f13;min-height:52px}
 .cell .id{font-weight:700;font-size:13px}
 .ready{background:#3fb950}.resuming,.identifying,.awaiting_hello{background:#d29922}
 .awaiting_permit{background:#a371f7}.connecting{background:#58a6ff}
 .disconnected,.stopped{background:#6e7681}.fatal{background:#f85149}
 #legend span{display:inline-block;margin-right:12px}
 #legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
 table{border-collapse:collapse;margin-top:18px}td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #2a323c}
 #problems{color:#f85149;margin-top:8px}
</style></head>
<body>
<header><h1>Titanium Cluster</h1>
 <div class="stat">shards ready <b id="ready">-</b> / <b id="total">-</b></div>
 <div class="stat">events/s <b id="rate">-</b></div>
 <div class="stat">session starts left <b id="budget">-</b></div>
 <div class="stat">uptime <b id="uptime">-</b></div>
</header>
<main>
 <div id="legend"></div>
 <div id="problems"></div>
 <div id="grid" aria-label="shards"></div>
 <table><thead><tr><th>worker</th><th>pid</th><th>shards</th><th>state</th><th>restarts</th></tr></thead>
 <tbody id="workers"></tbody></table>
</main>
<script>
const STATES=["ready","connecting","awaiting_hello","awaiting_permit","identifying","resuming","disconnected","stopped","fatal"];
document.getElementById("legend").innerHTML=STATES.map(s=>`<span><i class="${s}"></i>${s}</span>`).join("");
let last=null;
function fmtRange(ids){if(!ids.length)return"";return ids[0]===ids[ids.length-1]?`${ids[0]}`:`${ids[0]}-${ids[ids.length-1]}`;}
async function refresh(){
 try{
  const [st,hl]=await Promise.all([fetch("status").then(r=>r.json()),fetch("health").then(r=>r.json())]);
  const now=performance.now()/1000;
  const prev=last?new Map(last.st.shards.map(s=>[s.shard_id,s.events])):new Map();
  const dt=last?Math.max(now-last.t,0.001):0;
  let total=0;
  document.getElementById("grid").innerHTML=st.shards.map(s=>{
   const r=last&&prev.has(s.shard_id)?Math.max(0,(s.events-prev.get(s.shard_id))/dt):0; total+=r;
   const lat=s.latency_ms==null?"-":`${s.latency_ms.toFixed(0)} ms`;
   return `<div class="cell ${s.state}" data-shard="${s.shard_id}" title="shard ${s.shard_id} (worker ${s.worker_id}): ${s.state}, seq ${s.seq}, ${s.identifies} identifies, ${s.resumes} resumes">`+
    `<div class="id">#${s.shard_id}</div><div>${lat}</div><div>${r.toFixed(0)}/s</div></div>`;}).join("");
  document.getElementById("ready").textContent=st.shards_ready;
  document.getElementById("total").textContent=st.shards.length;
  document.getElementById("rate").textContent=last?total.toFixed(0):"-";
  document.getElementById("budget").textContent=st.identify?st.identify.remaining:"-";
  document.getElementById("uptime").textContent=`${Math.round(st.uptime_s)} s`;
  document.getElementById("workers").innerHTML=st.workers.map(w=>
   `<tr><td>${w.worker_id}</td><td>${w.pid??"-"}</td><td>${fmtRange(w.shard_ids)}</td><td>${w.state}</td><td>${w.restarts}</td></tr>`).join("");
  document.getElementById("problems").textContent=(hl.problems||[]).join(" | ");
  last={st,t:now};
 }catch(e){document.getElementById("problems").textContent="cluster unreachable: "+e;}
}
refresh();setInterval(refresh,1000);
</script></body></html>
"""
