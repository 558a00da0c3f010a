// Number formatting and DOM helpers (display only: every number is the server's).
import { FORMAT_DIGITS } from '../config.js';
import { plain } from '../api.js';

/** A number for the screen, FORMAT_DIGITS significant digits (safe to pass to Array.map). */
export function fmt(value) {
  const digits = FORMAT_DIGITS;
  const v = plain(value);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (v === null || v === undefined) return '–';
  if (typeof v !== 'number') return String(v);
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v > 0 ? '∞' : '−∞';
  if (Number.isInteger(v) && Math.abs(v) < 1e7) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-4 || a >= 1e7)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

/** A rule's name in the reader's language (the server's label), from its name key. */
export function ruleLabel(spec, name) {
  return spec?.rules?.find((r) => r.name === name)?.label ?? name;
}

/** A value (number, list, boolean) for the screen. */
export function fmtValue(value) {
  if (Array.isArray(value) || ArrayBuffer.isView(value)) return `(${Array.from(value, fmtValue).join(', ')})`;
  return fmt(value);
}

const UNIT_SUFFIX = { px: ' px', grid: ' cells', bins: ' bins' };

/** A value with its declared unit ("12.5 px", "0.83"). */
export function fmtUnit(value, unit) {
  return fmtValue(value) + (UNIT_SUFFIX[unit] ?? '');
}

/** A formula template "CIoU = {iou} − ..." with each {column} replaced by the row's value. */
export function fillFormula(template, row) {
  return template.replace(/\{([a-z_0-9]+)\}/gi, (whole, name) => (name in row ? fmtValue(row[name]) : whole));
}

/** A field location ["body", "boxes", 0, "x2"] as "boxes[0].x2" (the way the server names it). */
export function fmtLoc(loc) {
  let out = '';
  for (const part of loc || []) {
    if (part === 'body' || part === 'query') continue;
    out += typeof part === 'number' ? `[${part}]` : (out ? `.${part}` : String(part));
  }
  return out || 'scene';
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

/** A long run of numbers shortened in the middle for a table cell. */
export function shortList(value, keep = 4) {
  if (!Array.isArray(value) || value.length <= keep * 2) return fmtValue(value);
  return `(${value.slice(0, keep).map(fmt).join(', ')}, … ${value.slice(-keep).map(fmt).join(', ')})`;
}
