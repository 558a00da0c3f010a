// The one state object of the page, with a declared schema, serialised to and from the URL hash
// (TensorFlow Playground's State.serialize): every view, lesson step included, is a shareable link.
//
// Scene fields default to null = "the server's default scene" (GET /api/v1/schemes scene_defaults);
// params hold only what the learner changed (the server completes them with the upstream defaults).
// Boxes are {cls, x1, y1, x2, y2} in image pixels; in the hash "cls,x1,y1,x2,y2;...".

const int = (v, d) => { const n = Number(v); return Number.isInteger(n) ? n : d; };
const num = (v, d) => { const n = Number(v); return Number.isFinite(n) ? n : d; };
const json = (v, d) => { try { const o = JSON.parse(v); return o && typeof o === 'object' && !Array.isArray(o) ? o : d; } catch { return d; } };

export const SCHEMA = {
  scheme:     { kind: 'string', default: '', doc: 'scheme name; empty = the first one the server lists' },
  width:      { kind: 'int', default: null, doc: 'image width, px (null: the server default)' },
  height:     { kind: 'int', default: null, doc: 'image height, px' },
  nc:         { kind: 'int', default: null, doc: 'number of classes' },
  boxes:      { kind: 'boxes', default: [], doc: 'ground-truth boxes, px' },
  params:     { kind: 'object', default: {}, doc: 'scheme parameters the learner changed' },
  seed:       { kind: 'int', default: null, doc: 'prediction noise seed' },
  progress:   { kind: 'float', default: null, doc: 'training progress: 0 random head, 1 perfect head' },
  pins:       { kind: 'pins', default: [], doc: 'predicted boxes pinned at positive slots' },
  levels:     { kind: 'json', default: null, doc: 'custom levels [{stride, anchors: [[w, h], ...]}] (anchor-based schemes)' },
  level:      { kind: 'int', default: 0, doc: 'level shown (index into levels)' },
  anchor:     { kind: 'int', default: -1, doc: 'anchor shown, -1 all' },
  heat:       { kind: 'string', default: '', doc: 'heat-layer map name, "-" = none, empty = the scheme\'s first' },
  sel:        { kind: 'int', default: 0, doc: 'selected box (-1 none)' },
  view:       { kind: 'view', default: null, doc: 'image region shown x0,y0,w,h; null = around the selected box' },
  stage:      { kind: 'string', default: '', doc: 'trace stage shown in the stepper' },
  lang:       { kind: 'string', default: 'en', doc: 'en | zh' },
  compare:    { kind: 'bool', default: false, doc: 'side-by-side compare mode' },
  split:      { kind: 'bool', default: false, doc: 'branches side by side (a scheme that declares a split, e.g. YOLOv10)' },
  cmpScheme:  { kind: 'string', default: '', doc: 'scheme of the right-hand view (empty: the same)' },
  cmpParams:  { kind: 'object', default: {}, doc: 'parameters of the right-hand view' },
  lesson:     { kind: 'string', default: '', doc: 'open lesson id (empty: free play)' },
  step:       { kind: 'int', default: 0, doc: 'step of the open lesson' },
  welcome:    { kind: 'bool', default: true, doc: 'show the welcome (questions) screen' },
};

export function defaults() {
  const state = {};
  for (const [key, spec] of Object.entries(SCHEMA)) state[key] = structuredClone(spec.default);
  return state;
}

function encodeValue(kind, value) {
  if (value === null || value === undefined) return '';
  switch (kind) {
    case 'boxes': return value.map((b) => [b.cls, b.x1, b.y1, b.x2, b.y2].join(',')).join(';');
    case 'pins': return value.map((p) => [p.level, p.anchor, p.gi, p.gj, p.cx, p.cy, p.w, p.h].join(',')).join(';');
    case 'view': return [value.x0, value.y0, value.w, value.h].join(',');
    case 'object': case 'json': return JSON.stringify(value);
    case 'bool': return value ? '1' : '0';
    default: return String(value);
  }
}

function decodeList(text, size, make) {
  if (!text) return [];
  const out = [];
  for (const part of text.split(';')) {
    const v = part.split(',').map(Number);
    if (v.length === size && v.every(Number.isFinite)) out.push(make(v));
  }
  return out;
}

