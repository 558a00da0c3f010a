// The loss, as it adds up: a waterfall per term built from the server's composition (each part's
// raw value, × its factor, the sum, ÷ the divisor, × the gain), then the total; a bar chart of the
// terms on a log scale so a small box loss is not hidden by a large class loss; the focal curve from
// the server's points. Every number, product and sum shown is the server's.
import { el, fmt } from './format.js';
import { t } from '../i18n.js';
import { BOX_COLOURS, boxColour } from './colour.js';
import { barChartHeight } from './geometry.js';
import { plain } from '../api.js';

const CONFIG = { displayModeBar: false, responsive: true };
const plotlyReady = () => typeof window.Plotly !== 'undefined';

function factor(parent, symbol, value, label, cls = 'factor') {
  const node = el('span', { cls, attrs: { 'data-factor': label || symbol } }, parent);
  node.append(`${symbol} ${fmt(value)}`);
  if (label) el('small', { text: ` ${label}` }, node);
  return node;
}

/**
 * The waterfall (data-testid="loss-waterfall"). onHover(termName | null, partLabel | null) lets the
 * page light up the cells a term or a level's part comes from.
 */
export function renderWaterfall(root, result, onHover) {
  root.replaceChildren();
  const c = result?.composition;
  if (!c) { el('p', { cls: 'hint', text: t('loss.noComposition') }, root); return; }
  const table = el('div', { cls: 'waterfall', attrs: { 'data-testid': 'loss-waterfall' } }, root);
  for (const term of c.terms) {
    const row = el('div', { cls: 'wrow', attrs: { 'data-term': term.name } }, table);
    row.addEventListener('mouseenter', () => onHover?.(term.name, null));
    row.addEventListener('mouseleave', () => onHover?.(null, null));
    el('span', { cls: 'wname', text: term.name, attrs: { title: term.doc } }, row);
    const parts = el('span', { cls: 'wparts' }, row);
    term.parts.forEach((p, i) => {
      if (i) parts.append(' + ');
      const part = el('span', { cls: 'wpart', attrs: { 'data-part': p.label, 'data-raw': plain(p.raw), 'data-factor-value': p.factor, 'data-value': plain(p.value) } }, parts);
      part.addEventListener('mouseenter', (e) => { e.stopPropagation(); onHover?.(term.name, p.label); });
      part.append(`${p.label} ${fmt(p.raw)}`);
      if (p.factor !== 1) { factor(part, '×', p.factor, term.part_factor); part.append(` = ${fmt(p.value)}`); }
    });
    const steps = el('span', { cls: 'wsteps' }, row);
    if (term.parts.length !== 1 || term.parts[0].factor !== 1) steps.append(` = Σ ${fmt(term.sum)}`);
    if (term.divisor !== 1) { factor(steps, '÷', term.divisor, term.divisor_label); steps.append(` = ${fmt(term.normalised)}`); }
    if (term.gain !== 1) factor(steps, '×', term.gain, term.gain_label, 'factor gain');
    el('strong', { cls: 'wvalue', text: ` = ${fmt(term.value)}`, attrs: { 'data-testid': 'term-value', 'data-value': plain(term.value) } }, steps);
  }
  const total = el('div', { cls: 'wrow wtotal' }, table);
  el('span', { cls: 'wname', text: t('loss.total') }, total);
  const sum = el('span', { cls: 'wparts' }, total);
  sum.append(`(${c.terms.map((x) => `${x.name} ${fmt(x.value)}`).join(' + ')}) = ${fmt(c.sum)}`);
  const steps = el('span', { cls: 'wsteps' }, total);
  if (c.multiplier !== 1 || c.multiplier_label) factor(steps, '×', c.multiplier, c.multiplier_label);
  el('strong', { cls: 'wvalue', text: ` = ${fmt(c.total)}`, attrs: { 'data-testid': 'waterfall-total', 'data-value': plain(c.total) } }, steps);
  if (c.formula) el('div', { cls: 'hint', text: `${t('loss.formula')}: ${c.formula}` }, root);
}

