// The cell inspector: three lines first (positive or not and why, its target, its loss), then the
// named groups the scheme declares, each expandable, with the formulas filled in; the tests the
// code ran at this cell; every map's value here; DFL's bins as bar charts. Nothing is computed
// here: rows, checks and map values are the server's, looked up by cell.
import { decodeLevel } from '../api.js';
import { boxColour } from './colour.js';
import { el, fillFormula, fmt, fmtUnit, fmtValue, ruleLabel } from './format.js';
import * as geo from './geometry.js';
import { t } from '../i18n.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Rows, checks and map values of one cell of one level. */
export function cellFacts(result, levelIndex, gi, gj) {
  const rows = result.positives.filter((r) => r.level === levelIndex && r.gi === gi && r.gj === gj);
  const checks = (result.checks || []).filter((c) => c.level === levelIndex && c.gi === gi && c.gj === gj);
  const maps = {};
  for (const [name, map] of Object.entries(result.maps || {})) {
    const level = map.levels?.[levelIndex];
    if (!level) continue;
    const { shape, data } = decodeLevel(level);
    if (!geo.insideMap(shape, gi, gj)) continue;
    maps[name] = shape.length && Array.from({ length: shape[0] }, (_, a) => data[geo.mapIndex(shape, a, gj, gi)]);
  }
  return { rows, checks, maps };
}

function columnLine(spec, name, row) {
  const column = spec.columns.find((c) => c.name === name);
  if (!column || !(name in row)) return null;
  return `${name} = ${fmtUnit(row[name], column.unit)}`;
}

/** The three first lines for a hovered cell (data-testid="inspector-summary"). */
function summary(root, spec, result, levelIndex, facts) {
  const box = el('div', { cls: 'summary3', attrs: { 'data-testid': 'inspector-summary' } }, root);
  const level = result.levels[levelIndex];
  const glyphs = Object.fromEntries(spec.rules.map((r) => [r.name, r.glyph]));
  const line1 = el('div', { cls: 'line1' }, box);
  if (facts.rows.length) {
    line1.classList.add('pos');
    for (const r of facts.rows) {
      const part = el('span', { cls: 'who' }, line1);
      const sw = el('span', { cls: 'swatch' }, part);
      sw.style.background = boxColour(r.gt);
      const anchor = level.anchors ? ` a${r.anchor}` : '';
      part.append(`${glyphs[r.rule] ?? ''} ${t('insp.positive')} #${r.gt}${anchor} · ${ruleLabel(spec, r.rule)}`);
    }
  } else {
    const failed = facts.checks.filter((c) => !c.passed);
    line1.classList.add('neg');
    line1.textContent = failed.length ? `${t('insp.notPositive')}: ${failed[0].text}`
      : t('insp.background');
    line1.dataset.testid = 'inspector-why';
  }
  const target = el('div', { cls: 'line2' }, box);
  const loss = el('div', { cls: 'line3' }, box);
  const ins = spec.inspector;
  if (facts.rows.length) {
    const row = facts.rows[0];
    target.textContent = `${t('insp.target')}: ${ins.target_columns.map((n) => columnLine(spec, n, row)).filter(Boolean).join(' · ') || '–'}`;
    loss.textContent = `${t('insp.loss')}: ${ins.loss_columns.map((n) => columnLine(spec, n, row)).filter(Boolean).join(' · ') || '–'}`;
  } else {
    const tm = ins.target_map && facts.maps[ins.target_map];
    const lm = ins.loss_map && facts.maps[ins.loss_map];
    target.textContent = `${t('insp.target')}: ${tm ? `${ins.target_map} = ${fmtValue(tm)}` : '–'}`;
    loss.textContent = `${t('insp.loss')}: ${lm ? `${ins.loss_map} = ${fmtValue(lm)}` : '–'}`;
  }
}

