// Parameter controls built from GET /api/v1/schemes: range + number for numbers, checkbox for
// bool, select for choice. Each has an error slot the server's 422 message can point to.
import { fmt, el } from './format.js';
import { t } from '../i18n.js';

/**
 * @param root     container
 * @param spec     a scheme from /schemes
 * @param values   current non-default values {name: value}
 * @param onChange (name, value, {live}) => void; live is true while a range thumb is moving
 * @param prefix   '' for the main view, 'cmp-' for the compare view (test ids and ids)
 */
export function renderControls(root, spec, values, onChange, prefix = '') {
  root.replaceChildren();
  for (const p of spec?.params || []) {
    const value = p.name in values ? values[p.name] : p.default;
    const box = el('div', { cls: 'param' }, root);
    box.dataset.param = p.name;
    const id = `${prefix}param-${p.name}`;
    const label = el('label', { attrs: { for: id } }, box);
    el('span', { cls: 'name', text: p.name }, label);
    if (p.upstream) label.append(`  (${p.upstream})`);
    const ctl = el('div', { cls: 'ctl' }, box);
    let input;
    if (p.kind === 'bool') {
      input = el('input', { attrs: { type: 'checkbox', id, 'data-testid': `${prefix}slider-${p.name}` } }, ctl);
      input.checked = Boolean(value);
      input.addEventListener('change', () => onChange(p.name, input.checked));
    } else if (p.kind === 'choice') {
      input = el('select', { attrs: { id, 'data-testid': `${prefix}slider-${p.name}` } }, ctl);
      for (const c of p.choices) { const o = el('option', { text: c }, input); o.value = c; }
      input.value = value;
      input.addEventListener('change', () => onChange(p.name, input.value));
    } else {
      const step = p.step ?? (p.kind === 'int' ? 1 : 0.01);
      input = el('input', { attrs: { type: 'range', id, 'data-testid': `${prefix}slider-${p.name}`, min: p.min ?? 0, max: p.max ?? 10, step } }, ctl);
      input.value = value;
      const out = el('input', { attrs: { type: 'number', 'aria-label': `${p.name} value`, 'data-testid': `${prefix}number-${p.name}`, min: p.min ?? '', max: p.max ?? '', step } }, ctl);
      out.value = value;
      out.style.width = '5.5rem';
      const parse = (text) => (p.kind === 'int' ? parseInt(text, 10) : parseFloat(text));
      // while the thumb moves: a light request (like a box drag); the full answer on release
      input.addEventListener('input', () => { out.value = input.value; onChange(p.name, parse(input.value), { live: true }); });
      input.addEventListener('change', () => onChange(p.name, parse(input.value)));
      out.addEventListener('change', () => { const v = parse(out.value); if (Number.isFinite(v)) { input.value = v; onChange(p.name, v); } });
    }
    if (p.doc) el('div', { cls: 'doc', text: p.doc + (p.kind !== 'bool' && p.kind !== 'choice' ? ` · ${t('controls.default')} ${fmt(p.default)}` : '') }, box);
    el('div', { cls: 'error', attrs: { 'data-testid': `${prefix}error-${p.name}`, id: `${prefix}error-${p.name}` } }, box);
  }
}

export function showParamError(root, name, message, prefix = '') {
  const slot = root.querySelector(`[data-testid="${prefix}error-${name}"]`);
  if (slot) { slot.textContent = message; return true; }
  return false;
}

export function clearErrors(root) {
  for (const slot of root.querySelectorAll('.error')) slot.textContent = '';
}
