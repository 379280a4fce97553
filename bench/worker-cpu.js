// CPU time per request of the edge Worker under miniflare (bench/worker.sh runs this).
// CPU is read from /proc for the workerd process (user + system, 10 ms ticks): it includes
// workerd's HTTP handling and the simulated R2 (a SQLite-backed object in the same process), so
// it is an upper bound of the Worker's own CPU time. Cold: the first request after a fresh start
// (isolate creation and WebAssembly instantiation included). Warm: the mean over many requests.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const wk = path.resolve(__dirname, '../crates/rack-worker');
const { Miniflare } = require(path.join(wk, 'node_modules/miniflare'));
const fixtures = process.env.RACK_FIXTURES;
const COLD = Number(process.env.WB_COLD || 5);
const WARM = Number(process.env.WB_WARM || 400);
const TICK_MS = 1000 / 100; // USER_HZ
const ROUTES = {
  manifest: '/registries/@rack/build/rollup/1.0.0',
  listing: '/namespaces/@rack/registries',
};

function files(dir, prefix = '', out = []) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) files(full, prefix + e.name + '/', out);
    else if (e.isFile()) out.push([prefix + e.name, full]);
  }
  return out;
}

function workerdPids() {
  const out = execFileSync('ps', ['-eo', 'pid=,ppid=,comm='], { encoding: 'utf8' });
  const rows = out.trim().split('\n').map((l) => l.trim().split(/\s+/));
  const mine = new Set([String(process.pid)]);
  // Descendants of this process named workerd.
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, ppid] of rows) if (mine.has(ppid) && !mine.has(pid)) { mine.add(pid); grew = true; }
  }
  return rows.filter(([pid, , comm]) => mine.has(pid) && comm.startsWith('workerd')).map(([pid]) => pid);
}

function cpuMs(pids) {
  let ticks = 0;
  for (const pid of pids) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks += Number(f[11]) + Number(f[12]); // utime, stime
  }
  return ticks * TICK_MS;
}

async function runtime(withIndex) {
  const mf = new Miniflare({
    modules: true,
    scriptPath: path.join(wk, 'build/index.js'),
    modulesRoot: path.join(wk, 'build'),
    modulesRules: [
      { type: 'ESModule', include: ['**/*.js'] },
      { type: 'CompiledWasm', include: ['**/*.wasm'] },
    ],
    compatibilityDate: '2025-09-01',
    r2Buckets: ['BUCKET'],
    bindings: {},
  });
  await mf.ready;
  const bucket = await mf.getR2Bucket('BUCKET');
  for (const [key, full] of files(fixtures)) { const b = fs.readFileSync(full); await bucket.put(key, b.buffer.slice(b.byteOffset, b.byteOffset + b.length)); }
  await bucket.put('.auth/auth.json', JSON.stringify({ '@rack': [] }));
  if (withIndex) {
    // What `storage push` writes: the listing is one GET.
    const regs = [];
    for (const [key] of files(fixtures)) {
      const m = key.match(/^@rack\/(.+)\/versions\.json$/);
      if (m) regs.push(m[1]);
    }
    regs.sort();
    await bucket.put('@rack/.registries.json', JSON.stringify({ registries: regs }) + '\n');
  }
  return mf;
}

async function hit(mf, route) {
  const r = await mf.dispatchFetch(new URL(route, 'http://bench.local'));
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`${route}: ${r.status}`);
}

async function main() {
  const results = [];
  for (const withIndex of [true, false]) {
    for (const [name, route] of Object.entries(ROUTES)) {
      if (name === 'manifest' && !withIndex) continue;
      const label = name === 'listing' ? `listing (${withIndex ? 'index' : 'walk'})` : name;
      const cold = [];
      for (let i = 0; i < COLD; i++) {
        const mf = await runtime(withIndex);
        const pids = workerdPids();
        const before = cpuMs(pids);
        await hit(mf, route);
        cold.push(cpuMs(pids) - before);
        await mf.dispose();
      }
      const mf = await runtime(withIndex);
      const pids = workerdPids();
      for (let i = 0; i < 20; i++) await hit(mf, route);
      const before = cpuMs(pids);
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < WARM; i++) await hit(mf, route);
      const wall = Number(process.hrtime.bigint() - t0) / 1e6;
      const warm = (cpuMs(pids) - before) / WARM;
      await mf.dispose();
      cold.sort((a, b) => a - b);
      results.push({ label, coldMedian: cold[Math.floor(cold.length / 2)], cold, warm, wallPerReq: wall / WARM });
    }
  }
  console.log(`cpu per request (workerd process, ${os.cpus().length} cores, ${COLD} cold starts, ${WARM} warm requests):`);
  for (const r of results) {
    console.log(
      `  ${r.label.padEnd(16)} cold ${r.coldMedian.toFixed(0)} ms (median; all ${r.cold.map((c) => c.toFixed(0)).join('/')})` +
        `  warm ${r.warm.toFixed(2)} ms  (wall ${r.wallPerReq.toFixed(2)} ms)`
    );
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
