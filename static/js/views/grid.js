// The big picture: the image with its ground-truth boxes (editable), the grid of one level, the
// positive cells coloured by their box and marked with their rule's glyph (declared by the scheme),
// the tests the code ran for the selected box written on the cells they are about, its offsets,
// predicted boxes and anchors to scale, a heat layer, and linked highlights. Pan and zoom anywhere.
// Every number drawn comes from the server's result; geometry.js places it.
import { boxColour, paintHeat } from './colour.js';
import { fmt, el } from './format.js';
import { t } from '../i18n.js';
import { decodeLevel } from '../api.js';
import { MIN_BOX_PX, MAX_GRID_CHECKS } from '../config.js';
import * as geo from './geometry.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
const HANDLE_SCREEN_PX = 9;

function svgEl(tag, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

/** setAttribute only when the value differs: re-setting a pattern's attributes, even to the same value,
 * invalidates every element painted with it (the whole grid), which then repaints on every update. */
function setAttr(node, name, value) {
  if (node.getAttribute(name) !== String(value)) node.setAttribute(name, value);
}

function setRect(node, r) {
  node.setAttribute('x', r.x); node.setAttribute('y', r.y);
  node.setAttribute('width', r.w); node.setAttribute('height', r.h);
}

export class GridView {
  /**
   * @param {HTMLElement} wrap  container
   * @param {object} options    {editable, testid, onBoxes(boxes, {dragging}), onSelect(i), onHover(cell|null),
   *                             onView(view), onPick(cell), currentClass(), nudgeStride()}
   */
  constructor(wrap, options) {
    this.wrap = wrap;
    this.options = options;
    this.width = 0; this.height = 0;
    this.view = { x0: 0, y0: 0, w: 1, h: 1 };
    this.boxes = [];
    this.selected = -1;
    this.drag = null;
    this.result = null;
    this.spec = null;
    this.level = null;
    const id = options.testid || 'scene';
    this.svg = svgEl('svg', { role: 'application', tabindex: 0, 'data-testid': id, preserveAspectRatio: 'none', class: 'gridview' });
    this.svg.setAttribute('aria-label', 'image area: draw and edit ground-truth boxes; scroll to zoom, shift-drag to pan');
    const defs = svgEl('defs', {}, this.svg);
    this.pattern = svgEl('pattern', { id: `${id}-cells`, patternUnits: 'userSpaceOnUse', width: 8, height: 8 }, defs);
    this.patternPath = svgEl('path', { class: 'gridline', fill: 'none' }, this.pattern);
    // The background picture and the heat layer live in a second SVG under this one, with the same
    // viewBox, on a compositor layer of its own: a drag replaces the heat image on every update, and
    // in one layer with thousands of positive cells that repainted the whole grid each time.
    this.under = svgEl('svg', { class: 'gridview under', preserveAspectRatio: 'none', 'aria-hidden': 'true' });
    this.bg = svgEl('image', { class: 'bg', preserveAspectRatio: 'none', visibility: 'hidden' }, this.under);
    this.heat = svgEl('image', { class: 'heat', preserveAspectRatio: 'none', visibility: 'hidden', 'data-testid': `${id}-heat` }, this.under);
    this.gridRect = svgEl('rect', { fill: `url(#${id}-cells)`, class: 'gridrect', 'data-testid': `${id}-grid` }, this.svg);
    this.cellLayer = svgEl('g', { class: 'cells' }, this.svg);
    this.cellNodes = new Map(); // key -> the positive cell's nodes (see renderResult)
    this.checkLayer = svgEl('g', { class: 'checks' }, this.svg);
    this.boxLayer = svgEl('g', { class: 'boxes' }, this.svg);
    this.overLayer = svgEl('g', { class: 'over' }, this.svg);
    this.glowLayer = svgEl('g', { class: 'glow' }, this.svg);
    this.hoverRect = svgEl('rect', { class: 'hovercell', visibility: 'hidden' }, this.svg);
    // The box being dragged is lifted into a third SVG above this one, also on a layer of its own: it
    // moves with every pointer event (60 Hz), and in this SVG each move repainted the thousands of cells.
    this.lifted = svgEl('svg', { class: 'gridview lifted', preserveAspectRatio: 'none', 'aria-hidden': 'true' });
    this.canvas = document.createElement('canvas');
    wrap.append(this.under, this.svg, this.lifted);
    this.boxEls = [];
    this.heatRange = null;
    if (options.editable) this.bindEditing();
    this.bindViewing();
  }

  // ---- image and view ------------------------------------------------------------------------
  setImage(width, height) {
    if (width === this.width && height === this.height) return;
    this.width = width; this.height = height;
    setRect(this.gridRect, { x: 0, y: 0, w: width, h: height });
    for (const layer of [this.bg, this.heat]) setRect(layer, { x: 0, y: 0, w: width, h: height });
  }

  setView(view) {
    this.view = view;
    for (const svg of [this.under, this.svg, this.lifted]) svg.setAttribute('viewBox', `${view.x0} ${view.y0} ${view.w} ${view.h}`);
    this.wrap.style.aspectRatio = `${view.w} / ${view.h}`;
    const width = this.screenWidth();
    for (const svg of [this.svg, this.lifted]) {
      svg.style.setProperty('--u', String(geo.screenSize(1, view, width)));
      svg.style.setProperty('--label', `${geo.screenSize(12, view, width)}px`);
      svg.style.setProperty('--small', `${geo.screenSize(10, view, width)}px`);
    }
    if (this.boxes.length) this.renderBoxes(this.boxes, this.selected);
    if (this.result && this.queryOptions) this.renderQueries(this.result, this.queryOptions);
    else if (this.result && this.lastOptions) this.renderResult(this.result, this.lastOptions);
  }

  screenWidth() { return (this.drag?.rect ?? this.svg.getBoundingClientRect()).width || 600; }

  setBackground(url) {
    this.bg.setAttribute('visibility', url ? 'visible' : 'hidden');
    if (url) this.bg.setAttribute('href', url); else this.bg.removeAttribute('href');
  }

  toImage(event) {
    return geo.toImage(event, this.drag?.rect ?? this.svg.getBoundingClientRect(), this.view);
  }

  bindViewing() {
    this.svg.addEventListener('wheel', (e) => {
      e.preventDefault();
      this.options.onView?.(geo.wheelZoom(this.view, e.deltaY, this.toImage(e), this.width, this.height));
    }, { passive: false });
    this.svg.addEventListener('pointerleave', () => { if (!this.drag) this.hover(null); });
    this.svg.addEventListener('pointermove', (e) => { if (!this.drag) this.hover(this.toImage(e)); });
    this.svg.addEventListener('click', (e) => {
      if (this.suppressClick) { this.suppressClick = false; return; }
      const cell = this.level && geo.pointToCell(this.level.stride, this.level.grid, this.toImage(e));
      if (cell) this.options.onPick?.(cell);
    });
  }

  // ---- boxes ---------------------------------------------------------------------------------
  /** Draw the boxes; `only` (an index) redraws just that box, e.g. the one being dragged. */
  renderBoxes(boxes, selected, only = null) {
    this.boxes = boxes.map((b) => ({ ...b }));
    this.selected = selected;
    for (const node of this.boxEls.splice(boxes.length)) node.g.remove();
    boxes.forEach((_, i) => { this.boxEls[i] ??= this.makeBoxEl(); });
    const handle = geo.screenSize(HANDLE_SCREEN_PX, this.view, this.screenWidth());
    boxes.forEach((b, i) => {
      if (only !== null && i !== only) return;
      const node = this.boxEls[i];
      const colour = boxColour(i);
      setRect(node.rect, geo.boxRect(b));
      node.rect.setAttribute('stroke', colour); node.rect.setAttribute('fill', colour);
      node.g.classList.toggle('selected', i === selected);
      node.label.setAttribute('x', b.x1); node.label.setAttribute('y', b.y1);
      node.label.setAttribute('fill', colour);
      node.label.textContent = `#${i} · cls ${b.cls}`;
      node.g.dataset.index = i; node.g.dataset.cls = b.cls;
      node.g.setAttribute('aria-label', `box ${i}, class ${b.cls}`);
      const corners = { nw: [b.x1, b.y1], ne: [b.x2, b.y1], sw: [b.x1, b.y2], se: [b.x2, b.y2] };
      for (const [name, [x, y]] of Object.entries(corners)) {
        const hd = node.handles[name];
        setRect(hd, geo.centredRect(x, y, handle, handle));
        hd.setAttribute('visibility', i === selected && this.options.editable ? 'visible' : 'hidden');
      }
    });
  }

  /** During a drag, box `index` is drawn in the lifted SVG (see the constructor); drop() puts it back. */
  lift(index) {
    const node = this.boxEls[index];
    if (!node || node.g.parentNode === this.lifted) return;
    this.drop();
    this.liftedIndex = index;
    this.liftedFocus = document.activeElement === node.g; // moving a node blurs it: drop() focuses it again
    this.lifted.appendChild(node.g);
  }

  drop() {
    const index = this.liftedIndex;
    this.liftedIndex = null;
    const node = index === null || index === undefined ? null : this.boxEls[index];
    if (!node || node.g.parentNode !== this.lifted) return;
    const next = this.boxEls.slice(index + 1).find((n) => n.g.parentNode === this.boxLayer);
    this.boxLayer.insertBefore(node.g, next ? next.g : null); // back in its place: boxes are drawn in index order
    if (this.liftedFocus) node.g.focus({ preventScroll: true });
  }

  makeBoxEl() {
    const g = svgEl('g', { class: 'gtbox', 'data-testid': 'gt-box', tabindex: this.options.editable ? 0 : -1 }, this.boxLayer);
    const rect = svgEl('rect', { class: 'gt', 'data-part': 'body', 'vector-effect': 'non-scaling-stroke' }, g);
    const label = svgEl('text', { class: 'gtlabel' }, g);
    const handles = {};
    for (const name of ['nw', 'ne', 'sw', 'se']) handles[name] = svgEl('rect', { class: `handle ${name}`, 'data-part': name, 'data-testid': `handle-${name}` }, g);
    g.addEventListener('focus', () => { const i = Number(g.dataset.index); if (i !== this.selected) this.options.onSelect?.(i); });
    return { g, rect, label, handles };
  }

  bindEditing() {
    const svg = this.svg;
    svg.addEventListener('pointerdown', (e) => {
      const panning = e.button === 1 || (e.button === 0 && (e.shiftKey || e.altKey));
      if (e.button !== 0 && !panning) return;
      const rect = svg.getBoundingClientRect();
      try { svg.setPointerCapture(e.pointerId); } catch { /* a synthetic pointer cannot be captured */ }
      if (panning) {
        this.drag = { mode: 'pan', startClient: { x: e.clientX, y: e.clientY }, view: { ...this.view }, rect };
        e.preventDefault();
        return;
      }
      const p = this.toImage(e);
      const g = e.target.closest?.('g.gtbox');
      if (e.target.classList?.contains('predbox') && e.target.classList.contains('editable')) {
        const d = e.target.dataset;
        const [x, y, w, h] = ['x', 'y', 'width', 'height'].map((k) => Number(e.target.getAttribute(k)));
        this.drag = { mode: e.shiftKey ? 'pin-se' : 'pin', slot: { level: Number(d.level), anchor: Number(d.anchor), gi: Number(d.gi), gj: Number(d.gj) },
                      start: p, orig: geo.rectBox({ x, y, w, h }), node: e.target, rect };
        e.preventDefault();
        return;
      }
      if (g) {
        const index = Number(g.dataset.index);
        const part = e.target.dataset.part || 'body';
        this.drag = { mode: part === 'body' ? 'move' : part, index, start: p, orig: { ...this.boxes[index] }, rect };
        if (index !== this.selected) this.options.onSelect?.(index);
      } else {
        const cls = this.options.currentClass?.() ?? 0;
        const drawn = { cls, x1: p.x, y1: p.y, x2: p.x, y2: p.y };
        this.boxes.push(drawn);
        const index = this.boxes.indexOf(drawn);
        this.drag = { mode: 'se', index, start: p, orig: { ...this.boxes[index] }, created: true, rect };
        this.options.onSelect?.(index, { silent: true });
      }
      e.preventDefault();
    });
    svg.addEventListener('pointermove', (e) => {
      const d = this.drag;
      if (!d) return;
      if (d.mode === 'pan') {
        this.options.onView?.(geo.panByPointer(d.view, d.startClient, { x: e.clientX, y: e.clientY }, d.rect.width, this.width, this.height));
        d.moved = true;
        return;
      }
      if (d.mode.startsWith('pin')) {
        const b = geo.dragBox(d.orig, d.mode === 'pin' ? 'move' : 'se', ...geo.pointerDelta(d.start, this.toImage(e)));
        setRect(d.node, geo.boxRect(b));
        d.moved = true;
        this.options.onPin?.({ ...d.slot, ...geo.boxCentre(b) }, { dragging: true, pointerTime: e.timeStamp });
        d.last = b;
        return;
      }
      const b = geo.dragBox(d.orig, d.mode, ...geo.pointerDelta(d.start, this.toImage(e)));
      this.boxes[d.index] = b;
      d.moved = true;
      this.renderBoxes(this.boxes, d.index, d.index);
      this.lift(d.index);
      if (geo.bigEnough(b, MIN_BOX_PX)) {
        this.options.onBoxes?.(this.boxes.filter((x) => x === b || geo.bigEnough(x, MIN_BOX_PX)), { dragging: true, pointerTime: e.timeStamp });
      }
    });
    const end = (e) => {
      const d = this.drag;
      if (!d) return;
      this.drag = null;
      this.drop();
      if (svg.hasPointerCapture?.(e.pointerId)) svg.releasePointerCapture(e.pointerId);
      if (d.moved) this.suppressClick = true;
      if (d.mode === 'pan') return;
      if (d.mode.startsWith('pin')) {
        if (d.last) this.options.onPin?.({ ...d.slot, ...geo.boxCentre(d.last) }, { dragging: false, pointerTime: e.timeStamp });
        return;
      }
      const b = this.boxes[d.index];
      if (d.created && !geo.bigEnough(b, MIN_BOX_PX)) {
        this.boxes.splice(d.index, 1);
        this.options.onSelect?.(-1, { silent: true });
        this.suppressClick = false; // a click on empty space picks a cell
        return;
      }
      if (d.moved) this.options.onBoxes?.(this.boxes, { dragging: false, pointerTime: e.timeStamp });
    };
    svg.addEventListener('pointerup', end);
    svg.addEventListener('pointercancel', end);
    svg.addEventListener('keydown', (e) => this.onKey(e));
  }

  onKey(e) {
    const i = this.selected;
    if (!this.boxes[i]) return;
    if (e.key === 'Delete' || e.key === 'Backspace') {
      this.boxes.splice(i, 1);
      this.options.onSelect?.(-1, { silent: true });
      this.options.onBoxes?.(this.boxes, { dragging: false, pointerTime: e.timeStamp });
      this.svg.focus();
      e.preventDefault();
      return;
    }
    const dirs = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (!dirs[e.key]) return;
    const step = e.shiftKey ? (this.options.nudgeStride?.() ?? 8) : 1;
    this.boxes[i] = geo.nudgeBox(this.boxes[i], ...dirs[e.key], step);
    this.renderBoxes(this.boxes, i);
    this.options.onBoxes?.(this.boxes, { dragging: false, pointerTime: e.timeStamp });
    e.preventDefault();
  }

  // ---- hover and highlight -------------------------------------------------------------------
  hover(point) {
    const level = this.level;
    const cell = point && level ? geo.pointToCell(level.stride, level.grid, point) : null;
    if (!cell) {
      this.hovered = null;
      this.hoverRect.setAttribute('visibility', 'hidden');
      this.renderPredictions(null);
      this.options.onHover?.(null);
      return;
    }
    if (this.hovered && this.hovered.gi === cell.gi && this.hovered.gj === cell.gj) return;
    this.hovered = cell;
    this.showCell(cell.gi, cell.gj);
    this.renderPredictions(cell);
    this.options.onHover?.(cell);
  }

  showCell(gi, gj) {
    if (!this.level) return;
    setRect(this.hoverRect, geo.cellRect(this.level.stride, gi, gj));
    this.hoverRect.setAttribute('visibility', 'visible');
  }

  /**
   * Glow the cells [{level, anchor, gi, gj}] of the shown level (linked highlighting). Idempotent and
   * cheap when nothing it depends on changed (every redraw of a drag calls it with the same cells:
   * a stage's thousands of cells would otherwise be rebuilt per update).
   */
  highlight(cells, { testid = 'glow-cell' } = {}) {
    const key = [cells ?? null, this.level?.name, this.level?.stride, this.levelIndex, this.anchorFilter, this.anchorCount, testid];
    if (this.glowKey && key.every((v, i) => v === this.glowKey[i])) return;
    this.glowKey = key;
    this.glowLayer.replaceChildren();
    if (!this.level || !cells) return;
    const L = this.levelIndex;
    const count = this.anchorCount;
    for (const c of cells) {
      if (c.level !== L) continue;
      const r = this.anchorFilter === -1 && count !== 1 && c.anchor !== -1
        ? geo.stripRect(this.level.stride, c.gi, c.gj, c.anchor, count) : geo.cellRect(this.level.stride, c.gi, c.gj);
      const node = svgEl('rect', { class: 'glowcell', 'data-testid': testid, 'vector-effect': 'non-scaling-stroke' }, this.glowLayer);
      setRect(node, r);
      Object.assign(node.dataset, { level: c.level, anchor: c.anchor, gi: c.gi, gj: c.gj });
    }
  }

  /**
   * Mark the slots that changed: added ones solid, removed ones dashed, on the shown level. They fade
   * out (CSS) unless `keep` (the compare view's difference overlay stays).
   */
  flash(added, removed, { keep = false } = {}) {
    this.flashLayer ??= svgEl('g', { class: 'flashes' }, this.svg);
    const frag = document.createDocumentFragment();
    const mark = (slots, kind) => {
      for (const c of slots) {
        if (c.level !== this.levelIndex || !this.level) continue;
        const r = this.anchorCount !== 1 && this.anchorFilter === -1
          ? geo.stripRect(this.level.stride, c.gi, c.gj, c.anchor, this.anchorCount) : geo.cellRect(this.level.stride, c.gi, c.gj);
        const node = svgEl('rect', { class: `flash ${kind}${keep ? ' keep' : ''}`, 'data-testid': `changed-${kind}`, 'vector-effect': 'non-scaling-stroke' }, frag);
        setRect(node, r);
        Object.assign(node.dataset, { gt: c.gt, level: c.level, anchor: c.anchor, gi: c.gi, gj: c.gj });
      }
    };
    mark(added, 'added');
    mark(removed, 'removed');
    this.flashLayer.replaceChildren(frag);
  }

  /** The learner's predicted cells of the shown level, drawn over the grid. */
  renderGuess(cells) {
    this.guessLayer ??= svgEl('g', { class: 'guesses' }, this.svg);
    const frag = document.createDocumentFragment();
    for (const c of this.level ? cells : []) {
      const node = svgEl('rect', { class: 'guesscell', 'data-testid': 'guess-cell', 'vector-effect': 'non-scaling-stroke' }, frag);
      setRect(node, geo.cellRect(this.level.stride, c.gi, c.gj));
      Object.assign(node.dataset, { gi: c.gi, gj: c.gj });
    }
    this.guessLayer.replaceChildren(frag);
  }

  /** The code's answer over a guess: hits, misses (positive, not guessed) and extras (guessed, not positive). */
  renderReveal(answer) {
    this.revealLayer ??= svgEl('g', { class: 'reveals' }, this.svg);
    const frag = document.createDocumentFragment();
    if (answer && this.level && answer.level === this.levelIndex) {
      for (const [kind, cells] of [['hit', answer.hits], ['miss', answer.misses], ['extra', answer.extras]]) {
        for (const [gi, gj] of cells) {
          const node = svgEl('rect', { class: `revealcell ${kind}`, 'data-testid': `reveal-${kind}`, 'vector-effect': 'non-scaling-stroke' }, frag);
          setRect(node, geo.cellRect(this.level.stride, gi, gj));
          Object.assign(node.dataset, { gi, gj });
        }
      }
    }
    this.revealLayer.replaceChildren(frag);
  }

  /** The view moved so that cell (gi, gj) of the shown level is at its centre (zoom kept). */
  viewOnCell(gi, gj) {
    if (!this.level) return this.view;
    return geo.centreViewOn(this.view, geo.rectCentre(geo.cellRect(this.level.stride, gi, gj)), this.width, this.height);
  }

  // ---- the result ----------------------------------------------------------------------------
  /**
   * Draw a server result on level `levelIndex`, anchor `anchor` (-1 = all anchors side by side).
   * options: {spec, heat, selected, checks (bool), seq}
   */
  renderResult(result, options) {
    this.result = result;
    this.lastOptions = options; this.queryOptions = null;
    const { spec, levelIndex, anchor, heat, selected, seq } = options;
    this.spec = spec;
    const L = geo.clampIndex(levelIndex, result.levels.length);
    const level = result.levels[L];
    this.level = level; this.levelIndex = L; this.anchorFilter = anchor;
    const count = level.anchors ? level.anchors.length : 1;
    this.anchorCount = count;
    const s = level.stride;
    setAttr(this.gridRect, 'visibility', 'visible');
    setAttr(this.pattern, 'width', s); setAttr(this.pattern, 'height', s);
    setAttr(this.patternPath, 'd', `M ${s} 0 L 0 0 0 ${s}`);
    this.gridRect.dataset.seq = String(seq ?? '');
    this.gridRect.dataset.level = level.name;
    const roomy = geo.roomyCell(s, this.view, this.screenWidth());
    this.svg.classList.toggle('roomy', roomy);
    const glyphs = Object.fromEntries((spec?.rules || []).map((r) => [r.name, r.glyph]));

    // positive cells: a strip per anchor when all anchors are shown. Keyed by what they show, so a
    // redraw (a drag moves one box of many) touches only the cells that changed, not thousands.
    const cells = document.createDocumentFragment();
    const rows = result.positives.filter((r) => r.level === L && (anchor === -1 || r.anchor === anchor));
    const strips = anchor === -1 && count !== 1;
    const previous = this.cellNodes;
    const next = new Map();
    for (const r of rows) {
      let key = `${L}|${s}|${strips}|${count}|${roomy}|${r.gt === selected}|${r.gt}|${r.anchor}|${r.gi}|${r.gj}|${r.rule}`;
      while (next.has(key)) key = `${key}#`; // the same cell twice (clamped at a border)
      let nodes = previous.get(key);
      if (nodes && nodes[0].parentNode === this.cellLayer) {
        previous.delete(key);
      } else {
        nodes = [];
        const rect = strips ? geo.stripRect(s, r.gi, r.gj, r.anchor, count) : geo.cellRect(s, r.gi, r.gj);
        const colour = boxColour(r.gt);
        const node = svgEl('rect', { class: `poscell${r.gt === selected ? ' mine' : ''}`, 'data-testid': 'grid-cell', fill: colour, stroke: colour, 'vector-effect': 'non-scaling-stroke' }, cells);
        setRect(node, rect);
        Object.assign(node.dataset, { gt: r.gt, level: r.level, anchor: r.anchor, gi: r.gi, gj: r.gj, rule: r.rule });
        nodes.push(node);
        if (roomy) { // a glyph only where a cell is big enough on screen to hold it
          const centre = geo.rectCentre(rect);
          const mark = svgEl('text', { class: 'rulemark', x: centre.x, y: centre.y }, cells);
          mark.textContent = glyphs[r.rule] ?? '?';
          nodes.push(mark);
        }
      }
      next.set(key, nodes);
    }
    for (const nodes of previous.values()) for (const node of nodes) node.remove();
    this.cellLayer.append(cells);
    this.cellNodes = next;

    // the tests the code ran for the selected box on this level, on the cells they are about
    const checks = document.createDocumentFragment();
    const mine = (result.checks || []).filter((c) => c.gt === selected && c.level === L && (anchor === -1 || c.anchor === anchor) && !c.test.startsWith('anchor_ratio'));
    const seen = new Set();
    const written = []; // the label rectangles already on the grid
    for (const c of mine.slice(0, MAX_GRID_CHECKS)) {
      const key = `${c.gi},${c.gj},${c.test}`;
      if (seen.has(key)) continue; // the same neighbour test repeats per kept anchor
      seen.add(key);
      if (!geo.insideMap([1, level.grid[0], level.grid[1]], c.gi, c.gj)) continue;
      const rect = geo.cellRect(s, c.gi, c.gj);
      const node = svgEl('rect', { class: `checkcell ${c.passed ? 'pass' : 'fail'}`, 'data-testid': 'check-cell', 'vector-effect': 'non-scaling-stroke' }, checks);
      setRect(node, rect);
      Object.assign(node.dataset, { gt: c.gt, level: c.level, anchor: c.anchor, gi: c.gi, gj: c.gj, test: c.test, passed: c.passed });
      const title = svgEl('title', {}, node);
      title.textContent = c.text;
      const area = roomy && c.label ? geo.labelBox(rect.x, rect.y, c.label, this.view, this.screenWidth()) : null;
      if (area && !geo.overlapsAny(area, written)) { // a label that would cover another is left to the cell's title
        written.push(area);
        const label = svgEl('text', { class: `checklabel ${c.passed ? 'pass' : 'fail'}`, x: rect.x, y: rect.y }, checks);
        c.label.split('\n').forEach((line, i) => {
          const span = svgEl('tspan', { x: rect.x, dy: i ? '1.1em' : '0.15em' }, label);
          span.textContent = line;
        });
      }
    }
    this.checkLayer.replaceChildren(checks);

    // offsets and anchors to scale for the selected box; predicted boxes for the hovered cell
    const over = document.createDocumentFragment();
    const box = result.boxes?.[selected];
    if (box) {
      for (const r of rows.filter((x) => x.gt === selected)) {
        const corner = geo.cellRect(s, r.gi, r.gj);
        svgEl('line', { class: 'offset', x1: corner.x, y1: corner.y, x2: box.cx, y2: box.cy, stroke: boxColour(r.gt), 'vector-effect': 'non-scaling-stroke' }, over);
      }
      if (level.anchors) {
        level.anchors.forEach(([aw, ah], a) => {
          if (anchor !== -1 && a !== anchor) return;
          const node = svgEl('rect', { class: 'anchorbox', 'data-testid': 'anchor-box', 'vector-effect': 'non-scaling-stroke' }, over);
          setRect(node, geo.centredRect(box.cx, box.cy, aw, ah));
          node.dataset.anchor = a;
        });
      }
    }
    this.overLayer.replaceChildren(over);
    this.renderPredictions();
    this.renderHeat(result, L, anchor, heat, spec);
  }

  /** Keep a cell (a click): its predicted boxes stay drawn and can be dragged (a pin). */
  setPicked(cell) {
    this.picked = cell;
    this.renderPredictions();
  }

  /** The predicted boxes of the positives in the kept cell, else the hovered one. The kept cell's are
   * draggable: moving one pins that slot's prediction to the new box (the server inverts the decode). */
  renderPredictions(hovered = this.hovered) {
    this.predLayer ??= svgEl('g', { class: 'preds' }, this.svg);
    if (this.spec?.kind === 'queries') return; // the query boxes stay as renderQueries drew them
    const cell = this.picked ?? hovered;
    const frag = document.createDocumentFragment();
    const column = this.spec?.pred_box;
    if (cell && column && this.result) {
      const editable = Boolean(this.picked) && Boolean(this.options.onPin);
      for (const r of this.result.positives) {
        if (r.level !== this.levelIndex || r.gi !== cell.gi || r.gj !== cell.gj) continue;
        const p = r[column];
        if (!Array.isArray(p) || p.length !== 4) continue;
        const node = svgEl('rect', { class: `predbox${editable ? ' editable' : ''}`, 'data-testid': 'pred-box', stroke: boxColour(r.gt), 'vector-effect': 'non-scaling-stroke' }, frag);
        setRect(node, geo.boxRect(p));
        Object.assign(node.dataset, { level: r.level, anchor: r.anchor, gi: r.gi, gj: r.gj, gt: r.gt });
        const title = svgEl('title', {}, node);
        title.textContent = editable ? t('grid.dragPin') : t('grid.predBox');
      }
    }
    this.predLayer.replaceChildren(frag);
  }

  /**
   * A set-prediction scheme: every query's predicted box (matched ones in their box's colour, the
   * others grey), draggable like pins (the slot is level 0, anchor = the query, cell (0, 0)).
   */
  renderQueries(result, options = {}) {
    const { spec, selectedQuery = -1, seq } = options;
    this.result = result; this.spec = spec; this.level = null;
    this.queryOptions = options; this.lastOptions = null;
    this.gridRect.setAttribute('visibility', 'hidden');
    this.heat.setAttribute('visibility', 'hidden');
    this.cellLayer.replaceChildren(); this.checkLayer.replaceChildren(); this.overLayer.replaceChildren();
    this.gridRect.dataset.seq = String(seq ?? '');
    this.predLayer ??= svgEl('g', { class: 'preds' }, this.svg);
    const frag = document.createDocumentFragment();
    for (const q of result.queries || []) {
      const matched = q.matched_gt !== -1;
      const node = svgEl('rect', { class: `querybox predbox editable${matched ? ' matched' : ''}${q.query === selectedQuery ? ' on' : ''}`,
                                   'data-testid': 'query-box', stroke: matched ? boxColour(q.matched_gt) : '#7a7a7a', 'vector-effect': 'non-scaling-stroke' }, frag);
      setRect(node, geo.boxRect(q.box_px));
      Object.assign(node.dataset, { level: 0, anchor: q.query, gi: 0, gj: 0, query: q.query, matched: q.matched_gt });
      const title = svgEl('title', {}, node);
      title.textContent = `${t('grid.query')} ${q.query}${matched ? ` → #${q.matched_gt}` : ` (${t('grid.noObject')})`}: ${t('grid.dragQuery')}`;
      const label = svgEl('text', { class: 'querylabel', x: q.box_px[0], y: q.box_px[1] }, frag);
      label.textContent = `q${q.query}`;
    }
    this.predLayer.replaceChildren(frag);
  }

  renderHeat(result, L, anchor, heat, spec) {
    const map = heat && result.maps?.[heat];
    const declared = [...(spec?.maps || []), ...(spec?.target?.maps || [])].find((m) => m.name === heat);
    if (!map || !map.levels?.[L] || !declared) { this.heat.setAttribute('visibility', 'hidden'); this.heatRange = null; return; }
    const range = paintHeat(this.canvas, decodeLevel(map.levels[L]), { anchor, reduce: declared.reduce, scale: declared.scale, range: declared.range });
    if (!range) { this.heat.setAttribute('visibility', 'hidden'); this.heatRange = null; return; }
    this.heat.setAttribute('href', this.canvas.toDataURL());
    this.heat.setAttribute('visibility', 'visible');
    this.heatRange = { ...range, name: heat, doc: declared.doc, unit: declared.unit, scale: declared.scale,
                       reduce: anchor === -1 && this.anchorCount !== 1 ? declared.reduce : '' };
  }
}

/** The anchor strip legend above the grid: "a0 10×13 px" per anchor, and for the selected box the
 * anchor-ratio test on each strip ("r 3.13 < 4 ✓"), as the server states it. */
export function renderAnchorStrip(root, result, levelIndex, selected, anchorShown, onPick) {
  root.replaceChildren();
  const level = result?.levels?.[levelIndex];
  if (!level) return;
  if (!level.anchors) {
    el('span', { cls: 'hint', text: t('view.anchorFree') }, root);
    return;
  }
  const ratio = (result.checks || []).filter((c) => c.gt === selected && c.level === levelIndex && c.test === 'anchor_ratio');
  const rest = (result.checks || []).filter((c) => c.gt === selected && c.level === levelIndex && c.test !== 'anchor_ratio');
  const all = el('button', { cls: `strip${anchorShown === -1 ? ' on' : ''}`, text: t('grid.allAnchors'), attrs: { type: 'button', 'data-anchor': -1, 'data-testid': 'anchor-strip' } }, root);
  all.addEventListener('click', () => onPick(-1));
  level.anchors.forEach(([aw, ah], a) => {
    const b = el('button', { cls: `strip${anchorShown === a ? ' on' : ''}`, attrs: { type: 'button', 'data-anchor': a, 'data-testid': 'anchor-strip' } }, root);
    el('strong', { text: `a${a}` }, b);
    b.append(` ${fmt(aw)}×${fmt(ah)} px`);
    const test = ratio.find((c) => c.anchor === a) ?? rest.find((c) => c.anchor === a && c.test.startsWith('best'));
    if (test) {
      const tag = el('span', { cls: `verdict ${test.passed ? 'pass' : 'fail'}`, text: test.label || (test.passed ? '✓' : '✗') }, b);
      tag.title = test.text;
      tag.dataset.testid = 'anchor-verdict';
    }
    b.addEventListener('click', () => onPick(a));
  });
}
