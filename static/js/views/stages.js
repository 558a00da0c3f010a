// Step-through of the trace: pick a stage, see its explanation, values and tensors.
import { fmt, fmtValue, el } from './format.js';
import { t } from '../i18n.js';

export function renderStageList(select, result, chosen) {
  const names = (result?.stages || []).map((s) => s.name);
  const current = [...select.options].map((o) => o.value);
  if (names.join('\n') !== current.join('\n')) {
    select.replaceChildren();
    (result?.stages || []).forEach((s, i) => {
      const o = el('option', { text: `${i + 1}. ${s.title} — ${s.name}` }, select);
      o.value = s.name;
    });
  }
  if (names.includes(chosen)) select.value = chosen;
  return select.value;
}

/**
 * @param fetchFull  () => Promise<export> for tensors the explain response left out (data null)
 */
export function renderStage(root, result, name, fetchFull) {
  root.replaceChildren();
  const stage = result?.stages?.find((s) => s.name === name);
  if (!stage) return;
  el('h3', { text: stage.title }, root);
  el('p', { text: stage.explain }, root);
  if (stage.code) { const p = el('p', { text: `${t('stages.code')}: ` }, root); el('code', { text: stage.code }, p); }
  const values = Object.entries(stage.values || {});
  if (values.length) el('p', { text: `${t('stages.values')}: ${values.map(([k, v]) => `${k} = ${fmtValue(v)}`).join(', ')}` }, root);
  el('h4', { text: t('stages.tensors') }, root);
  for (const tensor of stage.tensors || []) {
    const box = el('div', { attrs: { 'data-testid': 'stage-tensor' } }, root);
    box.dataset.name = tensor.name;
    el('div', { text: `${tensor.name} [${tensor.dims || '?'}] shape (${tensor.shape.join(', ')}) ${tensor.dtype}` + (tensor.min !== undefined && tensor.min !== null ? ` · min ${fmt(tensor.min)} max ${fmt(tensor.max)} mean ${fmt(tensor.mean)}` : '') }, box);
    const pre = el('pre', {}, box);
    if (tensor.data) pre.textContent = formatTensor(tensor.data, tensor.shape);
    else {
      pre.textContent = t('stages.fetching');
      fetchFull().then((full) => {
        const match = full?.stages?.find((s) => s.name === stage.name)?.tensors?.find((x) => x.name === tensor.name);
        pre.textContent = match?.data ? formatTensor(match.data, match.shape) : '(not in the export)';
      }).catch((error) => { pre.textContent = String(error.message || error); });
    }
  }
}

/** Rows of the last axis, at most 200 rows shown. */
export function formatTensor(data, shape) {
  const last = shape.length ? shape[shape.length - 1] || 1 : 1;
  const lines = [];
  for (let i = 0; i < data.length && lines.length < 200; i += last) lines.push(data.slice(i, i + last).map(fmtValue).join('  '));
  if (data.length > 200 * last) lines.push(`… ${data.length - 200 * last} more values`);
  return lines.join('\n');
}
