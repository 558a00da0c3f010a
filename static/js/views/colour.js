// Colours: Okabe-Ito for boxes (colour-blind safe, one colour per box everywhere), viridis for
// heat layers, and the heat layer's raster. Arithmetic here only maps values to colours.

// Okabe-Ito without black: box i uses BOX_COLOURS[i % 7].
export const BOX_COLOURS = ['#E69F00', '#56B4E9', '#009E73', '#D55E00', '#0072B2', '#CC79A7', '#F0E442'];
export const boxColour = (index) => BOX_COLOURS[index % BOX_COLOURS.length];

const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];

export function viridis(t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) lut.set(viridis(i / 255), i * 3);
  return lut;
})();

/** CSS colour of a position t in [0, 1] of the viridis scale. */
export function viridisCss(t) {
  const [r, g, b] = viridis(t);
  return `rgb(${r},${g},${b})`;
}

/**
 * Paint one level of a map into `canvas` (one pixel per cell): anchors combined by the declared
 * `reduce` (max or sum) or one anchor, scaled by the declared `scale` ('linear', 'log', 'count')
 * and `range` (else the level's finite min..max). Returns the range used, or null when nothing is
 * finite.
 */
export function paintHeat(canvas, level, { anchor = -1, reduce = 'max', scale = 'linear', range = null } = {}) {
  const { shape, data } = level;
  const [A, H, W] = shape;
  const values = new Float32Array(H * W);
  const cells = H * W;
  for (let k = 0; k < cells; k++) {
    let v = reduce === 'sum' ? 0 : -Infinity;
    for (let a = 0; a < A; a++) {
      if (anchor >= 0 && a !== anchor && A > 1) continue;
      const x = data[a * cells + k];
      v = reduce === 'sum' ? v + x : (Number.isNaN(x) || x > v ? x : v);
    }
    values[k] = scale === 'log' ? (v > 0 ? Math.log10(v) : NaN) : v;
  }
  let lo = Infinity, hi = -Infinity;
  if (range && scale !== 'log') { [lo, hi] = range; } else {
    for (const v of values) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  if (!Number.isFinite(lo)) return null;
  const span = hi - lo || 1;
  canvas.width = W; canvas.height = H;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(W, H);
  const px = img.data;
  for (let k = 0; k < cells; k++) {
    const v = values[k];
    if (!Number.isFinite(v)) continue; // transparent: NaN and inf show as holes (the legend says so)
    const i = Math.max(0, Math.min(255, Math.round(((v - lo) / span) * 255)));
    px[k * 4] = LUT[i * 3]; px[k * 4 + 1] = LUT[i * 3 + 1]; px[k * 4 + 2] = LUT[i * 3 + 2];
    px[k * 4 + 3] = 50 + (205 * i) / 255; // low values fade so the grid under them stays readable
  }
  ctx.putImageData(img, 0, 0);
  return { lo: scale === 'log' ? 10 ** lo : lo, hi: scale === 'log' ? 10 ** hi : hi };
}

/** A small horizontal viridis bar (the heat legend). */
export function paintLegend(canvas, width = 140) {
  canvas.width = width; canvas.height = 1;
  const ctx = canvas.getContext('2d');
  for (let x = 0; x < width; x++) { ctx.fillStyle = viridisCss(x / (width - 1)); ctx.fillRect(x, 0, 1, 1); }
}

/** Paint a (Q, N) matrix into `canvas`, one pixel per entry, viridis from its finite min to max. */
export function paintMatrix(canvas, level) {
  const [rows, cols] = level.shape;
  return paintHeat(canvas, { shape: [1, rows, cols], data: level.data }, { anchor: 0 });
}
