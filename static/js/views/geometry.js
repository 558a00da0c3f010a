// Coordinates and indices: the one module (with colour.js and format.js) where the page does
// arithmetic. Everything here maps between coordinate systems for drawing (grid cell -> image px ->
// screen px), hit-tests the pointer, indexes flat arrays, and applies the learner's own edits to a
// box (drag, resize, nudge, typed values). Nothing here derives a number the detector code computes:
// verdicts, counts, cells of a box, targets and losses all come from the server.

const r2 = (v) => Math.round(v * 100) / 100; // a pixel position kept to 1/100 px

/** The rectangle of cell (gi, gj) of a level with this stride, in image pixels. */
export function cellRect(stride, gi, gj) {
  return { x: gi * stride, y: gj * stride, w: stride, h: stride };
}

/** Anchor `anchor` of `count` strips of a cell (all anchors shown side by side). */
export function stripRect(stride, gi, gj, anchor, count) {
  const w = stride / count;
  return { x: gi * stride + anchor * w, y: gj * stride, w, h: stride };
}

/** A box {x1, y1, x2, y2} (or a list [x1, y1, x2, y2]) as a rectangle {x, y, w, h}. */
export function boxRect(b) {
  const [x1, y1, x2, y2] = Array.isArray(b) ? b : [b.x1, b.y1, b.x2, b.y2];
  return { x: x1, y: y1, w: x2 - x1, h: y2 - y1 };
}

/** A rectangle {x, y, w, h} as a box {x1, y1, x2, y2}. */
export function rectBox(r) {
  return { cls: 0, x1: r.x, y1: r.y, x2: r.x + r.w, y2: r.y + r.h };
}

/** A box's centre and size {cx, cy, w, h} (a pin is given that way). */
export function boxCentre(b) {
  return { cx: r2((b.x1 + b.x2) / 2), cy: r2((b.y1 + b.y2) / 2), w: r2(b.x2 - b.x1), h: r2(b.y2 - b.y1) };
}

/** A rectangle of size (w, h) centred at (cx, cy). */
export function centredRect(cx, cy, w, h) {
  return { x: cx - w / 2, y: cy - h / 2, w, h };
}

/** The centre of a rectangle {x, y, w, h}. */
export function rectCentre(r) {
  return { x: r.x + r.w / 2, y: r.y + r.h / 2 };
}

/** Which cell of a level the image point (x, y) falls in, or null outside the grid [H, W]. */
export function pointToCell(stride, grid, point) {
  const gi = Math.floor(point.x / stride), gj = Math.floor(point.y / stride);
  if (gi < 0 || gj < 0 || gj >= grid[0] || gi >= grid[1]) return null;
  return { gi, gj };
}

/** Flat row-major index of (a, gj, gi) in an (A, H, W) map level. */
export function mapIndex(shape, a, gj, gi) {
  return (a * shape[1] + gj) * shape[2] + gi;
}

/** A flat array cut into `count` equal consecutive parts (e.g. 64 DFL probabilities -> 4 sides). */
export function chunks(values, count) {
  const size = values.length / count;
  return Array.from({ length: count }, (_, k) => values.slice(k * size, (k + 1) * size));
}

/** Bars of a small bar chart of `values` (each in [0, 1]) filling width x height: [{index, rect}]. */
export function barRects(values, width, height) {
  const w = width / Math.max(1, values.length);
  return Array.from(values, (v, index) => {
    const h = Math.max(0.5, Math.min(1, Number(v) || 0) * height);
    return { index, rect: { x: index * w + 0.5, y: height - h, w: w - 1, h } };
  });
}

/** Pixel height of a horizontal bar chart of `count` bars. */
export function barChartHeight(count) {
  return 44 + 26 * count;
}

/** The (row, col) of a Q × N matrix drawn in `rect` under the pointer, or null outside. */
export function matrixCell(event, rect, rows, cols) {
  const col = Math.floor(((event.clientX - rect.left) / rect.width) * cols);
  const row = Math.floor(((event.clientY - rect.top) / rect.height) * rows);
  return row >= 0 && col >= 0 && row < rows && col < cols ? { row, col } : null;
}

/** Screen size of a Q × N matrix: rows and columns readable, the whole kept within 520 × 480 px. */
export function matrixSize(rows, cols) {
  return { width: Math.min(520, Math.max(80, cols * 40)), height: Math.min(480, Math.max(120, rows * 16)) };
}

/** Flat row-major index of (row, col) in a (Q, N) matrix. */
export function matrixIndex(shape, row, col) {
  return row * shape[1] + col;
}

/** Whether (gi, gj) lies inside an (A, H, W) map level. */
export function insideMap(shape, gi, gj) {
  return gi >= 0 && gj >= 0 && gj < shape[1] && gi < shape[2];
}

/** The pointer position in image pixels, for a view {x0, y0, w, h} shown in the element `rect`. */
export function toImage(event, rect, view) {
  return { x: view.x0 + ((event.clientX - rect.left) / rect.width) * view.w,
           y: view.y0 + ((event.clientY - rect.top) / rect.height) * view.h };
}

/** Image pixels per screen pixel of a view shown `screenWidth` pixels wide. */
export function imagePerScreen(view, screenWidth) {
  return view.w / Math.max(1, screenWidth);
}

/** The whole image as a view. */
export function fullView(width, height) {
  return { x0: 0, y0: 0, w: width, h: height };
}

/**
 * A view centred on `focus` (a box) showing about `cells` cells of `stride` around it, at the image's
 * aspect ratio, kept inside the image. With no focus, the whole image.
 */
