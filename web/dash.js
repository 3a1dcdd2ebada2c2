// The loom dashboard: fetches the JSON API (/v1/dash/status, /v1/dash/metrics?since=N) with the token
// kept in sessionStorage and draws the run as SVG charts and tables. No server-side templating: the
// page is static and every datum comes from the API.
'use strict';
(function () {
  const KEY = 'loom.dash.token';
  const POLL_MS = 1000;
  const SVGNS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#2e6bd9', '#d92e6b', '#1b9e77', '#e6a100', '#7a4fd9', '#555'];
  const $ = (id) => document.getElementById(id);
  let rows = [], spread = [], since = 0, timer = null, busy = false;

  function token() { return sessionStorage.getItem(KEY) || ''; }

  function showLogin(msg) {
    if (timer) { clearTimeout(timer); timer = null; }
    $('dash').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('login-msg').textContent = msg || '';
    $('token').focus();
  }

  function showDash() {
    $('login').hidden = true;
    $('dash').hidden = false;
    $('logout').hidden = false;
  }

  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: 'Bearer ' + token() }, cache: 'no-store' });
    if (r.status === 401) { const e = new Error('unauthorized'); e.status = 401; throw e; }
    if (r.status === 403) { const e = new Error('this token may not read the dashboard'); e.status = 403; throw e; }
    if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  function fmtBytes(b) {
    if (b == null || !isFinite(b)) return '-';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (Math.abs(b) >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : String(Math.round(b))) + ' ' + u[i];
  }

  function fmtNum(v) {
    if (v == null || !isFinite(v)) return '-';
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  function fmtAgo(t, now) {
    if (t == null) return 'never';
    const s = Math.max(0, now - t);
    if (s < 1.5) return 'now';
    if (s < 90) return Math.round(s) + ' s ago';
    if (s < 5400) return Math.round(s / 60) + ' min ago';
    return Math.round(s / 3600) + ' h ago';
  }

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVGNS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }

  // series: [{name, pts: [[x, y]...], band: [[x, lo, hi]...] (optional), color}]
  function chart(id, series, opts) {
    opts = opts || {};
    const box = $(id);
    const W = 420, H = 230, L = 52, R = 12, T = 26, B = 42; // the legend sits above T
    const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
    let xs = [], ys = [];
    for (const s of series) {
      for (const p of s.pts) if (isFinite(p[1])) { xs.push(p[0]); ys.push(p[1]); }
      for (const b of s.band || []) if (isFinite(b[1]) && isFinite(b[2])) { xs.push(b[0]); ys.push(b[1], b[2]); }
    }
    if (!ys.length) {
      const t = el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, svg);
      t.textContent = opts.empty || 'no data yet';
      box.replaceChildren(svg);
      return;
    }
    let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (opts.zero) y0 = Math.min(0, y0);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const pad = (y1 - y0) * 0.05; y1 += pad; if (!opts.zero) y0 -= pad;
    const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
    for (const v of niceTicks(y0, y1, 4)) {
      el('line', { x1: L, x2: W - R, y1: sy(v), y2: sy(v), class: 'grid' }, svg);
      const t = el('text', { x: L - 4, y: sy(v) + 4, 'text-anchor': 'end' }, svg);
      t.textContent = opts.bytes ? fmtBytes(v) : fmtNum(v);
    }
    for (const v of niceTicks(x0, x1, 6)) {
      if (Math.abs(v - Math.round(v)) > 1e-9) continue;
      const t = el('text', { x: sx(v), y: H - B + 14, 'text-anchor': 'middle' }, svg);
      t.textContent = String(Math.round(v));
    }
    el('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, class: 'axis' }, svg);
    el('line', { x1: L, x2: L, y1: T, y2: H - B, class: 'axis' }, svg);
    const xl = el('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle' }, svg);
    xl.textContent = 'round';
    series.forEach((s, i) => {
      const c = s.color || COLORS[i % COLORS.length];
      const band = (s.band || []).filter((b) => isFinite(b[1]) && isFinite(b[2]));
      if (band.length) {
        const up = band.map((b) => `${sx(b[0])},${sy(b[2])}`), dn = band.slice().reverse().map((b) => `${sx(b[0])},${sy(b[1])}`);
        el('polygon', { points: up.concat(dn).join(' '), fill: c, 'fill-opacity': 0.15, stroke: 'none', class: 'band' }, svg);
      }
      const pts = s.pts.filter((p) => isFinite(p[1]));
      if (pts.length > 1)
        el('polyline', { points: pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(' '), fill: 'none', stroke: c, 'stroke-width': 1.8 }, svg);
      if (pts.length <= 200)
        for (const p of pts) {
          const d = el('circle', { cx: sx(p[0]), cy: sy(p[1]), r: 2.6, fill: c, class: 'pt' }, svg);
          const tt = el('title', {}, d);
          tt.textContent = `${s.name}, round ${p[0]}: ${opts.bytes ? fmtBytes(p[1]) : fmtNum(p[1])}`;
        }
      const lx = L + 8 + i * 130, ly = 14;
      el('rect', { x: lx, y: ly - 7, width: 10, height: 3, fill: c }, svg);
      const t = el('text', { x: lx + 14, y: ly - 2 }, svg);
      t.textContent = s.name;
    });
    box.replaceChildren(svg);
  }

  const num = (v) => (typeof v === 'number' ? v : NaN);
  function col(key) { return rows.map((r) => [r.round, num(r[key])]); }

  function drawCharts() {
    chart('chart-loss', [{ name: 'train loss', pts: col('train_loss') }, { name: 'eval loss', pts: col('eval_loss') }]);
    chart('chart-acc', [{ name: 'eval accuracy', pts: col('eval_acc') }], { empty: 'no evaluation yet' });
    chart('chart-ppl', [{ name: 'perplexity', pts: col('perplexity') }], { empty: 'no evaluation yet' });
    chart('chart-spread', [
      { name: 'train loss (clients)', pts: spread.map((s) => [s.round, num(s.loss_mean)]),
        band: spread.map((s) => [s.round, num(s.loss_min), num(s.loss_max)]) },
      { name: 'eval acc mean', pts: col('eval_acc_mean'),
        band: rows.map((r) => [r.round, num(r.eval_acc_mean) - num(r.eval_acc_std), num(r.eval_acc_mean) + num(r.eval_acc_std)]) },
    ]);
    chart('chart-bytes', [{ name: 'up', pts: col('bytes_up') }, { name: 'down', pts: col('bytes_down') }], { bytes: true, zero: true });
    const hasEps = rows.some((r) => 'epsilon' in r), hasAtk = rows.some((r) => 'attack_success' in r);
    $('fig-eps').hidden = !hasEps;
    $('fig-attack').hidden = !hasAtk;
    if (hasEps) chart('chart-eps', [{ name: 'epsilon', pts: col('epsilon') }], { zero: true });
    if (hasAtk) chart('chart-attack', [{ name: 'attack success', pts: col('attack_success') }], { zero: true });
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  function drawStatus(st) {
    $('round').textContent = String(st.round);
    $('rounds').textContent = st.rounds ? String(st.rounds) : '?';
    $('state').textContent = st.state;
    $('updated').textContent = fmtAgo(st.updated_at, st.now);
    const frac = st.rounds ? Math.min(1, st.round / st.rounds) : 0;
    $('bar').style.width = (100 * frac).toFixed(1) + '%';
    const cfg = st.config || {};
    $('run-title').textContent = [cfg.strategy, cfg.model, cfg.peft].filter(Boolean).join(' · ');
    const ctb = document.querySelector('#config tbody');
    ctb.replaceChildren();
    for (const k of Object.keys(cfg).sort()) {
      const tr = document.createElement('tr');
      cell(tr, k);
      cell(tr, cfg[k]);
      ctb.appendChild(tr);
    }
    const tb = document.querySelector('#clients tbody');
    tb.replaceChildren();
    for (const c of st.clients || []) {
      const tr = document.createElement('tr');
      cell(tr, String(c.client), 'num');
      cell(tr, c.name);
      cell(tr, c.registered ? 'yes' : 'no');
      cell(tr, c.active ? 'yes' : 'no');
      cell(tr, c.state);
      cell(tr, fmtAgo(c.last_seen, st.now));
      cell(tr, String(c.rounds_contributed), 'num');
      cell(tr, fmtBytes(c.bytes_up), 'num');
      cell(tr, fmtBytes(c.bytes_down), 'num');
      cell(tr, String(c.stragglers), 'num');
      cell(tr, String(c.dropouts), 'num');
      tb.appendChild(tr);
    }
    const shown = (st.clients || []).length;
    $('clients-count').textContent = shown < st.clients_total ? `(${shown} of ${st.clients_total} shown)` : `(${st.clients_total})`;
    if (st.sample) {
      $('sample').textContent = st.sample.text;
      $('sample-round').textContent = `(after round ${st.sample.round})`;
    }
  }

  async function poll() {
    if (busy) return;
    busy = true;
    try {
      const st = await api('/v1/dash/status');
      let more = true;
      while (more) {
        const m = await api('/v1/dash/metrics?since=' + since);
        for (let i = 0; i < m.rows.length; i++) {
          const r = m.rows[i], sp = m.spread[i];
          const at = rows.findIndex((x) => x.round === r.round);
          if (at >= 0) { rows[at] = r; spread[at] = sp; } else { rows.push(r); spread.push(sp); }
        }
        more = m.more && m.rows.length > 0;
        since = m.last_round;
      }
      showDash();
      drawStatus(st);
      drawCharts();
      $('api-msg').textContent = '';
    } catch (e) {
      if (e.status === 401) {
        const had = token();
        sessionStorage.removeItem(KEY);
        busy = false;
        showLogin(had ? 'The server refused the token (401): paste a valid administrator or viewer token.' : '');
        return;
      }
      if (e.status === 403) {
        sessionStorage.removeItem(KEY);
        busy = false;
        showLogin('This token may not read the dashboard (403).');
        return;
      }
      $('api-msg').textContent = 'cannot reach the server: ' + e.message;
    }
    busy = false;
    timer = setTimeout(poll, POLL_MS);
  }

  function start() {
    rows = []; spread = []; since = 0;
    poll();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      if (!t) return;
      sessionStorage.setItem(KEY, t);
      $('token').value = '';
      $('login-msg').textContent = '';
      start();
    });
    $('logout').addEventListener('click', () => {
      sessionStorage.removeItem(KEY);
      showLogin('');
    });
    if (token()) start();
    else showLogin('');
  });
})();
