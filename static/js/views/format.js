// Number formatting shared by the views (display only: every number is the server's).
import { FORMAT_DIGITS } from '../config.js';
import { plain } from '../api.js';

/** A number for the screen, FORMAT_DIGITS significant digits (safe to pass to Array.map). */
export function fmt(value) {
  const digits = FORMAT_DIGITS;
  const v = plain(value);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v !== 'number') return String(v);
  if (Number.isNaN(v)) return 'nan';
  if (!Number.isFinite(v)) return v > 0 ? 'inf' : '-inf';
  if (Number.isInteger(v) && Math.abs(v) < 1e7) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-4 || a >= 1e7)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

export function fmtValue(value) {
  if (Array.isArray(value)) return `[${value.map(fmtValue).join(', ')}]`;
  return fmt(value);
}

/** Create an element with text and classes (never innerHTML, so CSP stays strict). */
export function el(tag, { text, cls, attrs } = {}, parent = null) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  if (attrs) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}
