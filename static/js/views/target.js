// The box panel: what the code decided about the selected box, laid out as the scheme declares
// (spec.target): how many positives it got and by which rule, its verdicts ("no anchor", "zero
// positives"), its facts (dynamic_k, the IoU threshold, ...), the histogram of its candidates'
// values with the threshold lines, and one table per test the code ran for it (its cost row, its
// top-10 IoUs, its conflicts). Every number and count is the server's (result.target).
import { el, fmt, fmtUnit, fmtValue } from './format.js';
import { t } from '../i18n.js';

const plotlyReady = () => typeof window.Plotly !== 'undefined';
const CONFIG = { displayModeBar: false, responsive: true };

/**
 * options: {spec, result, onHover(cell|null), onPick(cell)} — cell = {level, anchor, gi, gj}.
 * Idempotent: the panel is rebuilt from result.target each time.
 */
export function renderTarget(root, { spec, result, onHover, onPick }) {
  root.replaceChildren();
  const target = result?.target;
  if (!target) {
    el('p', { cls: 'hint', text: t('box.hint') }, root);
    return;
  }
  root.dataset.gt = String(target.gt);
  root.dataset.positives = String(target.positives);
  const head = el('div', { cls: 'target-head', attrs: { 'data-testid': 'target-summary' } }, root);
  el('strong', { text: `#${target.gt} · ${t('box.cls')} ${target.box.cls} · ${fmt(target.box.w)}×${fmt(target.box.h)} px` }, head);
  const count = el('div', { cls: target.positives ? 'target-count' : 'target-count none' }, head);
  el('strong', { text: String(target.positives) }, count);
  count.append(` ${t('summary.positives')}`);
  const glyphs = Object.fromEntries(spec.rules.map((r) => [r.name, r]));
  for (const [name, n] of Object.entries(target.by_rule)) {
    const rule = glyphs[name];
    el('span', { cls: 'rule-chip', text: `${rule?.glyph ?? ''} ${n} ${rule?.label ?? name}`, attrs: { title: rule?.doc ?? '' } }, count);
  }
  if (target.per_level.length !== 1) {
    el('div', { cls: 'muted', text: result.levels.map((lv, i) => `${lv.name} ${target.per_level[i]}`).join(' · ') }, head);
  }
  for (const sentence of target.verdicts) {
    el('p', { cls: 'target-verdict', text: sentence, attrs: { 'data-testid': 'target-verdict' } }, root);
  }
  if (target.facts.length) {
    const dl = el('dl', { cls: 'facts', attrs: { 'data-testid': 'target-facts' } }, root);
    for (const fact of target.facts) {
      el('dt', { text: fact.label }, dl);
      el('dd', { text: fmtUnit(fact.value, fact.unit) }, dl);
    }
  }
  if (target.histogram) renderHistogram(el('div', { cls: 'target-hist', attrs: { 'data-testid': 'target-histogram' } }, root), target.histogram);
  for (const table of target.tables) renderTable(root, table, { onHover, onPick });
  if (!target.tables.length && !target.verdicts.length) el('p', { cls: 'hint', text: t('box.noTests') }, root);
}

function renderTable(root, table, { onHover, onPick }) {
  const box = el('details', { cls: 'target-table', attrs: { 'data-testid': 'target-table', 'data-test': table.test } }, root);
  box.open = true;
  const head = el('summary', {}, box);
  el('strong', { text: table.title }, head);
  head.append(` · ${table.passed} ✓ / ${table.failed} ✗`);
  if (table.doc) el('p', { cls: 'hint', text: table.doc }, box);
  const wrap = el('div', { cls: 'table-wrap' }, box);
  const grid = el('table', { cls: 'table compact' }, wrap);
  const hr = el('tr', {}, el('thead', {}, grid));
  el('th', { text: t('box.where') }, hr);
  el('th', { text: '' }, hr);
  for (const column of table.columns) el('th', { text: column.label, attrs: { title: column.key } }, hr);
  const body = el('tbody', {}, grid);
  for (const row of table.rows) {
    const tr = el('tr', { cls: row.passed ? 'pass' : 'fail', attrs: { title: row.text, 'data-testid': 'target-row' } }, body);
    el('td', { text: row.where }, tr);
    el('td', { text: row.passed ? '✓' : '✗', cls: row.passed ? 'ok' : 'bad' }, tr);
    row.values.forEach((value, i) => el('td', { text: fmtUnit(value, table.columns[i].unit) }, tr));
    const cell = { level: row.level, anchor: row.anchor, gi: row.gi, gj: row.gj };
    tr.addEventListener('mouseenter', () => onHover?.(cell));
    tr.addEventListener('mouseleave', () => onHover?.(null));
    tr.addEventListener('click', () => onPick?.(cell));
  }
  if (table.shown !== table.total) {
    el('p', { cls: 'hint', text: t('box.more').replace('{shown}', String(table.shown)).replace('{total}', String(table.total)) }, box);
  }
}

function renderHistogram(root, h) {
  el('div', { cls: 'hist-title', text: `${h.title} (${h.count})` }, root);
  const lines = el('div', { cls: 'muted' }, root);
  lines.textContent = h.lines.map((line) => `${line.label} ${fmtValue(line.value)}`).join(' · ');
  const plot = el('div', { cls: 'plot small' }, root);
  if (!plotlyReady()) return;
  const bar = (ys, name, color) => ({ type: 'bar', x: h.centres, y: ys, width: h.width, name, marker: { color },
                                      hovertemplate: '%{y}<extra>' + name + '</extra>' });
  const shapes = h.lines.filter((line) => typeof line.value === 'number').map((line) => ({
    type: 'line', xref: 'x', yref: 'paper', x0: line.value, x1: line.value, y0: 0, y1: 1,
    line: { color: line.main ? '#c0392b' : '#555', width: 2, dash: line.main ? 'solid' : 'dot' },
  }));
  const annotations = h.lines.filter((line) => typeof line.value === 'number').map((line) => ({
    x: line.value, y: 1, xref: 'x', yref: 'paper', text: line.label, showarrow: false, yanchor: 'bottom', font: { size: 10 },
  }));
  const layout = { barmode: 'stack', height: 170, margin: { l: 30, r: 8, t: 18, b: 28 }, shapes, annotations,
                   xaxis: { range: h.range }, legend: { orientation: 'h', y: -0.25, font: { size: 10 } },
                   showlegend: true };
  window.Plotly.react(plot, [bar(h.failed, h.failed_label, '#bbb'), bar(h.passed, h.passed_label, '#2e86de')], layout, CONFIG);
}
