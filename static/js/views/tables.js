// The positives table and the count per level x anchor (counting rows is not loss math).
import { fmtValue, el } from './format.js';
import { t } from '../i18n.js';
import { boxColour, MAX_TABLE_ROWS } from '../config.js';

export function renderCounts(root, result) {
  root.replaceChildren();
  if (!result) return;
  const maxA = Math.max(1, ...result.levels.map((l) => (l.anchors ? l.anchors.length : 1)));
  const table = el('table', { attrs: { 'data-testid': 'counts-table' } }, root);
  const head = el('tr', {}, table);
  el('th', { text: '' }, head);
  for (let a = 0; a < maxA; a++) el('th', { text: `a${a}` }, head);
  el('th', { text: t('counts.total') }, head);
  result.levels.forEach((level, L) => {
    const tr = el('tr', {}, table);
    el('th', { text: `${level.name} /${level.stride}` }, tr);
    let sum = 0;
    for (let a = 0; a < maxA; a++) {
      const n = result.positives.filter((r) => r.level === L && r.anchor === a).length;
      sum += n;
      const td = el('td', { text: String(n) }, tr);
      td.dataset.level = L; td.dataset.anchor = a;
    }
    el('td', { text: String(sum) }, tr);
  });
  // per box and per rule
  const perBox = new Map();
  for (const r of result.positives) {
    const entry = perBox.get(r.gt) || new Map();
    entry.set(r.rule, (entry.get(r.rule) || 0) + 1);
    perBox.set(r.gt, entry);
  }
  if (perBox.size) {
    const p = el('div', { cls: 'hint' }, root);
    p.append(`${t('counts.perBox')}: `);
    for (const [gt, rules] of [...perBox.entries()].sort((a, b) => a[0] - b[0])) {
      const sw = el('span', { cls: 'sw' }, p);
      sw.style.borderColor = boxColour(gt);
      const total = [...rules.values()].reduce((x, y) => x + y, 0);
      p.append(`#${gt}: ${total} (${[...rules.entries()].map(([k, v]) => `${k} ${v}`).join(', ')})  `);
    }
  }
}

export function renderPositivesTable(root, result, onPick) {
  root.replaceChildren();
  if (!result) return;
  const fixed = ['gt', 'level', 'anchor', 'gi', 'gj', 'rule'];
  const extra = [];
  for (const r of result.positives) for (const k of Object.keys(r)) if (!fixed.includes(k) && !extra.includes(k)) extra.push(k);
  const head = el('tr', {}, el('thead', {}, root));
  for (const k of [...fixed, ...extra]) {
    const th = el('th', { text: k }, head);
    if (result.columns?.[k]) th.title = result.columns[k];
  }
  const body = el('tbody', {}, root);
  result.positives.slice(0, MAX_TABLE_ROWS).forEach((r) => {
    const tr = el('tr', { cls: 'posrow', attrs: { tabindex: 0, 'data-testid': 'positive-row' } }, body);
    Object.assign(tr.dataset, { gt: r.gt, level: r.level, anchor: r.anchor, gi: r.gi, gj: r.gj, rule: r.rule });
    for (const k of fixed) {
      const td = el('td', { text: k === 'level' ? (result.levels[r.level]?.name ?? r.level) : String(r[k]) }, tr);
      if (k === 'gt') td.style.borderLeft = `4px solid ${boxColour(r.gt)}`;
    }
    for (const k of extra) el('td', { text: k in r ? fmtValue(r[k]) : '' }, tr);
    const pick = () => onPick?.(r);
    tr.addEventListener('click', pick);
    tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { pick(); e.preventDefault(); } });
  });
  if (result.positives.length > MAX_TABLE_ROWS) {
    const tr = el('tr', {}, body);
    el('td', { text: `${result.positives.length - MAX_TABLE_ROWS} ${t('table.more')}`, attrs: { colspan: fixed.length + extra.length } }, tr);
  }
}

export function renderNotes(root, result) {
  root.replaceChildren();
  for (const note of result?.notes || []) el('li', { text: note }, root);
}
