"""The status page for people: every shard as a coloured cell, refreshed from /status.

One self-contained HTML document (no external assets: it works on an
air-gapped host). The script polls ``status`` and ``health`` (relative URLs,
so the page also works behind a path prefix) every second and redraws:

- the header: health, shards ready / total, events per second, session
  starts left, uptime;
- ``#reshard`` (while ``/status`` has a ``reshard`` section): the reshard
  running, or the last one, old -> new shard count, phase, new shards ready /
  total (a bar), guilds complete, elapsed, the time left by the identify
  schedule (``eta_s``), duplicates dropped at the switch, and an abandoned
  reshard's reason; drawn by ``reshardHtml``, a pure function of that section;
- a legend that counts the shards in each state;
- ``#grid``: one ``.cell`` per shard whose second class is its state
  (``ready``, ``resuming``, ``fatal``, ...), with latency and event rate; past
  256 shards the cells shrink to the shard number (details in the tooltip);
- the worker table;
- with ``--redis``, ``#hosts``: this supervisor's role and lease, and every
  shard range of the bot with the supervisor holding its lease (the cluster as
  Redis sees it, so any host's page shows all of them).
"""

from __future__ import annotations

from typing import Final

STATUS_PAGE_HTML: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Titanium Cluster</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 :root{--bg:#0d1117;--panel:#161b22;--line:#30363d;--text:#e6edf3;--muted:#8b949e}
 *{box-sizing:border-box}
 body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:var(--bg);color:var(--text)}
 header{padding:14px 24px;background:var(--panel);border-bottom:1px solid var(--line);
  display:flex;gap:30px;align-items:center;flex-wrap:wrap}
 h1{font-size:18px;margin:0;font-weight:650;letter-spacing:.2px}
 .stat{color:var(--muted)}.stat b{color:var(--text);font-size:18px;font-variant-numeric:tabular-nums}
 #health{padding:3px 10px;border-radius:999px;font-weight:600;font-size:13px;background:var(--line)}
 #health.ok{background:#238636;color:#fff}#health.degraded{background:#9e6a03;color:#fff}
 #health.down{background:#da3633;color:#fff}
 main{padding:16px 24px 28px}
 #legend{display:flex;flex-wrap:wrap;gap:6px 16px;color:var(--muted);margin-bottom:12px}
 #legend span{white-space:nowrap}#legend b{color:var(--text);font-weight:600}
 #legend i{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:5px;vertical-align:-1px}
 #reshard{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:10px 14px;
  margin-bottom:12px}
 #reshard .phase{padding:1px 8px;border-radius:999px;font-size:12px;font-weight:600;margin-left:6px;
  background:var(--line)}
 #reshard .phase.starting{background:#1f6feb;color:#fff}#reshard .phase.switched{background:#238636;color:#fff}
 #reshard .phase.abandoned{background:#da3633;color:#fff}
 #reshard .bar{height:6px;background:var(--line);border-radius:3px;overflow:hidden;margin:8px 0}
 #reshard .bar i{display:block;height:100%;background:#58a6ff}
 #reshard .items{display:flex;flex-wrap:wrap;gap:4px 18px;color:var(--muted)}
 #reshard .items b{color:var(--text);font-variant-numeric:tabular-nums}
 #reshard .why{color:#ffa198;margin-top:6px}
 #problems:not(:empty){color:#ffa198;background:#3d1214;border:1px solid #8e1519;border-radius:6px;
  padding:8px 12px;margin-bottom:12px}
 #grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(88px,1fr));gap:6px}
 #grid.compact{grid-template-columns:repeat(auto-fill,minmax(38px,1fr));gap:3px}
 .cell{border-radius:6px;padding:6px 8px;font-size:12px;line-height:1.35;min-height:56px;
  background:#30363d;color:var(--text);font-variant-numeric:tabular-nums}
 .cell .id{font-weight:700;font-size:13px}.cell .sub{opacity:.8}
 #grid.compact .cell{min-height:0;padding:3px 0;text-align:center;border-radius:3px;font-size:10px}
 #grid.compact .cell .id{font-size:10px;font-weight:600}
 .ready{background:#3fb950;color:#04260f}
 .connecting{background:#58a6ff;color:#051d4d}
 .awaiting_hello{background:#79c0ff;color:#051d4d}
 .awaiting_permit{background:#a371f7;color:#21074a}
 .identifying{background:#e3b341;color:#3b2300}
 .resuming{background:#db6d28;color:#2e1200}
 .disconnected{background:#6e7681;color:#0d1117}
 .stopped{background:#484f58;color:var(--text)}
 .fatal{background:#f85149;color:#2d0002}
 h2{font-size:14px;color:var(--muted);font-weight:600;margin:22px 0 6px}
 table{border-collapse:collapse;font-variant-numeric:tabular-nums}
 td,th{padding:4px 14px 4px 0;text-align:left;border-bottom:1px solid var(--line)}
 th{color:var(--muted);font-weight:600}
 footer{color:var(--muted);font-size:12px;margin-top:18px}
</style></head>
<body>
<header><h1>Titanium Cluster</h1>
 <span id="health">…</span>
 <div class="stat">shards ready <b id="ready">-</b> / <b id="total">-</b></div>
 <div class="stat">events/s <b id="rate">-</b></div>
 <div class="stat">session starts left <b id="budget">-</b></div>
 <div class="stat">uptime <b id="uptime">-</b></div>
 <div class="stat">role <b id="role">-</b></div>
</header>
<main>
 <div id="problems"></div>
 <div id="reshard" hidden></div>
 <div id="legend"></div>
 <div id="grid" aria-label="shards"></div>
 <div id="hosts-panel" hidden>
 <h2>Hosts (shard ranges and their lease holders, from Redis)</h2>
 <table><thead><tr><th>range</th><th>holder</th><th>fencing token</th><th>lease expires in</th></tr></thead>
 <tbody id="hosts"></tbody></table>
 </div>
 <h2>Workers</h2>
 <table><thead><tr><th>worker</th><th>pid</th><th>shards</th><th>state</th><th>restarts</th></tr></thead>
 <tbody id="workers"></tbody></table>
 <footer id="updated"></footer>
</main>
<script>
const STATES=["ready","connecting","awaiting_hello","awaiting_permit","identifying","resuming","disconnected","stopped","fatal"];
const COMPACT_ABOVE=256;
const $=id=>document.getElementById(id);
const esc=s=>String(s).replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
let last=null;
function fmtRanges(ids){
 const out=[];let i=0;
 while(i<ids.length){let j=i;while(j+1<ids.length&&ids[j+1]===ids[j]+1)j++;
  out.push(i===j?`${ids[i]}`:`${ids[i]}-${ids[j]}`);i=j+1;}
 return out.join(",")||"-";
}
function fmtUptime(s){s=Math.round(s);const h=Math.floor(s/3600),m=Math.floor(s%3600/60);
 return h?`${h}h ${m}m`:m?`${m}m ${s%60}s`:`${s} s`;}
function fmtSecs(s){return s>=120?fmtUptime(s):`${s.toFixed(1)} s`;}
function reshardHtml(r){
 // the reshard section of /status (a running reshard, or the last one) -> the block; "" hides it
 if(!r||!r.phase)return "";
 const running=r.phase==="starting";
 const items=[
  ["new shards ready",`${r.new_ready??"?"} / ${r.new_shards??"?"}`],
  ["guilds",r.guild_creates_complete?"complete":"not yet"],
  [running?"elapsed":"took",typeof r.elapsed_s==="number"?fmtSecs(r.elapsed_s):"-"],
 ];
 if(running&&typeof r.eta_s==="number")items.push(["time left",`about ${fmtSecs(r.eta_s)}`]);
 items.push(["duplicates dropped",r.deduplicated??0]);
 const pct=r.new_shards?Math.min(100,100*(r.new_ready||0)/r.new_shards):0;
 return `<div class="title"><b>${running?"Reshard in progress":"Last reshard"}: `+
  `${esc(r.old_shards??"?")} &rarr; ${esc(r.new_shards??"?")} shards</b>`+
  `<span class="phase ${esc(r.phase)}">${esc(r.phase)}</span></div>`+
  `<div class="bar"><i style="width:${pct.toFixed(1)}%"></i></div>`+
  `<div class="items">${items.map(([k,v])=>`<span>${k} <b>${esc(v)}</b></span>`).join("")}</div>`+
  (r.error?`<div class="why">${r.phase==="abandoned"?"abandoned: ":""}${esc(r.error)}</div>`:"");
}
function fmtRate(r){return r>=10000?`${(r/1000).toFixed(0)}k`:r>=1000?`${(r/1000).toFixed(1)}k`:r.toFixed(0);}
async function refresh(){
 try{
  const [st,hl]=await Promise.all([fetch("status").then(r=>r.json()),fetch("health").then(r=>r.json())]);
  const now=performance.now()/1000;
  const prev=last?new Map(last.st.shards.map(s=>[s.shard_id,s.events])):null;
  const dt=last?Math.max(now-last.t,0.001):0;
  const counts=new Map();let total=0;
  const compact=st.shards.length>COMPACT_ABOVE;
  const grid=$("grid");grid.classList.toggle("compact",compact);
  grid.innerHTML=st.shards.map(s=>{
   counts.set(s.state,(counts.get(s.state)||0)+1);
   const r=prev&&prev.has(s.shard_id)?Math.max(0,(s.events-prev.get(s.shard_id))/dt):null;
   if(r!==null)total+=r;
   const lat=s.latency_ms==null?"-":`${s.latency_ms.toFixed(0)} ms`;
   const rate=r===null?"\\u2013":`${fmtRate(r)}/s`;
   const tip=`shard ${s.shard_id} (worker ${s.worker_id}): ${s.state}, latency ${lat}, seq ${s.seq}, `+
    `${s.events} events, ${s.identifies} identifies, ${s.resumes} resumes`;
   const body=compact?`<div class="id">${s.shard_id}</div>`:
    `<div class="id">#${s.shard_id}</div><div>${lat}</div><div class="sub">${rate}</div>`;
   return `<div class="cell ${esc(s.state)}" data-shard="${s.shard_id}" title="${esc(tip)}">${body}</div>`;
  }).join("");
  const known=STATES.filter(x=>counts.has(x)).concat([...counts.keys()].filter(x=>!STATES.includes(x)));
  $("legend").innerHTML=(known.length?known:STATES).map(x=>
   `<span><i class="${esc(x)}"></i>${esc(x)} <b>${counts.get(x)||0}</b></span>`).join("");
  $("ready").textContent=st.shards_ready;
  $("total").textContent=st.shards.length;
  $("rate").textContent=last?fmtRate(total):"-";
  $("budget").textContent=st.identify&&st.identify.remaining!=null?st.identify.remaining:"-";
  $("uptime").textContent=fmtUptime(st.uptime_s);
  const h=$("health");h.className=hl.status==="ok"?"ok":"degraded";h.textContent=hl.status==="ok"?"healthy":"degraded";
  $("workers").innerHTML=st.workers.map(w=>
   `<tr><td>${w.worker_id}</td><td>${w.pid??"-"}</td><td>${fmtRanges(w.shard_ids)}</td>`+
   `<td>${esc(w.state??(w.alive?"alive":"dead"))}</td><td>${w.restarts}</td></tr>`).join("");
  $("role").textContent=st.role??"-";
  const reshard=reshardHtml(st.reshard);
  $("reshard").innerHTML=reshard;$("reshard").hidden=!reshard;
  const ranges=st.redis&&st.redis.ranges;
  $("hosts-panel").hidden=!ranges;
  if(ranges){
   const mine=st.lease&&st.lease.holder;
   $("hosts").innerHTML=Object.entries(ranges).map(([r,l])=>
    `<tr${l.holder===mine?' style="font-weight:700"':""}><td>${esc(r)}</td><td>${esc(l.holder)}</td>`+
    `<td>${l.token}</td><td>${(l.ttl_ms/1000).toFixed(1)} s</td></tr>`).join("");
  }
  const problems=(hl.problems||[]).concat(st.fatal&&!(hl.problems||[]).includes(st.fatal)?[st.fatal]:[]);
  $("problems").textContent=problems.join(" · ");
  $("updated").textContent=`updated ${new Date().toLocaleTimeString()} · refreshes every second`;
  document.title=`${st.shards_ready}/${st.shards.length} ready · Titanium Cluster`;
  last={st,t:now};
 }catch(e){
  const h=$("health");h.className="down";h.textContent="unreachable";
  $("problems").textContent="cluster unreachable: "+e;
 }
}
refresh();setInterval(refresh,1000);
</script></body></html>
"""
