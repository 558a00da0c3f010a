// Talking to the server: fetch wrappers, decoding of maps, and a request coalescer
// (one request in flight, the latest wins, stale answers are dropped by sequence number).
import { API_BASE, DRAG_COLUMNS, STAGE_DATA_LIMIT } from './config.js';

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
      message = detail.map((d) => `${(d.loc || []).filter((p) => p !== 'body').join('.')}: ${d.msg}`).join('\n');
    } else if (body && typeof body.detail === 'string') {
      message = body.detail;
    }
    throw new ApiError(response.status, message, detail);
  }
  return body;
}

export async function getSchemes() {
  return parse(await fetch(`${API_BASE}/schemes`));
}

export async function explain(scene, { maps = [], stageData = STAGE_DATA_LIMIT, light = false, stages = !light, signal } = {}) {
  const query = new URLSearchParams();
  if (maps.length) query.set('maps', maps.join(','));
  query.set('stage_data', String(stageData));
  // while dragging: no stage list and only the grid's columns (docs/api-contract.md); the stage
  // list for the stepper and every column follow on release
  if (light) query.set('columns', DRAG_COLUMNS.join(','));
  if (stages) query.set('stages', '1');
  const response = await fetch(`${API_BASE}/explain?${query}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(scene), signal,
  });
  return parse(response);
}

/** POST /export; returns {blob, filename, data} (data = the parsed export). */
export async function exportTrace(scene) {
  const response = await fetch(`${API_BASE}/export`, {
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
  let bytes;
  if (typeof Uint8Array.fromBase64 === 'function') bytes = Uint8Array.fromBase64(b64);
  else {
    const text = atob(b64);
    bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  }
  return new Float32Array(bytes.buffer, 0, bytes.byteLength >> 2);
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
    this.nextSeq = 1;
    this.deliveredSeq = 0;
    this.inFlight = false;
    this.queued = null;
  }

  submit(payload, meta = {}) {
    const seq = this.nextSeq++;
    this.queued = { seq, payload, meta };
    if (!this.inFlight) this.pump();
    return seq;
  }

  async pump() {
    while (this.queued) {
      const job = this.queued;
      this.queued = null;
      this.inFlight = true;
      try {
        job.sentAt = performance.now();
        const result = await this.send(job.payload);
        job.receivedAt = performance.now();
        if (job.seq > this.deliveredSeq) { this.deliveredSeq = job.seq; this.onResult(result, job); }
      } catch (error) {
        if (job.seq > this.deliveredSeq && !this.queued) this.onError(error, job);
      } finally {
        this.inFlight = false;
      }
    }
  }
}