export function focusView(width, height, focus, stride, cells = 14) {
  if (!focus) return fullView(width, height);
  const aspect = height / width;
  const span = Math.max(focus.x2 - focus.x1, (focus.y2 - focus.y1) / aspect) + 2 * 3 * stride;
  const w = Math.min(width, Math.max(span, cells * stride));
  const h = Math.min(height, w * aspect);
  return clampView({ x0: (focus.x1 + focus.x2) / 2 - w / 2, y0: (focus.y1 + focus.y2) / 2 - h / 2, w, h }, width, height);
}

/** Zoom a view by `factor` (> 1 magnifies) around the image point `at`. */
export function zoomView(view, factor, at, width, height) {
  const w = Math.min(width, Math.max(8, view.w / factor));
  const h = Math.min(height, w * (view.h / view.w));
  const x0 = at.x - ((at.x - view.x0) * w) / view.w;
  const y0 = at.y - ((at.y - view.y0) * h) / view.h;
  return clampView({ x0, y0, w, h }, width, height);
}

/** The view dragged by the pointer from `start` to `now` (client pixels) on an element `rectWidth` wide. */
export function panByPointer(view, start, now, rectWidth, width, height) {
  const scale = imagePerScreen(view, rectWidth);
  return panView(view, (start.x - now.x) * scale, (start.y - now.y) * scale, width, height);
}

/** The view moved so that the image point `p` is at its centre. */
export function centreViewOn(view, p, width, height) {
  return clampView({ ...view, x0: p.x - view.w / 2, y0: p.y - view.h / 2 }, width, height);
}

/** The pointer's move from `start` to `p`, image pixels. */
export function pointerDelta(start, p) {
  return [p.x - start.x, p.y - start.y];
}

/** The view after one wheel step at the image point `at` (scrolling up magnifies). */
export function wheelZoom(view, deltaY, at, width, height) {
  return zoomView(view, deltaY < 0 ? 1.25 : 0.8, at, width, height);
}

/** An index kept in [0, count - 1]. */
export function clampIndex(index, count) {
  return Math.max(0, Math.min(index, count - 1));
}

/** Move a view by (dx, dy) image pixels. */
export function panView(view, dx, dy, width, height) {
  return clampView({ ...view, x0: view.x0 + dx, y0: view.y0 + dy }, width, height);
}

function clampView(view, width, height) {
  return { ...view, x0: Math.min(Math.max(0, view.x0), Math.max(0, width - view.w)),
                    y0: Math.min(Math.max(0, view.y0), Math.max(0, height - view.h)) };
}

/** How many times a view magnifies the full image. */
export function magnification(view, width) {
  return width / view.w;
}

/** Screen-constant sizes (label text, strokes) expressed in image pixels. */
export function screenSize(px, view, screenWidth) {
  return px * imagePerScreen(view, screenWidth);
}

/** The image-space rectangle a label (one or more lines at `fontPx` screen pixels; an average glyph is
 * about 0.6 em wide) covers when written from (x, y). */
export function labelBox(x, y, label, view, screenWidth, fontPx = 10) {
  const lines = String(label).split('\n');
  const em = fontPx * imagePerScreen(view, screenWidth);
  return { x, y, w: Math.max(...lines.map((line) => line.length)) * 0.6 * em, h: lines.length * 1.1 * em };
}

/** Whether a rectangle overlaps any of `boxes` (labels already written). */
export function overlapsAny(box, boxes) {
  return boxes.some((b) => box.x < b.x + b.w && b.x < box.x + box.w && box.y < b.y + b.h && b.y < box.y + box.h);
}

/** Whether a cell rectangle is large enough on screen to hold a glyph and a number. */
export function roomyCell(stride, view, screenWidth) {
  return stride / imagePerScreen(view, screenWidth) >= 26;
}

// ---- the learner's edits of a box (image pixels) -------------------------------------------

export function roundBox(b) {
  return { cls: b.cls, x1: r2(b.x1), y1: r2(b.y1), x2: r2(b.x2), y2: r2(b.y2) };
}

/** A box dragged by (dx, dy): `mode` is 'move' or a corner 'nw' | 'ne' | 'sw' | 'se'. */
export function dragBox(orig, mode, dx, dy) {
  if (mode === 'move') return roundBox({ ...orig, x1: orig.x1 + dx, x2: orig.x2 + dx, y1: orig.y1 + dy, y2: orig.y2 + dy });
  const b = { ...orig };
  if (mode.includes('w')) b.x1 = orig.x1 + dx; else b.x2 = orig.x2 + dx;
  if (mode.includes('n')) b.y1 = orig.y1 + dy; else b.y2 = orig.y2 + dy;
  return roundBox({ cls: orig.cls, x1: Math.min(b.x1, b.x2), x2: Math.max(b.x1, b.x2), y1: Math.min(b.y1, b.y2), y2: Math.max(b.y1, b.y2) });
}

/** Whether a box being drawn is large enough to keep. */
export function bigEnough(b, minPx) {
  return b.x2 - b.x1 >= minPx && b.y2 - b.y1 >= minPx;
}

/** A box moved by (dx, dy) times `step` pixels (arrow keys). */
export function nudgeBox(b, dx, dy, step) {
  return roundBox({ ...b, x1: b.x1 + dx * step, x2: b.x2 + dx * step, y1: b.y1 + dy * step, y2: b.y2 + dy * step });
}

/** A box from typed centre and size (the numeric entry's cx, cy, w, h fields). */
export function boxFromCentre(cls, cx, cy, w, h) {
  return roundBox({ cls, x1: cx - w / 2, y1: cy - h / 2, x2: cx + w / 2, y2: cy + h / 2 });
}
