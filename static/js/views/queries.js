// Set-prediction schemes (DETR): the cost matrix (queries × boxes) as a heat map with the matching
// outlined, any declared matrix on demand, and for a hovered pair the cost filled in with the
// server's numbers. The queries' boxes themselves are drawn by the grid view (draggable pins).
import { decodeLevel } from '../api.js';
import { boxColour, paintMatrix } from './colour.js';
import { el, fmt } from './format.js';
import { t } from '../i18n.js';
import * as geo from './geometry.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * Render the matrix panel. ctx: {spec, result, matrix (name), onHover({query, box}|null), onPick}
 * Returns nothing; the hovered pair is reported through onHover.
 */
export function renderMatrix(root, ctx) {
  root.replaceChildren();
  const { spec, result } = ctx;
  if (!result?.matrices || !spec) return;
  const name = ctx.matrix in result.matrices ? ctx.matrix : spec.matrices[0]?.name;
  const declared = spec.matrices.find((m) => m.name === name);
  const level = decodeLevel(result.matrices[name]);
  const [Q, N] = level.shape;
  const head = el('div', { cls: 'matrixhead' }, root);
  const select = el('select', { attrs: { 'data-testid': 'matrix-select', 'aria-label': 'matrix' } }, head);
  for (const m of spec.matrices) { const o = el('option', { text: m.name }, select); o.value = m.name; o.title = m.doc; }
  select.value = name;
  select.addEventListener('change', () => ctx.onMatrix?.(select.value));
  el('span', { cls: 'hint', text: ` ${declared?.doc ?? ''} · ${Q} queries × ${N} boxes` }, head);
  if (!N) { el('p', { cls: 'hint', text: 'no boxes: nothing to match' }, root); return; }
  const wrap = el('div', { cls: 'matrixwrap', attrs: { 'data-testid': 'cost-matrix', 'data-rows': Q, 'data-cols': N } }, root);
  const canvas = el('canvas', { cls: 'matrixcanvas' }, wrap);
  const range = paintMatrix(canvas, level);
  const size = geo.matrixSize(Q, N);
  wrap.style.width = `${size.width}px`;
  wrap.style.height = `${size.height}px`;
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${N} ${Q}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'matrixsvg');
  wrap.append(svg);
  for (const row of result.positives) {
    const r = document.createElementNS(SVG_NS, 'rect');
    for (const [k, v] of Object.entries({ x: row.gt, y: row.query, width: 1, height: 1 })) r.setAttribute(k, v);
    r.setAttribute('class', 'matched');
    r.setAttribute('stroke', boxColour(row.gt));
    r.setAttribute('vector-effect', 'non-scaling-stroke');
    r.dataset.query = row.query; r.dataset.box = row.gt; r.dataset.testid = 'matched-pair';
    svg.append(r);
  }
  const hover = document.createElementNS(SVG_NS, 'rect');
  hover.setAttribute('class', 'matrixhover');
  hover.setAttribute('visibility', 'hidden');
  hover.setAttribute('vector-effect', 'non-scaling-stroke');
  svg.append(hover);
  const line = el('div', { cls: 'pairline', attrs: { 'data-testid': 'pair-cost' } }, root);
  svg.addEventListener('pointermove', (e) => {
    const cell = geo.matrixCell(e, svg.getBoundingClientRect(), Q, N);
    if (!cell) return;
    for (const [k, v] of Object.entries({ x: cell.col, y: cell.row, width: 1, height: 1 })) hover.setAttribute(k, v);
    hover.setAttribute('visibility', 'visible');
    line.textContent = pairSentence(result, spec, cell.row, cell.col);
    Object.assign(line.dataset, { query: cell.row, box: cell.col });
    ctx.onHover?.({ query: cell.row, box: cell.col });
  });
  svg.addEventListener('pointerleave', () => { hover.setAttribute('visibility', 'hidden'); ctx.onHover?.(null); });
  if (range) el('div', { cls: 'legend', text: `${name}: ${fmt(range.lo)} … ${fmt(range.hi)} (low = cheap)` }, root);
}

/** "query 3 × box 1: C = 1·(−p 0.42) + 5·L1 0.31 − 2·GIoU 0.55 = 0.58" from the server's matrices. */
export function pairSentence(result, spec, query, box) {
  const value = (name) => {
    const m = result.matrices?.[name];
    if (!m) return null;
    const { shape, data } = decodeLevel(m);
    return data[geo.matrixIndex(shape, query, box)];
  };
  const p = result.scene.params;
  const parts = ['cost_class', 'cost_bbox', 'cost_giou'].map(value);
  const weights = [p.set_cost_class, p.set_cost_bbox, p.set_cost_giou];
  const matched = result.positives.find((r) => r.query === query && r.gt === box);
  const text = `${t('grid.query')} ${query} × #${box}: C = ${fmt(weights[0])}·cost_class ${fmt(parts[0])} + ${fmt(weights[1])}·cost_bbox ${fmt(parts[1])} + ${fmt(weights[2])}·cost_giou ${fmt(parts[2])} = ${fmt(value('cost_total'))}`;
  return matched ? `${text} · ${t('grid.matched')}` : text;
}
