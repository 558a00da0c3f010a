// Loss panel: every term the server computed (table), a stacked bar per level where the code
// splits a term by level, and the focal-loss curve (server points only).
import { fmt, el } from './format.js';
import { t } from '../i18n.js';
import { OKABE_ITO } from '../config.js';
import { decodeLevel, plain } from '../api.js';

const LAYOUT = { margin: { l: 50, r: 10, t: 30, b: 40 }, font: { size: 11 }, barmode: 'stack', showlegend: true, legend: { orientation: 'h' } };
const CONFIG = { displayModeBar: false, responsive: true, staticPlot: false };

function plotlyReady() { return typeof window.Plotly !== 'undefined'; }

export function renderLosses(barEl, tableEl, result) {
  tableEl.replaceChildren();
  if (!result) return;
  const losses = result.losses || {};
  const head = el('tr', {}, el('thead', {}, tableEl));
  el('th', { text: t('loss.term') }, head); el('th', { text: t('loss.value') }, head);
  const body = el('tbody', {}, tableEl);
  for (const [name, value] of Object.entries(losses)) {
    const tr = el('tr', {}, body);
    tr.dataset.term = name;
    el('td', { text: name }, tr); el('td', { text: fmt(value) }, tr);
  }
  if (!plotlyReady()) return;
  const levelNames = result.levels.map((l) => l.name);
  // raw (before gains) and bookkeeping entries stay in the table; the chart shows the terms
  const terms = Object.keys(losses).filter((k) => !k.includes('.') && k !== 'total' && !/_raw$|_sum$/.test(k));
  // x: for each term split by level, "Σ term.Pk" stacked by level, then the term after its gain;
  // then the total stacked from the terms. All heights are the server's numbers.
  const x = [];
  for (const term of terms) {
    if (levelNames.some((lvl) => `${term}.${lvl}` in losses)) x.push(`Σ ${term}.P*`);
    x.push(term);
  }
  x.push('total');
  const traces = [];
  levelNames.forEach((lvl, i) => {
    const y = x.map((cat) => { const term = cat.startsWith('Σ ') ? cat.slice(2, -3) : null; return term && `${term}.${lvl}` in losses ? plain(losses[`${term}.${lvl}`]) : null; });
    if (y.some((v) => v !== null)) traces.push({ type: 'bar', name: lvl, x, y, marker: { color: OKABE_ITO[i % 7] } });
  });
  // the total bar is stacked from the terms only when they add up to it (as the server reports them)
  const sum = terms.reduce((acc, term) => acc + plain(losses[term]), 0);
  const total = plain(losses.total);
  const stacksToTotal = Math.abs(sum - total) <= 1e-4 * Math.max(1, Math.abs(total));
  if (!stacksToTotal) traces.push({ type: 'bar', name: 'total', x: ['total'], y: [total], marker: { color: '#000000' } });
  terms.forEach((term, i) => {
    const colour = OKABE_ITO[(i + 3) % 7];
    const y = x.map((cat) => (cat === term || (cat === 'total' && stacksToTotal) ? plain(losses[term]) : null));
    traces.push({ type: 'bar', name: term, x, y, marker: { color: colour, pattern: { shape: ['/', '.', 'x', '-'][i % 4] } } });
  });
  const layout = { ...LAYOUT, title: { text: `${t('loss.bar')} · total = ${fmt(losses.total)}`, font: { size: 12 } } };
  window.Plotly.react(barEl, traces, layout, CONFIG);
}

let curveCache = new Map(); // "gamma,alpha" -> points | null (endpoint missing)

let curveEndpoint = null; // Promise<boolean>: does the server offer GET /api/v1/focal_curve?

function hasCurveEndpoint() {
  curveEndpoint ??= fetch('/openapi.json').then((r) => r.json()).then((o) => Boolean(o.paths?.['/api/v1/focal_curve'])).catch(() => false);
  return curveEndpoint;
}

async function fetchCurve(gamma, alpha) {
  const key = `${gamma},${alpha}`;
  if (curveCache.has(key)) return curveCache.get(key);
  let points = null;
  if (!(await hasCurveEndpoint())) return null;
  try {
    const response = await fetch(`/api/v1/focal_curve?gamma=${encodeURIComponent(gamma)}&alpha=${encodeURIComponent(alpha)}`);
    if (response.ok) points = await response.json();
  } catch { points = null; }
  curveCache.set(key, points);
  return points;
}

function findMap(result, test) {
  return Object.keys(result.maps || {}).find(test);
}

export async function renderFocal(plotEl, noteEl, result) {
  if (!result || !plotlyReady()) return;
  const params = result.scene?.params || {};
  const gammaName = ['fl_gamma', 'gamma'].find((k) => k in params);
  if (!gammaName) {
    noteEl.textContent = `${result.scheme}: no focal γ parameter in this scheme.`;
    window.Plotly.react(plotEl, [], { ...LAYOUT, title: { text: t('focal.title'), font: { size: 12 } } }, CONFIG);
    return;
  }
  const gamma = params[gammaName];
  const alphaName = ['fl_alpha', 'alpha'].find((k) => k in params);
  const alpha = alphaName ? params[alphaName] : 0.25;
  const traces = [];
  const curve = await fetchCurve(gamma, alpha);
  if (curve && Array.isArray(curve.p_t)) {
    traces.push({ type: 'scatter', mode: 'lines', name: `γ=${fmt(gamma)} α=${fmt(alpha)}`, x: curve.p_t.map(plain), y: (curve.loss || curve.focal).map(plain), line: { color: OKABE_ITO[4] } });
    if (curve.ce) traces.push({ type: 'scatter', mode: 'lines', name: 'CE (γ=0)', x: curve.p_t.map(plain), y: curve.ce.map(plain), line: { color: '#999', dash: 'dot' } });
    noteEl.textContent = '';
  } else {
    noteEl.textContent = t('focal.noCurve');
  }
  const ptName = findMap(result, (n) => n === 'p_t' || n.endsWith('p_t'));
  const flName = findMap(result, (n) => n !== ptName && /focal|fl_|loss/.test(n));
  if (ptName && flName) {
    const xs = [], ys = [];
    result.maps[ptName].levels.forEach((lvl, L) => {
      const p = decodeLevel(lvl).data, f = decodeLevel(result.maps[flName].levels[L]).data;
      const stride = Math.max(1, Math.floor(p.length / 700)); // at most ~700 points per level (SVG scatter: scattergl needs eval, which the CSP forbids)
      for (let k = 0; k < p.length; k += stride) { xs.push(p[k]); ys.push(f[k]); }
    });
    traces.push({ type: 'scatter', mode: 'markers', name: `cells (${ptName}, ${flName})`, x: xs, y: ys, marker: { size: 4, color: OKABE_ITO[5] } });
  }
  const layout = { ...LAYOUT, barmode: undefined, title: { text: `${t('focal.title')} · ${gammaName}=${fmt(gamma)}`, font: { size: 12 } }, xaxis: { title: { text: 'p_t' }, range: [0, 1] }, yaxis: { title: { text: 'loss' } } };
  window.Plotly.react(plotEl, traces, layout, CONFIG);
}