/** Four small bar charts (one per side) of a positive's DFL softmax, with the target bins. */
function dflBars(root, row) {
  const probs = row.dfl_probs;
  if (!Array.isArray(probs) || !Array.isArray(row.bin_left)) return;
  const sides = ['l', 't', 'r', 'b'];
  const wrap = el('div', { cls: 'dfl', attrs: { 'data-testid': 'dfl-bars' } }, root);
  const perSide = geo.chunks(probs, sides.length);
  sides.forEach((side, k) => {
    const values = perSide[k];
    const box = el('div', { cls: 'dflside' }, wrap);
    el('div', { cls: 'dflhead', text: `${side}: E = ${fmt(row.dfl_expected[k])} · ${t('insp.dflTarget')} ${fmt(row.ltrb_target[k])} → ${t('insp.bins')} ${row.bin_left[k]} (${fmt(row.weight_left[k])}) + ${row.bin_right[k]} (${fmt(row.weight_right[k])})` }, box);
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 160 40');
    svg.setAttribute('class', 'dflsvg');
    svg.dataset.side = side;
    for (const bar of geo.barRects(values, 160, 40)) {
      const r = document.createElementNS(SVG_NS, 'rect');
      for (const [key, v] of Object.entries(bar.rect)) r.setAttribute({ x: 'x', y: 'y', w: 'width', h: 'height' }[key], v);
      const target = bar.index === row.bin_left[k] || bar.index === row.bin_right[k];
      r.setAttribute('class', target ? 'bar target' : 'bar');
      r.dataset.bin = bar.index;
      r.dataset.prob = values[bar.index];
      const title = document.createElementNS(SVG_NS, 'title');
      title.textContent = `bin ${bar.index}: p = ${fmt(values[bar.index])}`;
      r.append(title);
      svg.append(r);
    }
    box.append(svg);
  });
}

/**
 * Render the inspector for cell (gi, gj) of level `levelIndex`.
 * ctx: {spec, result, levelIndex, gi, gj, onRow(row) }
 */
export function renderInspector(root, ctx) {
  root.replaceChildren();
  const { spec, result, levelIndex, gi, gj } = ctx;
  if (!result || !spec) return;
  const level = result.levels[levelIndex];
  if (!level) return;
  el('h3', { cls: 'cellhead', text: `${level.name} · ${t('insp.cell')} (${gi}, ${gj})` }, root);
  const facts = cellFacts(result, levelIndex, gi, gj);
  summary(root, spec, result, levelIndex, facts);
  const groups = spec.inspector.groups;
  for (const row of facts.rows) {
    const head = el('div', { cls: 'rowhead' }, root);
    const sw = el('span', { cls: 'swatch' }, head);
    sw.style.background = boxColour(row.gt);
    head.append(` #${row.gt}${level.anchors ? ` · a${row.anchor}` : ''} · ${ruleLabel(spec, row.rule)}`);
    for (const group of groups) {
      const columns = spec.columns.filter((c) => c.group === group.name && c.name in row);
      if (!columns.length) continue;
      const details = el('details', { cls: 'group', attrs: { 'data-group': group.name } }, root);
      if (group.name === groups[0]?.name) details.open = false;
      el('summary', { text: group.title }, details);
      const shown = new Set();
      for (const c of columns) {
        if (!c.formula) continue;
        const line = el('div', { cls: 'formula', text: fillFormula(c.formula, row) }, details);
        line.dataset.column = c.name;
        for (const [, name] of c.formula.matchAll(/\{([a-z_0-9]+)\}/gi)) shown.add(name);
        shown.add(c.name);
      }
      for (const c of columns) {
        if (shown.has(c.name) || c.name === 'dfl_probs') continue;
        const line = el('div', { cls: 'kv' }, details);
        line.dataset.column = c.name;
        el('code', { text: c.name }, line);
        line.append(` = ${fmtUnit(row[c.name], c.unit)}`);
        el('span', { cls: 'coldoc', text: ` — ${c.doc}` }, line);
      }
      if (group.name === 'dfl') { details.open = true; dflBars(details, row); }
    }
  }
  if (facts.checks.length) {
    const details = el('details', { cls: 'group', attrs: { 'data-group': 'checks', open: '' } }, root);
    el('summary', { text: t('insp.tests') }, details);
    const said = new Set();
    for (const c of facts.checks) {
      const key = `${c.gt}|${c.test}|${c.text}`;
      if (said.has(key)) continue; // the same neighbour test, repeated for each kept anchor
      said.add(key);
      const line = el('div', { cls: `check ${c.passed ? 'pass' : 'fail'}`, text: `${c.passed ? '✓' : '✗'} #${c.gt} ${c.text}` }, details);
      Object.assign(line.dataset, { test: c.test, gt: c.gt, anchor: c.anchor, passed: c.passed });
    }
  }
  const mapNames = Object.keys(facts.maps);
  if (mapNames.length) {
    const details = el('details', { cls: 'group', attrs: { 'data-group': 'maps' } }, root);
    el('summary', { text: t('insp.maps') }, details);
    for (const name of mapNames) {
      const declared = spec.maps.find((m) => m.name === name);
      const line = el('div', { cls: 'kv' }, details);
      line.dataset.map = name;
      el('code', { text: name }, line);
      line.append(` = ${fmtValue(facts.maps[name])}`);
      if (declared) el('span', { cls: 'coldoc', text: ` — ${declared.doc}` }, line);
    }
  }
}