function decodeValue(kind, text, fallback) {
  switch (kind) {
    case 'int': return text === '' ? null : int(text, fallback);
    case 'float': return text === '' ? null : num(text, fallback);
    case 'bool': return text === '1' || text === 'true';
    case 'object': return json(text, fallback);
    case 'json': try { return JSON.parse(text); } catch { return fallback; }
    case 'boxes': return decodeList(text, 5, (v) => ({ cls: v[0], x1: v[1], y1: v[2], x2: v[3], y2: v[4] }));
    case 'pins': return decodeList(text, 8, (v) => ({ level: v[0], anchor: v[1], gi: v[2], gj: v[3], cx: v[4], cy: v[5], w: v[6], h: v[7] }));
    case 'view': { const v = text.split(',').map(Number); return v.length === 4 && v.every(Number.isFinite) ? { x0: v[0], y0: v[1], w: v[2], h: v[3] } : null; }
    default: return text;
  }
}

/** State -> "scheme=yolov5&boxes=..." (only values that differ from the defaults). */
export function serialize(state) {
  const out = new URLSearchParams();
  for (const [key, spec] of Object.entries(SCHEMA)) {
    const text = encodeValue(spec.kind, state[key]);
    if (text !== encodeValue(spec.kind, spec.default)) out.set(key, text);
  }
  return out.toString();
}

/** "#scheme=...&..." -> a complete state (defaults where absent or malformed). */
export function deserialize(hash) {
  const state = defaults();
  const params = new URLSearchParams(hash.replace(/^#/, ''));
  for (const [key, spec] of Object.entries(SCHEMA)) {
    if (params.has(key)) state[key] = decodeValue(spec.kind, params.get(key), state[key]);
  }
  return state;
}

/** The request body of /explain and /export: the state's scene, server defaults where unset. */
export function toScene(state, sceneDefaults, which = 'main') {
  const compare = which === 'compare';
  const d = sceneDefaults;
  return {
    scheme: compare ? (state.cmpScheme || state.scheme) : state.scheme,
    image: { width: state.width ?? d.image.width, height: state.height ?? d.image.height },
    nc: state.nc ?? d.nc,
    boxes: state.boxes.map((b) => ({ cls: b.cls, x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 })),
    params: { ...(compare ? state.cmpParams : state.params) },
    predictions: { seed: state.seed ?? d.predictions.seed, progress: state.progress ?? d.predictions.progress,
                   pins: compare ? [] : state.pins.map((p) => ({ ...p })) },
    device: d.device,
    ...(state.levels && !compare ? { levels: state.levels } : {}),
  };
}

/** "8: 15x5 24x16 16x24" per line -> [{stride, anchors}] (numbers as typed; the server validates them). */
export function parseLevels(text) {
  const levels = [];
  for (const line of text.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const [stride, rest = ''] = line.split(':');
    const anchors = rest.trim().split(/\s+/).filter(Boolean).map((pair) => pair.split(/[x×,]/).map(Number));
    levels.push({ stride: Number(stride), anchors });
  }
  return levels;
}

/** [{stride, anchors}] -> the editable text, one level per line. */
export function formatLevels(levels) {
  return levels.map((lv) => `${lv.stride}: ${lv.anchors.map(([w, h]) => `${w}x${h}`).join(' ')}`).join('\n');
}

/**
 * An imported document -> the scene part of a state, or an Error saying what is wrong. Accepts a
 * scene (the request body) or a LossLab export. Only the shape is checked here; the server
 * validates every value when the scene is sent (and the page shows its answer).
 */
export function sceneFromImport(data) {
  const scene = data && data.format === 'losslab-trace' ? data.scene : data;
  if (!scene || typeof scene !== 'object' || Array.isArray(scene)) return new Error('not a LossLab scene or export (expected a JSON object)');
  if (typeof scene.scheme !== 'string') return new Error('not a LossLab scene or export: it has no "scheme"');
  if (!Array.isArray(scene.boxes ?? [])) return new Error('"boxes" must be a list');
  const boxes = [];
  for (const [i, b] of (scene.boxes ?? []).entries()) {
    const values = [b?.cls, b?.x1, b?.y1, b?.x2, b?.y2];
    if (!values.every((v) => typeof v === 'number' && Number.isFinite(v))) return new Error(`boxes[${i}]: cls, x1, y1, x2, y2 must all be numbers`);
    boxes.push({ cls: b.cls, x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 });
  }
  return {
    scheme: scene.scheme,
    width: scene.image?.width ?? null,
    height: scene.image?.height ?? null,
    nc: scene.nc ?? null,
    boxes,
    params: scene.params && typeof scene.params === 'object' ? { ...scene.params } : {},
    seed: scene.predictions?.seed ?? null,
    progress: scene.predictions?.progress ?? null,
    pins: Array.isArray(scene.predictions?.pins) ? scene.predictions.pins.map((p) => ({ ...p })) : [],
    levels: Array.isArray(scene.levels) ? scene.levels : null,
  };
}