/** Term values as horizontal bars on a log axis (the server's values). */
export function renderTermBars(plotEl, result, { log = true } = {}) {
  const c = result?.composition;
  if (!plotlyReady() || !c) { plotEl.hidden = true; return; }
  plotEl.hidden = false;
  const names = c.terms.map((x) => x.name);
  const values = c.terms.map((x) => plain(x.value));
  const trace = { type: 'bar', orientation: 'h', y: names, x: values, text: values.map((v) => fmt(v)), textposition: 'auto',
                  marker: { color: names.map((_, i) => boxColour(i + 4)) }, hoverinfo: 'y+text' };
  const layout = { margin: { l: 80, r: 20, t: 8, b: 36 }, height: barChartHeight(names.length), font: { size: 11 },
                   xaxis: { type: log ? 'log' : 'linear', title: { text: log ? t('loss.logAxis') : t('loss.linearAxis') }, automargin: true },
                   yaxis: { automargin: true } };
  window.Plotly.react(plotEl, [trace], layout, CONFIG);
}

/** The focal curve of the scheme (none when it has no focal term): the server's curve, marks and points. */
export function renderFocal(plotEl, noteEl, result) {
  const f = result?.focal;
  if (!f) {
    plotEl.hidden = true;
    noteEl.textContent = t('focal.none');
    return;
  }
  noteEl.textContent = `${f.on ? t('focal.on') : t('focal.off')}: ${f.formula} · γ = ${fmt(f.gamma)}${f.alpha === null ? '' : ` · α = ${fmt(f.alpha)}`} · ${t('focal.appliesTo')} ${f.applies_to}`;
  if (!plotlyReady()) return;
  plotEl.hidden = false;
  const x = f.curve.p_t.map(plain);
  const traces = [
    { type: 'scatter', mode: 'lines', name: f.on ? `γ ${fmt(f.gamma)}${f.alpha === null ? '' : `, α ${fmt(f.alpha)}`}` : 'BCE', x, y: f.curve.loss.map(plain), line: { color: BOX_COLOURS[4], width: 2.5 }, hovertemplate: 'p_t %{x:.3f}<br>loss %{y:.4g}<extra></extra>' },
    { type: 'scatter', mode: 'lines', name: 'CE (γ 0)', x, y: f.curve.ce.map(plain), line: { color: '#888', dash: 'dot' }, hovertemplate: 'p_t %{x:.3f}<br>CE %{y:.4g}<extra></extra>' },
    { type: 'scatter', mode: 'markers+text', name: 'RetinaNet Fig. 1', x: f.marks.map((m) => m.p_t), y: f.marks.map((m) => plain(m.loss)),
      text: f.marks.map((m) => fmt(m.loss)), textposition: 'top right', marker: { size: 9, color: BOX_COLOURS[3], symbol: 'diamond' }, hovertemplate: 'p_t %{x}<br>loss %{y:.6g}<extra></extra>' },
  ];
  if (f.points && f.points.p_t.length) {
    traces.push({ type: 'scatter', mode: 'markers', name: t('focal.cells'), x: f.points.p_t.map(plain), y: f.points.loss.map(plain),
                  marker: { size: 5, color: BOX_COLOURS[5], opacity: 0.7 }, hovertemplate: 'p_t %{x:.3f}<br>%{y:.4g}<extra></extra>' });
  }
  const layout = { margin: { l: 50, r: 10, t: 10, b: 40 }, height: 260, font: { size: 11 }, legend: { orientation: 'h', y: -0.25 },
                   xaxis: { title: { text: 'p_t' }, range: [0, 1] }, yaxis: { title: { text: t('focal.lossAxis') }, rangemode: 'tozero' } };
  window.Plotly.react(plotEl, traces, layout, CONFIG);
}
