// The image area: ground-truth boxes (editable), the grid of the chosen level, positive cells
// coloured by their box and marked by rule, offsets from cell to box centre, anchors to scale,
// predicted boxes, and a heat layer (canvas) from one of the scheme's maps.
import { boxColour, ruleMark, VIRIDIS, MIN_BOX_PX } from '../config.js';
import { decodeLevel } from '../api.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
const HANDLE_PX = 7; // handle half-size in screen pixels

function svgEl(tag, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

// 256-entry RGB lookup of viridis, built once (the heat layer indexes it per cell)
const VIRIDIS_LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) lut.set(viridis(i / 255), i * 3);
  return lut;
})();

export function viridis(t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

export class SceneView {
  /**
   * @param {HTMLElement} wrap   container; gets a background <img>, a heat <canvas> and the <svg>
   * @param {object} options     {editable, testid, onBoxes(boxes, {dragging, pointerTime}), onSelect(i), onHover(cell|null), onNudgeStride()}
   */
  constructor(wrap, options) {
    this.wrap = wrap;
    this.options = options;
    this.width = 0; this.height = 0; // set by setImage
    this.boxes = [];
    this.selected = -1;
    this.drag = null;
    this.bg = document.createElement('img'); this.bg.className = 'bg'; this.bg.alt = ''; this.bg.hidden = true;
    this.heat = document.createElement('canvas'); this.heat.className = 'heat'; this.heat.hidden = true;
    this.svg = svgEl('svg', { role: 'application', tabindex: 0, 'data-testid': options.testid || 'scene', preserveAspectRatio: 'none' });
    this.svg.setAttribute('aria-label', 'image area: draw and edit ground-truth boxes');
    // zoom: the svg shows a crop through its viewBox (strokes stay thin); the raster layers
    // (picture, heat) sit in an inner box moved by the same crop as a CSS transform
    this.inner = document.createElement('div'); this.inner.className = 'scene-inner';
    this.inner.append(this.bg, this.heat);
    wrap.append(this.inner, this.svg);
    this.view = { x0: 0, y0: 0, zoom: 1 };
    this.gridLayer = svgEl('g', { 'data-testid': `${options.testid || 'scene'}-grid` }, this.svg);
    this.gridPath = svgEl('path', { class: 'gridline' }, this.gridLayer);
    this.cellLayer = svgEl('g', {}, this.gridLayer);
    this.boxLayer = svgEl('g', {}, this.svg);
    this.overLayer = svgEl('g', {}, this.svg);
    this.hoverRect = svgEl('rect', { class: 'hovercell', visibility: 'hidden' }, this.svg);
    this.boxEls = [];
    if (options.editable) this.bindEditing();
    this.svg.addEventListener('pointerleave', () => { if (!this.drag) this.hover(null); });
    this.svg.addEventListener('pointermove', (e) => { if (!this.drag) this.hover(this.toImage(e)); });
  }

  setImage(width, height) {
    if (width === this.width && height === this.height) return;
    this.width = width; this.height = height;
    this.svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    this.view = { x0: 0, y0: 0, zoom: 1 };
    this.wrap.style.aspectRatio = `${width} / ${height}`;
  }

  /** Magnify `zoom` times around image point (cx, cy), kept inside the image. */
  setZoom(zoom, cx, cy) {
    const z = Math.max(1, zoom || 1);
    const w = this.width / z, h = this.height / z;
    const x0 = Math.min(this.width - w, Math.max(0, cx - w / 2)), y0 = Math.min(this.height - h, Math.max(0, cy - h / 2));
    this.view = { x0, y0, zoom: z };
    this.svg.setAttribute('viewBox', `${x0} ${y0} ${w} ${h}`);
    this.inner.style.transform = z === 1 ? '' : `scale(${z}) translate(${(-x0 / this.width) * 100}%, ${(-y0 / this.height) * 100}%)`;
    this.svg.style.setProperty('--label-size', `${12 / z}px`);
    this.svg.style.setProperty('--label-halo', `${3 / z}px`);
    if (this.boxes.length) this.renderBoxes(this.boxes, this.selected);
  }

  setBackground(url) {
    this.bg.hidden = !url;
    if (url) this.bg.src = url; else this.bg.removeAttribute('src');
  }

  toImage(event) {
    // during a drag the rectangle is cached: reading it forces a layout of the whole page
    const rect = this.drag?.rect ?? this.svg.getBoundingClientRect();
    const { x0, y0, zoom } = this.view;
    return { x: x0 + ((event.clientX - rect.left) / rect.width) * (this.width / zoom),
             y: y0 + ((event.clientY - rect.top) / rect.height) * (this.height / zoom) };
  }

  pxPerScreen() { return this.width / this.view.zoom / Math.max(1, (this.drag?.rect ?? this.svg.getBoundingClientRect()).width); }

  // ---- boxes ---------------------------------------------------------------------------------
  /** Draw the boxes; `only` (an index) redraws just that box, e.g. the one being dragged. */
  renderBoxes(boxes, selected, only = -1) {
    this.boxes = boxes.map((b) => ({ ...b }));
    this.selected = selected;
    while (this.boxEls.length < boxes.length) this.boxEls.push(this.makeBoxEl(this.boxEls.length));
    while (this.boxEls.length > boxes.length) this.boxEls.pop().g.remove();
    const h = HANDLE_PX * this.pxPerScreen();
    boxes.forEach((b, i) => {
      if (only >= 0 && i !== only) return;
      const el = this.boxEls[i];
      const colour = boxColour(i);
      el.rect.setAttribute('x', b.x1); el.rect.setAttribute('y', b.y1);
      el.rect.setAttribute('width', b.x2 - b.x1); el.rect.setAttribute('height', b.y2 - b.y1);
      el.rect.setAttribute('stroke', colour); el.rect.setAttribute('fill', colour);
      el.rect.classList.toggle('selected', i === selected);
      const u = 1 / this.view.zoom; // one screen-ish pixel in image units
      el.label.setAttribute('x', b.x1 + 2 * u); el.label.setAttribute('y', b.y1 - 3 * u < this.view.y0 + 10 * u ? b.y1 + 12 * u : b.y1 - 3 * u);
      el.label.setAttribute('fill', colour);
      el.label.textContent = `#${i} cls ${b.cls}`;
      el.g.dataset.index = i; el.g.dataset.cls = b.cls;
      el.g.setAttribute('aria-label', `box ${i}, class ${b.cls}, ${Math.round(b.x2 - b.x1)} by ${Math.round(b.y2 - b.y1)} px`);
      const corners = { nw: [b.x1, b.y1], ne: [b.x2, b.y1], sw: [b.x1, b.y2], se: [b.x2, b.y2] };
      for (const [name, [x, y]] of Object.entries(corners)) {
        const hd = el.handles[name];
        hd.setAttribute('x', x - h / 2); hd.setAttribute('y', y - h / 2); hd.setAttribute('width', h); hd.setAttribute('height', h);
        hd.setAttribute('visibility', i === selected && this.options.editable ? 'visible' : 'hidden');
      }
    });
  }

  makeBoxEl(index) {
    const g = svgEl('g', { class: 'gtbox', 'data-testid': 'gt-box', tabindex: this.options.editable ? 0 : -1 }, this.boxLayer);
    const rect = svgEl('rect', { class: 'gt', 'data-part': 'body' }, g);
    const label = svgEl('text', { class: 'gtlabel' }, g);
    const handles = {};
    for (const name of ['nw', 'ne', 'sw', 'se']) handles[name] = svgEl('rect', { class: `handle ${name}`, 'data-part': name, 'data-testid': `handle-${name}` }, g);
    g.addEventListener('focus', () => { const i = Number(g.dataset.index); if (i !== this.selected) this.options.onSelect?.(i); });
    return { g, rect, label, handles, index };
  }

  bindEditing() {
    const svg = this.svg;
    svg.addEventListener('pointerdown', (e) => {
      if (e.button !== 0) return;
      const rect = svg.getBoundingClientRect();
      const p = this.toImage(e);
      const g = e.target.closest?.('g.gtbox');
      try { svg.setPointerCapture(e.pointerId); } catch { /* a synthetic pointer cannot be captured */ }
      if (g) {
        const index = Number(g.dataset.index);
        const part = e.target.dataset.part || 'body';
        this.drag = { mode: part === 'body' ? 'move' : part, index, start: p, orig: { ...this.boxes[index] }, rect };
        if (index !== this.selected) this.options.onSelect?.(index);
      } else {
        const cls = this.options.currentClass?.() ?? 0;
        this.boxes.push({ cls, x1: p.x, y1: p.y, x2: p.x, y2: p.y });
        const index = this.boxes.length - 1;
        this.drag = { mode: 'se', index, start: p, orig: { ...this.boxes[index] }, created: true, rect };
        this.options.onSelect?.(index, { silent: true });
      }
      e.preventDefault();
    });
    svg.addEventListener('pointermove', (e) => {
      if (!this.drag) return;
      const p = this.toImage(e);
      const d = this.drag;
      const o = d.orig;
      let b;
      const dx = p.x - d.start.x, dy = p.y - d.start.y;
      if (d.mode === 'move') b = { ...o, x1: o.x1 + dx, x2: o.x2 + dx, y1: o.y1 + dy, y2: o.y2 + dy };
      else {
        b = { ...o };
        if (d.mode.includes('w')) b.x1 = o.x1 + dx; else b.x2 = o.x2 + dx;
        if (d.mode.includes('n')) b.y1 = o.y1 + dy; else b.y2 = o.y2 + dy;
        b = { cls: o.cls, x1: Math.min(b.x1, b.x2), x2: Math.max(b.x1, b.x2), y1: Math.min(b.y1, b.y2), y2: Math.max(b.y1, b.y2) };
      }
      b = this.clampCentre(roundBox(b));
      this.boxes[d.index] = b;
      d.moved = true;
      const valid = b.x2 - b.x1 >= MIN_BOX_PX && b.y2 - b.y1 >= MIN_BOX_PX;
      this.renderBoxes(this.boxes, d.index, d.index);
      if (valid) this.options.onBoxes?.(this.boxes.filter((x) => x.x2 - x.x1 >= MIN_BOX_PX && x.y2 - x.y1 >= MIN_BOX_PX || x === b),
        { dragging: true, pointerTime: e.timeStamp });
    });
    const end = (e) => {
      if (!this.drag) return;
      const d = this.drag;
      this.drag = null;
      if (svg.hasPointerCapture?.(e.pointerId)) svg.releasePointerCapture(e.pointerId);
      const b = this.boxes[d.index];
      if (d.created && (b.x2 - b.x1 < MIN_BOX_PX || b.y2 - b.y1 < MIN_BOX_PX)) {
        this.boxes.splice(d.index, 1);
        this.options.onSelect?.(-1, { silent: true });
      }
      this.options.onBoxes?.(this.boxes, { dragging: false, pointerTime: e.timeStamp });
    };
    svg.addEventListener('pointerup', end);
    svg.addEventListener('pointercancel', end);
    svg.addEventListener('keydown', (e) => this.onKey(e));
  }

  /** The API rejects a box whose centre leaves the image; keep the drag inside that rule. */
  clampCentre(b) {
    const cx = (b.x1 + b.x2) / 2, cy = (b.y1 + b.y2) / 2;
    const sx = Math.min(this.width, Math.max(0, cx)) - cx, sy = Math.min(this.height, Math.max(0, cy)) - cy;
    return sx || sy ? roundBox({ ...b, x1: b.x1 + sx, x2: b.x2 + sx, y1: b.y1 + sy, y2: b.y2 + sy }) : b;
  }

  onKey(e) {
    const i = this.selected;
    if (i < 0 || i >= this.boxes.length) return;
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
    const [dx, dy] = dirs[e.key];
    const b = this.boxes[i];
    this.boxes[i] = this.clampCentre({ ...b, x1: b.x1 + dx * step, x2: b.x2 + dx * step, y1: b.y1 + dy * step, y2: b.y2 + dy * step });
    this.renderBoxes(this.boxes, i);
    this.options.onBoxes?.(this.boxes, { dragging: false, pointerTime: e.timeStamp });
    e.preventDefault();
  }

  // ---- hover ---------------------------------------------------------------------------------
  hover(point) {
    const level = this.level;
    if (!point || !level) { this.hoverRect.setAttribute('visibility', 'hidden'); this.options.onHover?.(null); return; }
    const s = level.stride;
    const gi = Math.floor(point.x / s), gj = Math.floor(point.y / s);
    if (gi < 0 || gj < 0 || gi >= level.grid[1] || gj >= level.grid[0]) return;
    this.showCell(gi, gj);
    this.options.onHover?.({ gi, gj });
  }

  showCell(gi, gj) {
    const level = this.level;
    if (!level) return;
    const s = level.stride;
    this.hoverRect.setAttribute('x', gi * s); this.hoverRect.setAttribute('y', gj * s);
    this.hoverRect.setAttribute('width', s); this.hoverRect.setAttribute('height', s);
    this.hoverRect.setAttribute('visibility', 'visible');
  }

  // ---- result overlay ------------------------------------------------------------------------
  /** Draw a server result for level `levelIndex` and anchor `anchor` (-1 = all). */
  renderResult(result, { levelIndex, anchor, heat, preds, boxes, seq }) {
    const level = result.levels[Math.min(levelIndex, result.levels.length - 1)];
    this.level = level;
    const L = result.levels.indexOf(level);
    const s = level.stride;
    const [H, W] = level.grid;
    // grid: one path
    let d = '';
    for (let i = 1; i < W; i++) d += `M${i * s} 0V${H * s}`;
    for (let j = 1; j < H; j++) d += `M0 ${j * s}H${W * s}`;
    this.gridPath.setAttribute('d', d);
    this.gridLayer.dataset.seq = String(seq ?? '');
    this.gridLayer.dataset.level = level.name;
    this.cellLayer.replaceChildren();
    this.overLayer.replaceChildren();
    const frag = document.createDocumentFragment();
    const over = document.createDocumentFragment();
    const rows = result.positives.filter((r) => r.level === L && (anchor < 0 || r.anchor === anchor));
    const anchorsShown = level.anchors ? level.anchors.length : 1;
    for (const r of rows) {
      const colour = boxColour(r.gt);
      // with all anchors shown, a cell is split into A vertical strips so each anchor's positive is visible
      const strip = anchor < 0 ? s / anchorsShown : s;
      const x = r.gi * s + (anchor < 0 ? r.anchor * strip : 0);
      const cell = svgEl('rect', { class: 'poscell', 'data-testid': 'pos-cell', x, y: r.gj * s, width: strip, height: s, fill: colour, stroke: colour }, frag);
      Object.assign(cell.dataset, { gt: r.gt, level: r.level, anchor: r.anchor, gi: r.gi, gj: r.gj, rule: r.rule });
      const mark = svgEl('text', { class: 'rulemark', x: x + strip / 2, y: r.gj * s + s / 2, fill: '#000' }, frag);
      mark.textContent = ruleMark(r.rule, result.rule_names.indexOf(r.rule));
      mark.style.fontSize = `${Math.max(6, Math.min(14, strip * 0.9))}px`;
      const box = boxes[r.gt];
      if (box) { // offset: from the cell's top-left corner (the decode's origin) to the box centre
        const cx = (box.x1 + box.x2) / 2, cy = (box.y1 + box.y2) / 2;
        svgEl('line', { class: 'offset', x1: r.gi * s, y1: r.gj * s, x2: cx, y2: cy, stroke: colour }, over);
      }
    }
    // anchors to scale, centred on the selected (else first) box
    const focus = boxes[this.selected] ?? boxes[0];
    if (focus && level.anchors) {
      const cx = (focus.x1 + focus.x2) / 2, cy = (focus.y1 + focus.y2) / 2;
      level.anchors.forEach(([aw, ah], a) => {
        if (anchor >= 0 && a !== anchor) return;
        const r = svgEl('rect', { class: 'anchorbox', 'data-testid': 'anchor-box', x: cx - aw / 2, y: cy - ah / 2, width: aw, height: ah, stroke: '#000' }, over);
        r.dataset.anchor = a;
      });
    }
    if (preds) {
      for (const r of rows) {
        const p = predictedBox(r, result.columns);
        if (!p) continue;
        svgEl('rect', { class: 'predbox', 'data-testid': 'pred-box', x: p[0], y: p[1], width: p[2] - p[0], height: p[3] - p[1], stroke: boxColour(r.gt) }, over);
      }
    }
    this.cellLayer.appendChild(frag);
    this.overLayer.appendChild(over);
    this.renderHeat(result, L, anchor, heat);
  }

  renderHeat(result, L, anchor, heat) {
    const map = heat && result.maps?.[heat];
    if (!map || !map.levels?.[L]) { this.heat.hidden = true; this.heatRange = null; return; }
    const { shape, data } = decodeLevel(map.levels[L]);
    const [A, H, W] = shape;
    const values = new Float32Array(H * W).fill(-Infinity);
    for (let a = 0; a < A; a++) {
      if (anchor >= 0 && a !== anchor && A > 1) continue;
      for (let k = 0; k < H * W; k++) { const v = data[a * H * W + k]; if (v > values[k] || Number.isNaN(values[k])) values[k] = v; }
    }
    let lo = Infinity, hi = -Infinity;
    for (const v of values) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
    const span = hi - lo || 1;
    this.heat.width = W; this.heat.height = H;
    const ctx = this.heat.getContext('2d');
    const img = ctx.createImageData(W, H);
    const px = img.data;
    for (let k = 0; k < H * W; k++) {
      const v = values[k];
      if (!Number.isFinite(v)) continue; // transparent
      const index = Math.max(0, Math.min(255, Math.round(((v - lo) / span) * 255)));
      px[k * 4] = VIRIDIS_LUT[index * 3]; px[k * 4 + 1] = VIRIDIS_LUT[index * 3 + 1]; px[k * 4 + 2] = VIRIDIS_LUT[index * 3 + 2];
      px[k * 4 + 3] = 40 + (215 * index) / 255; // low values fade out so what lies under them stays readable
    }
    ctx.putImageData(img, 0, 0);
    this.heat.hidden = false;
    this.heatRange = { lo, hi, name: heat, reduce: anchor < 0 && A > 1 ? 'max over anchors' : `anchor ${Math.max(anchor, 0)}` };
  }
}

/**
 * A predicted box (x1, y1, x2, y2) px from a positives row, if the scheme sent one. The column's
 * doc says its format: "(cx, cy, w, h)" is turned into corners (a change of format, not a decode).
 */
export function predictedBox(row, columns = {}) {
  for (const key of ['pred_box_px', 'pbox_xyxy_px', 'pred_xyxy_px', 'pbox_px']) {
    const v = row[key];
    if (!Array.isArray(v) || v.length !== 4) continue;
    const [a, b, c, d] = v.map(Number);
    if (/cx, cy, w, h/.test(columns[key] || '')) return [a - c / 2, b - d / 2, a + c / 2, b + d / 2];
    return [a, b, c, d];
  }
  return null;
}

function roundBox(b) {
  const r = (v) => Math.round(v * 100) / 100;
  return { cls: b.cls, x1: r(b.x1), y1: r(b.y1), x2: r(b.x2), y2: r(b.y2) };
}