/** A set-prediction scheme: one query, its matched pair (if any) with the cost filled in, its tests. */
export function renderQueryInspector(root, { spec, result, query }) {
  root.replaceChildren();
  const row = result.queries?.find((q) => q.query === query);
  if (!row) return;
  el('h3', { cls: 'cellhead', text: `${t('insp.query')} ${query}` }, root);
  const box = el('div', { cls: 'summary3', attrs: { 'data-testid': 'inspector-summary' } }, root);
  const pair = result.positives.find((r) => r.query === query);
  const line1 = el('div', { cls: `line1 ${pair ? 'pos' : 'neg'}` }, box);
  if (pair) {
    const sw = el('span', { cls: 'swatch' }, line1);
    sw.style.background = boxColour(pair.gt);
    line1.append(`${t('insp.matchedTo')} #${pair.gt} · ${ruleLabel(spec, pair.rule)}`);
  } else {
    line1.textContent = t('insp.noObject');
  }
  const columns = spec.query_columns.filter((c) => c.name in row && c.name !== 'query');
  el('div', { cls: 'line2', text: columns.map((c) => `${c.name} = ${fmtUnit(row[c.name], c.unit)}`).join(' · ') }, box);
  if (pair) {
    for (const group of spec.inspector.groups) {
      const cols = spec.columns.filter((c) => c.group === group.name && c.name in pair);
      if (!cols.length) continue;
      const details = el('details', { cls: 'group', attrs: { 'data-group': group.name, open: '' } }, root);
      el('summary', { text: group.title }, details);
      for (const c of cols) {
        const line = el('div', { cls: c.formula ? 'formula' : 'kv', attrs: { 'data-column': c.name } }, details);
        line.textContent = c.formula ? fillFormula(c.formula, pair) : `${c.name} = ${fmtUnit(pair[c.name], c.unit)}`;
      }
    }
  }
  const checks = (result.checks || []).filter((c) => c.anchor === query);
  if (checks.length) {
    const details = el('details', { cls: 'group', attrs: { 'data-group': 'checks', open: '' } }, root);
    el('summary', { text: t('insp.tests') }, details);
    for (const c of checks) el('div', { cls: `check ${c.passed ? 'pass' : 'fail'}`, text: `${c.passed ? '✓' : '✗'} #${c.gt} ${c.text}` }, details);
  }
}
