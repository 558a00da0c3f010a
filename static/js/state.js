// The one state object of the page, with a declared schema, serialised to and from the URL hash
// (TensorFlow Playground's State.serialize idea): every view is a shareable link.
//
// Boxes are kept as {cls, x1, y1, x2, y2} in image pixels; in the hash they read
// "cls,x1,y1,x2,y2;cls,x1,...". Params are JSON objects (name -> value).

const int = (v, d) => { const n = Number(v); return Number.isInteger(n) ? n : d; };
const num = (v, d) => { const n = Number(v); return Number.isFinite(n) ? n : d; };
const json = (v, d) => { try { const o = JSON.parse(v); return o && typeof o === 'object' && !Array.isArray(o) ? o : d; } catch { return d; } };

export const SCHEMA = {
  scheme:     { kind: 'string', default: 'yolov5', doc: 'scheme name from GET /api/v1/schemes' },
  width:      { kind: 'int', default: 640, doc: 'image width, px' },
  height:     { kind: 'int', default: 640, doc: 'image height, px' },
  nc:         { kind: 'int', default: 80, doc: 'number of classes' },
  boxes:      { kind: 'boxes', default: [], doc: 'ground-truth boxes, px' },
  params:     { kind: 'object', default: {}, doc: 'scheme parameters that differ from upstream defaults' },
  seed:       { kind: 'int', default: 0, doc: 'prediction noise seed' },
  progress:   { kind: 'float', default: 0.5, doc: '0 random head, 1 perfect head' },
  level:      { kind: 'int', default: 0, doc: 'level shown (index into levels)' },
  anchor:     { kind: 'int', default: -1, doc: 'anchor shown, -1 all' },
  heat:       { kind: 'string', default: '', doc: 'heat-layer map name, empty = none' },
  zoom:       { kind: 'int', default: 1, doc: 'magnification around the selected box' },
  preds:      { kind: 'bool', default: false, doc: 'draw predicted boxes' },
  cls:        { kind: 'int', default: 0, doc: 'class for newly drawn boxes' },
  stage:      { kind: 'string', default: '', doc: 'trace stage shown in the stepper' },
  lang:       { kind: 'string', default: 'en', doc: 'en | zh' },
  compare:    { kind: 'bool', default: false, doc: 'side-by-side compare mode' },
  cmpScheme:  { kind: 'string', default: 'yolov5', doc: 'scheme of the right-hand view' },
  cmpParams:  { kind: 'object', default: {}, doc: 'parameters of the right-hand view' },
};

export function defaults() {
  const state = {};
  for (const [key, spec] of Object.entries(SCHEMA)) state[key] = structuredClone(spec.default);
  return state;
}

function encodeValue(kind, value) {
  switch (kind) {
    case 'boxes': return value.map((b) => [b.cls, b.x1, b.y1, b.x2, b.y2].map((v) => +(+v).toFixed(3)).join(',')).join(';');
    case 'object': return JSON.stringify(value);
    case 'bool': return value ? '1' : '0';
    default: return String(value);
  }
}

function decodeValue(kind, text, fallback) {
  switch (kind) {
    case 'int': return int(text, fallback);
    case 'float': return num(text, fallback);
    case 'bool': return text === '1' || text === 'true';
    case 'object': return json(text, fallback);
    case 'boxes': {
      if (!text) return [];
      const boxes = [];
      for (const part of text.split(';')) {
        const v = part.split(',').map(Number);
        if (v.length === 5 && v.every(Number.isFinite)) boxes.push({ cls: v[0], x1: v[1], y1: v[2], x2: v[3], y2: v[4] });
      }
      return boxes;
    }
    default: return text;
  }
}

/** State -> "scheme=yolov5&boxes=..." (only values that differ from the defaults). */
export function serialize(state) {
  const out = new URLSearchParams();
  for (const [key, spec] of Object.entries(SCHEMA)) {
    const text = encodeValue(spec.kind, state[key]);
    if (text !== encodeValue(spec.kind, spec.default) || key === 'scheme') out.set(key, text);
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

/** The request body of /explain and /export for the main (or compare) view. */
export function toScene(state, which = 'main') {
  const compare = which === 'compare';
  return {
    scheme: compare ? state.cmpScheme : state.scheme,
    image: { width: state.width, height: state.height },
    nc: state.nc,
    boxes: state.boxes.map((b) => ({ cls: b.cls, x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 })),
    params: { ...(compare ? state.cmpParams : state.params) },
    predictions: { seed: state.seed, progress: state.progress, pins: [] },
    device: 'auto',
  };
}

/** A scene (request body) or an export's "scene" -> state, keeping the view options of `base`. */
export function fromScene(scene, base) {
  const state = { ...structuredClone(base) };
  if (typeof scene.scheme === 'string') state.scheme = scene.scheme;
  if (scene.image) { state.width = int(scene.image.width, state.width); state.height = int(scene.image.height, state.height); }
  if (Number.isInteger(scene.nc)) state.nc = scene.nc;
  if (Array.isArray(scene.boxes)) state.boxes = scene.boxes.map((b) => ({ cls: int(b.cls, 0), x1: +b.x1, y1: +b.y1, x2: +b.x2, y2: +b.y2 }));
  if (scene.params && typeof scene.params === 'object') state.params = { ...scene.params };
  if (scene.predictions) {
    state.seed = int(scene.predictions.seed, state.seed);
    state.progress = num(scene.predictions.progress, state.progress);
  }
  return state;
}
