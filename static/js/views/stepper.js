// The stepper: the scheme's pipeline (its declared phases, each a clickable box), the stages of the
// chosen phase, and for the chosen stage what the code did: its sentence, the upstream symbol, the
// values in force, the cells it is about (lit up on the grid, listed for the selected box), and its
// tensors as a summary (shape, min, max, mean; the data only when small). Never a raw dump.
import { el, fmt, fmtValue } from './format.js';
import { t } from '../i18n.js';

/** The pipeline diagram: one box per declared phase that has stages, arrows between. */
export function renderPipeline(root, spec, result, chosen, onPick) {
  root.replaceChildren();
  const stages = result?.stages || [];
  if (!spec || !stages.length) { el('p', { cls: 'hint', text: t('stages.wait') }, root); return; }
  const chosenPhase = stages.find((s) => s.name === chosen)?.phase;
  spec.phases.forEach((phase, i) => {
    const mine = stages.filter((s) => s.phase === phase.name);
    if (!mine.length) return;
    if (i) el('span', { cls: 'arrow', text: '→' }, root);
    const b = el('button', { cls: `phase${phase.name === chosenPhase ? ' on' : ''}`, attrs: { type: 'button', 'data-phase': phase.name, 'data-testid': 'pipeline-phase', title: phase.doc } }, root);
    el('strong', { text: phase.title }, b);
    el('small', { text: ` ${mine.length}` }, b);
    b.addEventListener('click', () => onPick(mine[0].name));
  });
}

/** The list of stages (all phases, in the order the code ran them) as a select. */
export function renderStageSelect(select, result, chosen) {
  const stages = result?.stages || [];
  const names = stages.map((s) => s.name);
  if ([...select.options].map((o) => o.value).join('\n') !== names.join('\n')) {
    select.replaceChildren();
    stages.forEach((s, i) => {
      const o = el('option', { text: `${String(i + 1)}. ${s.title} — ${s.name}` }, select);
      o.value = s.name;
    });
  }
  if (names.includes(chosen)) select.value = chosen;
  return select.value;
}

/** The chosen stage. fetchFull() gives the export for a small tensor the explain response left out. */
export function renderStage(root, result, name, selectedBox) {
  root.replaceChildren();
  const stage = result?.stages?.find((s) => s.name === name);
  if (!stage) return;
  el('h3', { text: stage.title }, root);
  const where = el('p', { cls: 'stagewhere' }, root);
  el('code', { text: stage.name }, where);
  if (stage.level) where.append(` · ${t('stages.level')} ${stage.level}`);
  el('p', { cls: 'explain', text: stage.explain }, root);
  if (stage.code) { const p = el('p', { cls: 'code', text: `${t('stages.code')}: ` }, root); el('code', { text: stage.code }, p); }
  const values = Object.entries(stage.values || {});
  if (values.length) {
    const table = el('table', { cls: 'kvtable' }, root);
    for (const [k, v] of values) {
      const tr = el('tr', {}, table);
      el('th', { text: k }, tr); el('td', { text: fmtValue(v) }, tr);
    }
  }
  const cells = stage.cells || [];
  if (cells.length) {
    const mine = cells.filter((c) => c.gt === selectedBox);
    el('h4', { text: `${t('stages.cells')}: ${String(cells.length)} · ${t('stages.forBox')} #${selectedBox}: ${String(mine.length)}` }, root);
    const list = el('ul', { cls: 'stagecells', attrs: { 'data-testid': 'stage-cells' } }, root);
    for (const c of mine.slice(0, 60)) {
      const li = el('li', { text: `${result.levels[c.level]?.name ?? c.level} (${c.gi}, ${c.gj})${result.levels[c.level]?.anchors ? ` a${c.anchor}` : ''}${c.label ? ` — ${c.label}` : ''}` }, list);
      Object.assign(li.dataset, { level: c.level, anchor: c.anchor, gi: c.gi, gj: c.gj, gt: c.gt });
    }
  }
  el('h4', { text: t('stages.tensors') }, root);
  const table = el('table', { cls: 'table tensors' }, root);
  const head = el('tr', {}, el('thead', {}, table));
  for (const h of ['tensor', 'dims', 'shape', 'min', 'max', 'mean', 'data']) el('th', { text: t(`stages.col.${h}`) }, head);
  const body = el('tbody', {}, table);
  for (const tensor of stage.tensors || []) {
    const tr = el('tr', { attrs: { 'data-testid': 'stage-tensor', 'data-name': tensor.name } }, body);
    el('td', { text: tensor.name }, tr);
    el('td', { text: tensor.dims || '' }, tr);
    el('td', { text: `(${tensor.shape.join(', ')}) ${tensor.dtype}` }, tr);
    for (const k of ['min', 'max', 'mean']) el('td', { text: fmt(tensor[k]) }, tr);
    el('td', { cls: 'data', text: tensor.data ? fmtValue(tensor.data) : t('stages.summaryOnly') }, tr);
  }
}
