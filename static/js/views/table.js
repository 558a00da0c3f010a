// The positives table: one row per positive, the scheme's declared columns with their units; hover
// a row to light its cell on the grid, click to go there.
import { boxColour } from './colour.js';
import { el, fmtValue, ruleLabel, shortList } from './format.js';
import { MAX_TABLE_ROWS } from '../config.js';
import { t } from '../i18n.js';

export function renderPositivesTable(root, spec, result, { onHover, onPick } = {}) {
  root.replaceChildren();
  if (!result || !spec) return;
  const present = new Set(Object.keys(result.positives[0] || {}));
  const columns = spec.columns.filter((c) => present.has(c.name) || !result.positives.length);
  const head = el('tr', {}, el('thead', {}, root));
  for (const c of columns) {
    const th = el('th', { text: c.name }, head);
    th.title = `${c.doc}${c.unit ? ` [${c.unit}]` : ''}${c.parts.length ? ` (${c.parts.join(', ')})` : ''}`;
  }
  const body = el('tbody', {}, root);
  for (const r of result.positives.slice(0, MAX_TABLE_ROWS)) {
    const tr = el('tr', { cls: 'posrow', attrs: { tabindex: 0, 'data-testid': 'positive-row' } }, body);
    Object.assign(tr.dataset, { gt: r.gt, level: r.level, anchor: r.anchor, gi: r.gi, gj: r.gj, rule: r.rule });
    for (const c of columns) {
      const value = r[c.name];
      const text = c.name === 'level' ? (result.levels[value]?.name ?? String(value)) : c.name === 'rule' ? ruleLabel(spec, value) : shortList(value);
      const td = el('td', { text }, tr);
      if (c.name === 'gt') td.style.borderLeft = `4px solid ${boxColour(r.gt)}`;
      if (Array.isArray(value)) td.title = fmtValue(value);
    }
    tr.addEventListener('mouseenter', () => onHover?.(r));
    tr.addEventListener('mouseleave', () => onHover?.(null));
    tr.addEventListener('focus', () => onHover?.(r));
    tr.addEventListener('click', () => onPick?.(r));
    tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { onPick?.(r); e.preventDefault(); } });
  }
  if (result.positives.length !== result.positives.slice(0, MAX_TABLE_ROWS).length) {
    const tr = el('tr', {}, body);
    el('td', { text: `${t('table.more')} (${result.counts.total})`, attrs: { colspan: columns.length } }, tr);
  }
}

/** Positives per level × anchor and per box, as the server counted them. */
export function renderCounts(root, spec, result) {
  root.replaceChildren();
  if (!result || !spec) return;
  const counts = result.counts;
  const table = el('table', { cls: 'counts', attrs: { 'data-testid': 'counts-table' } }, root);
  const anchored = result.levels.find((level) => level.anchors);
  const head = el('tr', {}, table);
  el('th', { text: '' }, head);
  if (anchored) anchored.anchors.forEach((_, a) => el('th', { text: `a${a}` }, head));
  else el('th', { text: t('counts.cells') }, head);
  el('th', { text: t('counts.total') }, head);
  result.levels.forEach((level, L) => {
    const tr = el('tr', {}, table);
    el('th', { text: `${level.name} /${level.stride}` }, tr);
    counts.per_level_anchor[L].forEach((n, a) => {
      const td = el('td', { text: String(n) }, tr);
      td.dataset.level = L; td.dataset.anchor = a;
    });
    el('td', { text: String(counts.per_level[L]), attrs: { 'data-level-total': L } }, tr);
  });
  if (counts.per_box.length) {
    const p = el('div', { cls: 'perbox' }, root);
    for (const box of counts.per_box) {
      const item = el('span', { cls: 'boxcount', attrs: { 'data-gt': box.gt } }, p);
      const sw = el('span', { cls: 'swatch' }, item);
      sw.style.background = boxColour(box.gt);
      const rules = Object.entries(box.by_rule).map(([k, v]) => `${ruleLabel(spec, k)} ${v}`).join(', ');
      item.append(`#${box.gt}: ${box.total}${rules ? ` (${rules})` : ''}`);
    }
  }
}
