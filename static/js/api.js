// Talking to the server: fetch wrappers, decoding of maps, and a request coalescer
// (one request in flight, the latest wins, stale answers are dropped by sequence number).
import { API_BASE, STAGE_DATA_LIMIT } from './config.js';
import { fmtLoc } from './views/format.js';

export class ApiError extends Error {
  constructor(status, message, detail) {
    super(message);
    this.status = status;
    this.detail = detail; // FastAPI's [{loc, msg, type}] for 422
  }
}

/** Contract: non-finite floats arrive as the strings "nan", "inf", "-inf". */
export function plain(value) {
  if (value === 'nan') return NaN;
  if (value === 'inf') return Infinity;
  if (value === '-inf') return -Infinity;
  return value;
}

async function parse(response) {
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let detail = [];
    if (body && Array.isArray(body.detail)) {
      detail = body.detail;
      message = detail.map((d) => `${fmtLoc(d.loc)}: ${d.msg}`).join('\n');
    } else if (body && typeof body.detail === 'string') {
      message = body.detail;
    }
    throw new ApiError(response.status, message, detail);
  }
  return body;
}

export async function getSchemes(lang = 'en') {
  return parse(await fetch(`${API_BASE}/schemes?lang=${lang}`));
}

export async function getPresets(scheme, scene, lang = 'en') {
  const query = new URLSearchParams({ scheme, width: scene.image.width, height: scene.image.height, nc: scene.nc, lang });
  return parse(await fetch(`${API_BASE}/presets?${query}`));
}

/**
 * POST /explain. `kind`: 'light' while a box or slider moves (the grid's columns and the shown heat
 * map only), 'full' when a gesture ends (every map and column, the stage list and the checks),
 * 'compare' for the compare column (every map, no stages), 'probe' to validate a scene (nothing heavy).
 */
export async function explain(scene, { kind = 'full', heat = '', lang = 'en', checks = 'all', target = null, signal } = {}) {
  const query = new URLSearchParams();
  if (target !== null && kind !== 'probe') query.set('target', String(target)); // the selected box: its panel, box.* maps
  if (kind === 'light') {
    query.set('columns', 'grid');
    query.set('stage_data', '0');
    query.set('layout', 'columns'); // a fifth of the bytes of row objects (thousands of rows in a crowded focal scene)
    if (heat) query.set('maps', heat);
  } else if (kind === 'full') {
    query.set('maps', 'all');
    query.set('columns', 'all');
    query.set('stages', '1');
    query.set('checks', checks);
    query.set('stage_data', String(STAGE_DATA_LIMIT));
  } else if (kind === 'compare') {
    query.set('maps', 'all');
    query.set('checks', checks);
    query.set('stage_data', '0');
  } else if (kind === 'checks') { // the tests about some cells only, for the inspector
    query.set('maps', 'none');
    query.set('columns', 'grid');
    query.set('checks', checks);
    query.set('stage_data', '0');
  } else {
    query.set('stage_data', '0');
    query.set('columns', 'grid');
  }
  query.set('lang', lang);
  const response = await fetch(`${API_BASE}/explain?${query}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(scene), signal,
  });
  const result = await parse(response);
  if (result && result.positives && !Array.isArray(result.positives)) result.positives = positiveRows(result.positives, result.rule_names);
  return result;
}

/** A positives table sent as columns (?layout=columns) as one object per row, `rule` by its name. */
export function positiveRows(table, ruleNames) {
  const rows = Array.from({ length: table.count }, () => ({}));
  for (const [name, values] of Object.entries(table.columns)) {
    if (name === 'rule') values.forEach((v, i) => { rows[i].rule = ruleNames[v] ?? v; });
    else values.forEach((v, i) => { rows[i][name] = v; });
  }
  return rows;
}

export async function getLessons(lang = 'en') {
  return parse(await fetch(`${API_BASE}/lessons?lang=${lang}`));
}

export async function getLesson(id, lang = 'en') {
  return parse(await fetch(`${API_BASE}/lessons/${encodeURIComponent(id)}?lang=${lang}`));
}

/** POST /reveal: the learner's guessed cells of one level against the code's positives. */
export async function revealGuess(scene, level, anchor, guess, lang = 'en') {
  const response = await fetch(`${API_BASE}/reveal?lang=${lang}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ scene, level, anchor, guess }),
  });
  return parse(response);
}

/** POST /compare: what changed from `before` to `after` (sentences, cells added and removed). */
export async function compareScenes(before, after, lang = 'en') {
  const response = await fetch(`${API_BASE}/compare?lang=${lang}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ before, after }),
  });
  return parse(response);
}

/** POST /export; returns {blob, filename, data} (data = the parsed export). */
export async function exportTrace(scene, lang = 'en') {
  const response = await fetch(`${API_BASE}/export?lang=${lang}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(scene),
  });
  if (!response.ok) return parse(response);
  const text = await response.text();
  const disposition = response.headers.get('Content-Disposition') || '';
  const match = /filename="?([^";]+)"?/.exec(disposition);
  return { blob: new Blob([text], { type: 'application/json' }), filename: match ? match[1] : 'losslab-trace.json', data: JSON.parse(text) };
}

/** base64 little-endian float32 -> Float32Array. */
export function decodeFloat32(b64) {
  const bytes = typeof Uint8Array.fromBase64 === 'function'
    ? Uint8Array.fromBase64(b64) : Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer); // a fresh buffer holding exactly the float32 values
}

/** One level of a map: {shape: [A, H, W], data: Float32Array}. Accepts b64 or flat data. */
export function decodeLevel(level) {
  if (level.data_cache) return level.data_cache;
  let data;
  if (typeof level.b64 === 'string') data = decodeFloat32(level.b64);
  else if (Array.isArray(level.data)) data = Float32Array.from(level.data.map(plain));
  else data = new Float32Array(0);
  const decoded = { shape: level.shape, data };
  Object.defineProperty(level, 'data_cache', { value: decoded, enumerable: false });
  return decoded;
}

/**
 * Coalesces requests: at most one in flight; a request submitted while one is in flight replaces
 * any queued one (latest wins). Every submission gets a sequence number; a result is delivered only
 * if no newer result was delivered before it.
 */
export class Coalescer {
  constructor(send, { onResult, onError }) {
    this.send = send;
    this.onResult = onResult;
    this.onError = onError;
    this.submitted = []; // every job, in submission order: a job's sequence number is its position (from 1)
    this.inFlight = false;
    this.queued = null;
  }

  submit(payload, meta = {}) {
    const job = { payload, meta };
    job.seq = this.submitted.push(job);
    this.queued = job;
    if (!this.inFlight) this.pump();
    return job.seq;
  }

  async pump() {
    // one request in flight; a newer submission replaces the queued one, so answers arrive in order.
    // The next request leaves before this answer is drawn: the server computes it while the page draws.
    if (this.inFlight || !this.queued) return;
    const job = this.queued;
    this.queued = null;
    this.inFlight = true;
    let result;
    let failure = null;
    try {
      job.sentAt = performance.now();
      result = await this.send(job.payload);
      job.receivedAt = performance.now();
    } catch (error) {
      failure = error;
    }
    this.inFlight = false;
    this.pump();
    if (failure === null) {
      try { this.onResult(result, job); } catch (error) { failure = error; }
    }
    if (failure !== null && !this.inFlight) this.onError(failure, job); // else a newer request is on its way: its answer decides
  }
}
