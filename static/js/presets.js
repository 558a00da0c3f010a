// Preset scenes that make one LEARNERS.md point visible. Geometry only; the verdict is the server's.

function centred(cls, cx, cy, w, h) {
  return { cls, x1: cx - w / 2, y1: cy - h / 2, x2: cx + w / 2, y2: cy + h / 2 };
}

/** Deterministic pseudo-random layout (a small LCG) so the crowded scene is the same everywhere. */
function crowded(width, height, count, nc) {
  let s = 12345;
  const rand = () => { s = (s * 1103515245 + 12345) % 2147483648; return s / 2147483648; };
  const boxes = [];
  for (let i = 0; i < count; i++) {
    const w = Math.round(16 + rand() * 0.25 * width), h = Math.round(16 + rand() * 0.25 * height);
    const cx = Math.round(w / 2 + rand() * (width - w)), cy = Math.round(h / 2 + rand() * (height - h));
    boxes.push(centred(i % Math.min(nc, 8), cx, cy, w, h));
  }
  return boxes;
}

/** name -> (ctx) -> boxes; ctx = {width, height, nc, strides, anchors (per level, px) | null, anchorT} */
export const PRESETS = {
  half: ({ strides }) => {
    const s = strides[0]; // P3: centre at 12.5 cells -> fraction exactly 0.5, neither neighbour rule fires
    return [centred(0, 12.5 * s, 12.5 * s, 50, 80)];
  },
  border: ({ height }) => [centred(0, 0, Math.round(height * 0.32), 60, 80)],
  ratio: ({ anchors, anchorT, strides }) => {
    const [aw, ah] = anchors?.[0]?.[0] ?? [strides[0], strides[0]];
    const t = anchorT ?? 4;
    // w/aw = anchor_t exactly, h = ah: r_max = anchor_t, rejected by the strict <
    return [centred(0, 20.5 * strides[0], 20.5 * strides[0], aw * t, ah)];
  },
  tiny: ({ width, height }) => [centred(0, width / 2 + 2, height / 2 - 2, 4, 4)],
  fight: ({ strides }) => {
    const s = strides[0];
    return [centred(0, 30.25 * s, 30.25 * s, 60, 60), centred(1, 30.75 * s, 30.25 * s, 40, 90)];
  },
  crowded: ({ width, height, nc }) => crowded(width, height, 20, nc),
  learners19: () => [centred(0, 100, 203, 50, 80)],
  learners17: () => [centred(0, 100, 204, 50, 80)],
};
