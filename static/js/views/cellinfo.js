// Cell inspector: every number the code computed for one cell of one level, with formulas filled
// in from the server's operands. Nothing is recomputed here.
import { decodeLevel } from '../api.js';
import { fmt, fmtValue, el } from './format.js';
import { t } from '../i18n.js';
import { boxColour } from '../config.js';

const REQUIRED = new Set(['gt', 'level', 'anchor', 'gi', 'gj', 'rule']);

/** Formula lines for known columns: (row, ctx) -> [text, verdictClass?] or null. */
const FORMULAS = {
  r_max(row, ctx) {
    const box = ctx.boxes[row.gt];
    const anchor = ctx.level.anchors?.[row.anchor];
    const limit = ctx.params.anchor_t;
    if (!box || !anchor) return null;
    const w = +(box.x2 - box.x1).toFixed(2), h = +(box.y2 - box.y1).toFixed(2);
    const [aw, ah] = anchor;
    let text = `r_max = max(w/aw, aw/w, h/ah, ah/h) = max(${fmt(w)}/${fmt(aw)}, ${fmt(aw)}/${fmt(w)}, ${fmt(h)}/${fmt(ah)}, ${fmt(ah)}/${fmt(h)}) = ${fmt(row.r_max)}`;
    if (limit === undefined) return [text];
    const pass = row.r_max < limit; // the server's comparison is what made the row; this shows it
    text += ` ${pass ? '<' : '≥'} anchor_t = ${fmt(limit)} ${pass ? '✓' : '✗'}`;
    return [text, pass ? 'ok' : 'no'];
  },
  tbox(row) {
    const v = row.tbox;
    if (!Array.isArray(v) || v.length < 4) return null;
    return [`tbox = (x − gi, y − gj, w, h) in cells = (${v.map(fmt).join(', ')})\n  offset from cell (${row.gi}, ${row.gj}) = (${fmt(v[0])}, ${fmt(v[1])}); decode 2σ(t)−0.5 reaches (−0.5, 1.5)`];
  },
  iou(row, ctx) {
    const gr = ctx.params.gr;
    return [`IoU(pred, target) = ${fmt(row.iou)}${row.tobj !== undefined ? `;  tobj = (1−gr) + gr·clamp(IoU, 0) = ${fmt(row.tobj)}${gr !== undefined ? ` (gr = ${fmt(gr)})` : ''}` : ''}`];
  },
};

export function renderCellInfo(root, ctx) {
  // ctx: {result, levelIndex, gi, gj, boxes, params}
  root.replaceChildren();
  const { result, levelIndex, gi, gj } = ctx;
  if (!result) return;
  const level = result.levels[levelIndex];
  if (!level) return;
  const full = { ...ctx, level, params: { ...(result.scene?.params || {}), ...ctx.params } };
  el('h4', { text: `${level.name} (stride ${level.stride}) · cell gi=${gi}, gj=${gj} · x ${gi * level.stride}–${(gi + 1) * level.stride} px, y ${gj * level.stride}–${(gj + 1) * level.stride} px` }, root);
  const rows = result.positives.filter((r) => r.level === levelIndex && r.gi === gi && r.gj === gj);
  if (!rows.length) el('p', { text: t('cell.none'), cls: 'hint' }, root);
  for (const row of rows) {
    const head = el('div', { cls: 'formula' }, root);
    const sw = el('span', { cls: 'sw' }, head);
    sw.style.borderColor = boxColour(row.gt);
    head.append(` ${t('cell.positive')}: gt #${row.gt}, anchor ${row.anchor}${level.anchors ? ` (${level.anchors[row.anchor].map(fmt).join('×')} px)` : ''}, rule "${row.rule}"`);
    const shown = new Set();
    for (const [name, formula] of Object.entries(FORMULAS)) {
      if (!(name in row)) continue;
      const out = formula(row, full);
      if (!out) continue;
      shown.add(name);
      if (name === 'iou') shown.add('tobj');
      const line = el('div', { cls: `formula ${out[1] || ''}`, text: out[0] }, root);
      line.dataset.column = name;
    }
    for (const [name, value] of Object.entries(row)) {
      if (REQUIRED.has(name) || shown.has(name)) continue;
      const line = el('div', { cls: 'formula' }, root);
      line.dataset.column = name;
      line.append(`${name} = ${fmtValue(value)}`);
      const doc = result.columns?.[name];
      if (doc) el('span', { cls: 'coldoc', text: `  — ${doc}` }, line);
    }
  }
  const names = Object.keys(result.maps || {});
  if (names.length) {
    el('h4', { text: t('cell.maps') }, root);
    for (const name of names) {
      const lvl = result.maps[name].levels[levelIndex];
      if (!lvl) continue;
      const { shape, data } = decodeLevel(lvl);
      const [A, H, W] = shape;
      if (gj >= H || gi >= W) continue;
      const values = [];
      for (let a = 0; a < A; a++) values.push(fmt(data[a * H * W + gj * W + gi]));
      const line = el('div', { cls: 'formula', text: `${name}[${A > 1 ? 'a=0..' + (A - 1) : 'a'}, ${gj}, ${gi}] = ${values.join(', ')}` }, root);
      line.dataset.map = name;
      const doc = result.maps[name].doc || result.map_names?.[name];
      if (doc) el('span', { cls: 'coldoc', text: `  — ${doc}` }, line);
    }
  }
}
