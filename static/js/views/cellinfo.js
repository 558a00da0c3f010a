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
  offset(row) {
    const v = row.offset;
    if (!Array.isArray(v)) return null;
    const outside = v.some((x) => x < 0 || x > 1);
    return [`offset = box centre − cell (${row.gi}, ${row.gj}) = (${v.map(fmt).join(', ')}) cells` +
      (outside ? `  — outside [0, 1]: this is a neighbour cell ("${row.rule}"), reachable because the decode spans (−0.5, 1.5)` : '  — inside [0, 1]: the centre lies in this cell')];
  },
  pxy(row) {
    if (!Array.isArray(row.pxy)) return null;
    return [`decode xy = 2σ(t_xy) − 0.5 = (${row.pxy.map(fmt).join(', ')})  vs target offset (${(row.offset || row.tbox || []).slice(0, 2).map(fmt).join(', ')})`];
  },
  pwh(row) {
    if (!Array.isArray(row.pwh)) return null;
    const anch = Array.isArray(row.anch) ? ` with anchor (${row.anch.map(fmt).join(', ')}) cells` : '';
    const target = Array.isArray(row.tbox) ? `  vs target wh (${row.tbox.slice(2, 4).map(fmt).join(', ')})` : '';
    return [`decode wh = (2σ(t_wh))²·anchor = (${row.pwh.map(fmt).join(', ')})${anch}${target}; reach (0, 4)·anchor`];
  },
  ciou(row) {
    if (!['iou', 'rho2', 'c2', 'alpha', 'v'].every((k) => k in row)) return [`CIoU = ${fmt(row.ciou)}`];
    return [`CIoU = IoU − ρ²/c² − α·v = ${fmt(row.iou)} − ${fmt(row.rho2)}/${fmt(row.c2)} − ${fmt(row.alpha)}·${fmt(row.v)} = ${fmt(row.ciou)};  box loss term 1 − CIoU`];
  },
  align_metric(row, ctx) {
    const { alpha, beta } = ctx.params;
    if (!('s' in row && 'u' in row) || alpha === undefined || beta === undefined) return null;
    return [`t = s^α · u^β = ${fmt(row.s)}^${fmt(alpha)} · ${fmt(row.u)}^${fmt(beta)} = ${fmt(row.align_metric)}` +
      ('topk_rank' in row ? `;  rank ${row.topk_rank} among this box's candidates (top-k = ${fmt(ctx.params.topk)})` : '')];
  },
  tobj(row, ctx) {
    const gr = ctx.params.gr;
    const src = 'ciou' in row ? row.ciou : row.iou;
    let text = gr !== undefined
      ? `tobj = (1−gr) + gr·clamp(CIoU, 0) = (1−${fmt(gr)}) + ${fmt(gr)}·clamp(${fmt(src)}, 0) = ${fmt(row.tobj)}`
      : `tobj = ${fmt(row.tobj)}`;
    let verdict;
    if ('tobj_written' in row) {
      text += row.tobj_written ? '  ✓ this write is the one kept' : '  ✗ overwritten by a later row for the same slot (last write wins)';
      verdict = row.tobj_written ? 'ok' : 'no';
    }
    return [text, verdict];
  },
};
const ALSO_SHOWN = { align_metric: ['s', 'u', 'topk_rank'], ciou: ['iou', 'rho2', 'c2', 'alpha', 'v'], tobj: ['tobj_written'], offset: [], pxy: [], pwh: ['anch'] };

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
      for (const extra of ALSO_SHOWN[name] || []) shown.add(extra);
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
  renderAnchorFilter(root, result, level, full);
  renderNeighbourReasons(root, result, level, rows);
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
      if (name === 'obj_bce' && rows.length) el('div', { cls: 'coldoc', text: t('cell.bceFloor') }, root);
    }
  }
}

/**
 * For each (box, anchor) whose centre cell this is: which neighbour rules fired and, for those
 * that did not, the server's reason (from the "<level>.neighbours" stage, when the scheme has one).
 */
function renderNeighbourReasons(root, result, level, rows) {
  const stage = result.stages?.find((st) => st.name.endsWith(`${level.name}.neighbours`));
  if (!stage) return;
  const tensor = (name) => stage.tensors.find((x) => x.name === name);
  const [target, anchor, fired, reason, frac, fracMirrored] = ['target', 'anchor', 'fired', 'reason', 'fraction', 'fraction_mirrored'].map(tensor);
  if (![target, anchor, fired, reason].every((x) => x && x.data)) return;
  const directions = stage.values?.directions || ['left', 'up', 'right', 'down'];
  const reasons = stage.values?.reasons || [];
  const centreRows = rows.filter((r) => r.rule === 'centre');
  if (!centreRows.length) return;
  el('h4', { text: `${t('cell.neighbours')} (g = ${fmt(stage.values?.g)})` }, root);
  for (const r of centreRows) {
    const k = target.data.findIndex((t, i) => t === r.gt && anchor.data[i] === r.anchor);
    if (k < 0) continue;
    const D = directions.length;
    const parts = directions.map((dir, d) => {
      const f = d < 2 ? frac?.data?.[k * 2 + d] : fracMirrored?.data?.[k * 2 + d - 2];
      const fractionText = f === undefined ? '' : ` frac ${fmt(f)}`;
      return fired.data[k * D + d] ? `${dir}: fired (${fractionText.trim()})` : `${dir}: not fired —${fractionText}, ${reasons[reason.data[k * D + d]] ?? 'rule not met'}`;
    });
    const line = el('div', { cls: 'formula', text: `gt #${r.gt} anchor ${r.anchor}: ${parts.join('; ')}` }, root);
    line.dataset.neighbours = `${r.gt},${r.anchor}`;
  }
  el('div', { cls: 'coldoc', text: '(right and down test the mirrored coordinate: grid size − x)' }, root);
}

/**
 * For each box whose centre lies in this cell: every anchor of the level with its r_max and the
 * code's keep decision (the "<level>.anchor_filter" stage), including the anchors it rejected.
 */
function renderAnchorFilter(root, result, level, ctx) {
  const stage = result.stages?.find((st) => st.name.endsWith(`${level.name}.anchor_filter`));
  if (!stage || !level.anchors) return;
  const rMax = stage.tensors.find((x) => x.name === 'r_max');
  const keep = stage.tensors.find((x) => x.name === 'keep');
  if (!rMax?.data || !keep?.data) return;
  const [A, N] = rMax.shape;
  const limit = stage.values?.anchor_t ?? ctx.params.anchor_t;
  const s = level.stride;
  ctx.boxes.forEach((box, gt) => {
    if (gt >= N) return;
    const cx = (box.x1 + box.x2) / 2, cy = (box.y1 + box.y2) / 2;
    if (Math.floor(cx / s) !== ctx.gi || Math.floor(cy / s) !== ctx.gj) return;
    el('h4', { text: `${t('cell.anchorFilter')}: gt #${gt}` }, root);
    for (let a = 0; a < A; a++) {
      const r = rMax.data[a * N + gt];
      const kept = Boolean(keep.data[a * N + gt]);
      const [aw, ah] = level.anchors[a];
      const line = el('div', { cls: `formula ${kept ? 'ok' : 'no'}`, text: `anchor ${a} (${fmt(aw)}×${fmt(ah)} px): r_max = ${fmt(r)} ${kept ? '<' : '≥'} anchor_t = ${fmt(limit)} ${kept ? '✓ kept' : '✗ rejected (strict <)'}` }, root);
      line.dataset.anchorFilter = `${gt},${a}`;
    }
  });
}
