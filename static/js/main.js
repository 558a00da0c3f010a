// Wiring, in one direction: state -> URL -> request -> render (TensorFlow Playground's loop).
// One state object (state.js); views are idempotent render functions of (element, declaration,
// result) and never fetch; the server's answer is the only source of a number on screen.
import { deserialize, serialize, toScene, sceneFromImport, parseLevels, formatLevels } from './state.js';
import { getSchemes, getPresets, explain, exportTrace, compareScenes, Coalescer, ApiError } from './api.js';
import { setLanguage, t, language } from './i18n.js';
import { HASH_THROTTLE_MS } from './config.js';
import { GridView, renderAnchorStrip } from './views/grid.js';
import { renderInspector, renderQueryInspector } from './views/inspector.js';
import { renderMatrix } from './views/queries.js';
import { renderTarget } from './views/target.js';
import { renderPositivesTable, renderCounts } from './views/table.js';
import { renderWaterfall, renderTermBars, renderFocal } from './views/losses.js';
import { renderPipeline, renderStageSelect, renderStage } from './views/stepper.js';
import { renderControls, showParamError, clearErrors } from './views/controls.js';
import { paintLegend } from './views/colour.js';
import { fmt, fmtLoc, el } from './views/format.js';
import * as geo from './views/geometry.js';
import { Lessons } from './lessons.js';

const $ = (id) => document.getElementById(id);

const app = {
  state: deserialize(location.hash),
  schemes: {},           // name -> declaration (GET /api/v1/schemes)
  sceneDefaults: null,   // the server's default scene
  result: null,          // the last good answer for the main view
  cmpResult: null,
  error: null,           // the last failed request's error (the view keeps the last good result)
  hover: null,           // {gi, gj} under the pointer
  picked: null,          // {gi, gj} kept in the inspector by a click
  glow: null,            // cells lit by a linked view
  presets: new Map(),    // "scheme|w|h|nc" -> presets
  lastHash: '',
  hashTimer: null,
  slowTimer: null,
};

// Instrumentation for the e2e tests and benchmarks/page_latency.py: raw timestamps only.
const probe = { frames: [], renders: [], errors: [], renderedSeq: 0, submittedSeq: 0, requests: [] };
window.__losslab = probe;

const spec = (name = app.state.scheme) => app.schemes[name];
probe.scene = () => sceneOf();            // the request body the page sends for its main view
probe.state = () => structuredClone(app.state);
probe.redraw = () => renderFast(probe.renderedSeq); // the benchmark times the grid's redraw alone
const sceneOf = (which = 'main') => toScene(app.state, app.sceneDefaults, which);
const levelIndex = () => geo.clampIndex(app.state.level, app.result?.levels.length || 1);

// ---- URL -------------------------------------------------------------------------------------
function writeHash(now = false) {
  const write = () => {
    app.hashTimer = null;
    const hash = `#${serialize(app.state)}`;
    if (hash !== location.hash) { app.lastHash = hash; history.replaceState(null, '', hash); }
  };
  if (now) { clearTimeout(app.hashTimer); write(); } else if (!app.hashTimer) app.hashTimer = setTimeout(write, HASH_THROTTLE_MS);
}

window.addEventListener('hashchange', async () => {
  if (location.hash === app.lastHash) return;
  app.state = deserialize(location.hash);
  try { await loadSchemes(app.state.lang); } catch (error) { setStatus(error.message, true); }
  if (!app.schemes[app.state.scheme]) app.state.scheme = Object.keys(app.schemes)[0] || '';
  syncControls();
  lessons.sync();
  update();
});

// ---- requests --------------------------------------------------------------------------------
const mainRequests = new Coalescer(
  ({ scene, kind, heat }) => explain(scene, { kind, heat, lang: app.state.lang, checks: `box:${app.state.sel}`, target: selectedBox() ? app.state.sel : null }),
  { onResult: (result, job) => onResult(result, job), onError: (error, job) => onError(error, job) },
);
const cmpRequests = new Coalescer(
  ({ scene }) => explain(scene, { kind: 'compare', lang: app.state.lang, checks: `box:${app.state.sel}` }),
  { onResult: (result) => { app.cmpResult = result; renderCompare(); }, onError: (error) => showError(error, 'cmp-') },
);

/** A state change: write the URL, ask the server, render its answer. dragging: a light request. */
function update({ dragging = false, pointerTime = null } = {}) {
  writeHash(!dragging);
  const scene = sceneOf();
  gridView.setImage(scene.image.width, scene.image.height);
  if (!dragging) {
    gridView.renderBoxes(app.state.boxes, app.state.sel);
    applyView();
  }
  const seq = mainRequests.submit({ scene, kind: dragging ? 'light' : 'full', heat: heatRequest() }, { pointerTime, dragging });
  probe.submittedSeq = seq;
  probe.requests.push({ seq, kind: dragging ? 'light' : 'full' });
  if (splitOn()) {
    cmpView.setImage(scene.image.width, scene.image.height);
    cmpView.renderBoxes(app.state.boxes, app.state.sel);
  } else if (app.state.compare) {
    cmpView.setImage(scene.image.width, scene.image.height);
    cmpView.renderBoxes(app.state.boxes, app.state.sel);
    if (!dragging) {
      cmpRequests.submit({ scene: sceneOf('compare') }, {});
      compareScenes(scene, sceneOf('compare'), app.state.lang).then((change) => {
        app.cmpChange = change;
        renderChange($('cmp-changed'), change);
        cmpView.flash(change.added, change.removed, { keep: true });
      }).catch(() => {});
    }
  }
}

function onResult(result, job) {
  app.result = result;
  app.cellChecks = new Map(); // the tests about other boxes' cells, fetched when a cell is hovered
  app.error = null;
  clearErrors(document.body);
  $('stale').hidden = true;
  setStatus('');
  renderFast(job.seq);
  probe.renders.push({ seq: job.seq, kind: job.meta.dragging ? 'light' : 'full', sent: job.sentAt, received: job.receivedAt,
                       drawn: performance.now(), compute_ms: result.compute_ms });
  if (job.meta.pointerTime !== null && job.meta.pointerTime !== undefined) {
    const kind = job.meta.dragging ? 'light' : 'full';
    requestAnimationFrame(() => probe.frames.push({ seq: job.seq, kind, pointer: job.meta.pointerTime, frame: performance.now() }));
  }
  probe.renderedSeq = job.seq;
  clearTimeout(app.slowTimer);
  if (!job.meta.dragging) {
    app.slowTimer = setTimeout(renderSlow, 0);
    whatChanged(job.payload.scene);
  }
  lessons.onResult(result);
}

/** After a gesture: ask the server what changed since the last full answer, say it, flash the cells. */
async function whatChanged(scene) {
  const before = app.lastFullScene;
  app.lastFullScene = scene;
  if (!before || JSON.stringify(before) === JSON.stringify(scene)) return;
  if (before.scheme !== scene.scheme) { $('what-changed').replaceChildren(); return; } // a new scheme: nothing to compare
  try {
    const change = await compareScenes(before, scene, app.state.lang);
    if (app.lastFullScene !== scene) return; // a newer gesture ended meanwhile
    renderChange($('what-changed'), change);
    gridView.flash(change.added, change.removed);
  } catch { /* the main request reported any problem already */ }
}

function renderChange(root, change) {
  root.replaceChildren();
  change.sentences.forEach((sentence, i) => el(i ? 'div' : 'strong', { text: sentence, cls: i ? 'more' : 'lead' }, root));
  root.dataset.added = String(change.added.length);
  root.dataset.removed = String(change.removed.length);
  root.dataset.nothing = String(change.nothing);
}

function onError(error, job) {
  app.error = error;
  probe.errors.push(String(error.message || error));
  probe.renderedSeq = job.seq; // answered: the view stays on the last good result
  showError(error, '');
}

/** Put each 422 detail beside the control it names; the last good view stays, marked as such. */
function showError(error, prefix) {
  clearErrors(document.body);
  let placed = false;
  const scoped = (id) => $(`${prefix}${id}`) || $(id);
  for (const d of error.detail || []) {
    const loc = (d.loc || []).filter((p) => p !== 'body' && p !== 'query');
    const text = `${fmtLoc(d.loc)}: ${d.msg}`;
    if (loc[0] === 'params' && loc[1]) placed = showParamError(scoped('param-controls'), loc[1], d.msg, prefix) || placed;
    else if (loc[0] === 'scheme') { scoped('scheme-error').textContent = d.msg; placed = true; }
    else if (loc[0] === 'predictions' && loc[1] === 'progress') { $('progress-error').textContent = d.msg; placed = true; }
    else if (loc[0] === 'predictions' && loc[1] === 'seed') { $('seed-error').textContent = d.msg; placed = true; }
    else if (loc[0] === 'levels') { $('levels-error').textContent = text; placed = true; }
    else { $('scene-error').textContent = text; placed = true; }
  }
  const message = error instanceof ApiError ? error.message : `${t('status.error')}: ${error.message || error}`;
  setStatus(placed ? message : message, true);
  $('stale').hidden = !app.result;
}

function setStatus(text, isError = false) {
  const s = $('status');
  s.textContent = text;
  s.classList.toggle('error', isError);
}

// ---- rendering -------------------------------------------------------------------------------
/** The selected box, or undefined. */
function selectedBox() {
  return app.state.boxes[app.state.sel];
}

/** The heat layers on offer: the scheme's maps, and the selected box's own (box.*) when a box is selected. */
function heatLayers(s) {
  if (!s) return [];
  return [...s.maps, ...(selectedBox() ? s.target?.maps || [] : [])];
}

function heatName() {
  const s = spec();
  if (app.state.heat === '-') return '';
  if (app.state.heat && heatLayers(s).some((m) => m.name === app.state.heat)) return app.state.heat;
  return s?.maps[0]?.name || '';
}

/** The view: the state's, else around the selected box on the shown level. */
function currentView() {
  const scene = sceneOf();
  if (app.state.view) return app.state.view;
  if (spec()?.kind === 'queries') return geo.fullView(scene.image.width, scene.image.height);
  const stride = app.result?.levels[levelIndex()]?.stride ?? spec()?.strides[0] ?? 8;
  return geo.focusView(scene.image.width, scene.image.height, app.state.boxes[app.state.sel], stride);
}

function applyView() {
  const view = currentView();
  gridView.setView(view);
  if (app.state.compare || splitOn()) cmpView.setView(view);
}

function setView(view) {
  app.state.view = view;
  applyView();
  writeHash();
}

function renderFast(seq) {
  const r = app.result;
  const s = spec(r?.scheme);
  if (!r || !s) return;
  const queries = s.kind === 'queries';
  for (const id of ['level-tabs', 'anchor-strips']) $(id).hidden = queries;
  $('heat-select').closest('label').hidden = queries;
  $('matrix-panel').hidden = !queries;
  if (queries) {
    gridView.renderQueries(r, { spec: s, selectedQuery: app.query ?? -1, seq });
    $('positive-count').textContent = String(r.counts.total);
    $('loss-total').textContent = fmt(r.losses.total);
    $('compute-ms').textContent = `${s.title} · ${r.device} · ${fmt(r.compute_ms)} ms`;
    $('heat-legend').replaceChildren();
    renderBoxEntry();
    return;
  }
  syncLevelControls(r);
  const L = levelIndex();
  const split = splitOn() ? s.split : null;
  gridView.renderResult(split ? branchOf(r, split, 0) : r, { spec: s, levelIndex: L, anchor: app.state.anchor, heat: heatName(), selected: app.state.sel, seq });
  renderSplit(r, s, L);
  gridView.highlight(app.glow);
  renderAnchorStrip($('anchor-strips'), r, L, app.state.sel, app.state.anchor, (a) => { app.state.anchor = a; writeHash(true); renderFast(probe.renderedSeq); });
  $('positive-count').textContent = String(r.counts.total);
  $('loss-total').textContent = fmt(r.losses.total);
  $('compute-ms').textContent = `${s.title} · ${r.device} · ${fmt(r.compute_ms)} ms`;
  renderHeatLegend();
  renderBoxEntry();
}

function renderSlow() {
  const r = app.result;
  const s = spec(r?.scheme);
  if (!r || !s) return;
  renderInspectorNow();
  renderRuleLegend(s);
  renderNotes(r);
  renderCounts($('counts'), s, r);
  renderPositivesTable($('positives-table'), s, r, {
    onHover: (row) => glowCells(row ? [row] : null),
    onPick: (row) => pickCell(row),
  });
  renderTarget($('target-panel'), {
    spec: s, result: r,
    onHover: (cell) => (s.kind === 'queries' ? (cell && pickQuery(cell.anchor)) : glowCells(cell ? [cell] : null)),
    onPick: (cell) => (s.kind === 'queries' ? pickQuery(cell.anchor) : pickCell(cell)),
  });
  renderWaterfall($('waterfall'), r, (term, part) => glowCells(term ? termCells(r, term, part) : null));
  renderTermBars($('loss-bar'), r, { log: $('loss-log').checked });
  renderFocal($('focal-plot'), $('focal-note'), r);
  renderStepper();
  if (s.kind === 'queries') {
    renderMatrix($('matrix-panel'), {
      spec: s, result: r, matrix: app.matrix,
      onMatrix: (name) => { app.matrix = name; renderSlow(); },
      onHover: (pair) => { if (pair) { app.query = pair.query; renderInspectorNow(); gridView.renderQueries(r, { spec: s, selectedQuery: pair.query }); } },
    });
  }
}

/** Keep a cell in the inspector, on its level, in view (a positives row or a box-panel row clicked). */
function pickCell(cell) {
  app.state.level = cell.level;
  app.picked = { gi: cell.gi, gj: cell.gj };
  app.state.view = gridView.viewOnCell(cell.gi, cell.gj);
  writeHash(true);
  applyView();
  renderFast(probe.renderedSeq);
  renderInspectorNow();
}

function pickQuery(query) {
  app.query = query;
  renderInspectorNow();
  gridView.renderQueries(app.result, { spec: spec(app.result.scheme), selectedQuery: query });
}

function renderInspectorNow() {
  const s = spec(app.result?.scheme);
  if (s?.kind === 'queries') {
    if (app.query !== undefined && app.query !== null) renderQueryInspector($('cell-info'), { spec: s, result: app.result, query: app.query });
    return;
  }
  const cell = app.picked ?? app.hover;
  if (!cell || !app.result) return;
  const L = levelIndex();
  const key = `cell:${L}:${cell.gi}:${cell.gj}`;
  const extra = app.cellChecks?.get(key);
  if (extra === undefined) fetchCellChecks(key);
  const seen = new Set((app.result.checks || []).map((c) => JSON.stringify(c)));
  const checks = [...(app.result.checks || []), ...(extra || []).filter((c) => !seen.has(JSON.stringify(c)))];
  renderInspector($('cell-info'), { spec: spec(app.result.scheme), result: { ...app.result, checks }, levelIndex: L, gi: cell.gi, gj: cell.gj });
  if (app.picked) el('p', { cls: 'hint', text: t('insp.pinned') }, $('cell-info'));
}

/** The tests the code ran about one cell (any box): asked once per cell and result. */
async function fetchCellChecks(key) {
  const result = app.result;
  app.cellChecks.set(key, null); // asked
  try {
    const answer = await explain(sceneOf(), { kind: 'checks', checks: key, lang: app.state.lang });
    if (app.result !== result) return; // a newer scene arrived meanwhile
    app.cellChecks.set(key, answer.checks);
    renderInspectorNow();
  } catch { app.cellChecks.delete(key); }
}

/** The cells a loss term (or one level's part of it) comes from: its positives, as the server lists them. */
function termCells(result, term, part) {
  const level = part ? result.levels.findIndex((l) => l.name === part) : -1;
  return result.positives.filter((r) => level === -1 || r.level === level);
}

function glowCells(cells) {
  app.glow = cells;
  gridView.highlight(cells);
}

function renderStepper() {
  const r = app.result;
  const s = spec(r?.scheme);
  const chosen = renderStageSelect($('stage-select'), r, app.state.stage);
  renderPipeline($('pipeline'), s, r, chosen, (name) => pickStage(name));
  renderStage($('stage-detail'), r, chosen, app.state.sel);
  const stage = r?.stages?.find((x) => x.name === chosen);
  glowCells(stage?.cells?.length ? stage.cells : null);
}

function pickStage(name) {
  app.state.stage = name;
  const stage = app.result?.stages?.find((x) => x.name === name);
  if (stage?.level) {
    const L = app.result.levels.findIndex((l) => l.name === stage.level);
    if (L !== -1) app.state.level = L;
  }
  writeHash(true);
  renderFast(probe.renderedSeq);
  renderStepper();
}

function renderHeatLegend() {
  const root = $('heat-legend');
  const range = gridView.heatRange;
  // rebuilt only when what it says changes (a drag redraws ~20 times a second)
  const key = range ? [range.name, fmt(range.lo), fmt(range.hi), range.scale, range.reduce, range.doc, app.state.lang].join('|') : '';
  if (root.dataset.key === key && root.childNodes.length) return;
  root.dataset.key = key;
  root.replaceChildren();
  if (!range) return;
  const canvas = el('canvas', { cls: 'legendbar' });
  paintLegend(canvas);
  el('strong', { text: range.name }, root);
  root.append(` ${fmt(range.lo)} `, canvas, ` ${fmt(range.hi)}${range.scale === 'log' ? ' (log)' : ''}${range.reduce ? ` · ${t('view.reduce').replace('{reduce}', range.reduce)}` : ''}`);
  el('span', { cls: 'coldoc', text: ` — ${range.doc}` }, root);
}

function renderRuleLegend(s) {
  const root = $('rule-legend');
  root.replaceChildren();
  for (const rule of s.rules) {
    const item = el('span', { cls: 'rule', attrs: { title: rule.doc, 'data-rule': rule.name } }, root);
    el('b', { text: rule.glyph }, item);
    item.append(` ${rule.label ?? rule.name}`);
  }
}

function renderNotes(r) {
  const root = $('notes');
  root.replaceChildren();
  for (const note of r.notes) el('li', { text: note }, root);
}

/** The right grid's heat layer when the branches are side by side: the shown map's counterpart (fg -> fg_o2o). */
function splitHeat() {
  const pair = (spec()?.split?.maps || []).find(([left]) => left === heatName());
  return pair ? pair[1] : heatName();
}

/** The maps a light request asks for: the heat layer, and its counterpart when the branches are side by side. */
function heatRequest() {
  return splitOn() && splitHeat() !== heatName() ? `${heatName()},${splitHeat()}` : heatName();
}

/** Whether the branches are shown side by side (the scheme declares a split and the learner asked). */
function splitOn() {
  return Boolean(app.state.split && spec()?.split);
}

/** The result with only the positives of the split's `index`-th value (e.g. the one-to-one branch). */
function branchOf(result, split, index) {
  const { column, values } = split;
  return { ...result, positives: result.positives.filter((row) => row[column] === values[index].value) };
}

/** Branches side by side: the left grid the first value's positives, the right grid the second's,
 * each titled with the server's count. */
function renderSplit(r, s, L) {
  const split = splitOn() ? s.split : null;
  $('split-title').hidden = !split;
  if (!split) return;
  $('cmp-col').hidden = false;
  $('compare-controls').hidden = true;
  const counts = r.counts.split || [];
  // both sides titled alike: the branch, the server's count of its positives (the one total loss, of both
  // branches together, is in the summary above: a per-side total would read as the branch's own)
  const title = $('split-title');
  title.replaceChildren();
  el('span', { cls: 'muted', text: split.values[0].label }, title);
  const count = el('span', {}, title);
  el('strong', { text: String(counts[0]?.total ?? '–') }, count);
  count.append(` ${t('summary.positives')}`);
  $('cmp-title').textContent = split.values[1].label;
  $('cmp-positive-count').textContent = String(counts[1]?.total ?? '–');
  $('cmp-loss').hidden = true;
  $('cmp-changed').replaceChildren();
  $('cmp-changed').hidden = true; // the left side has no such line: the two grids stay level
  cmpView.renderResult(branchOf(r, split, 1), { spec: s, levelIndex: L, anchor: app.state.anchor, heat: splitHeat(), selected: app.state.sel, seq: 0 });
}

function renderCompare() {
  const r = app.cmpResult;
  if (splitOn()) return;
  $('cmp-col').hidden = !app.state.compare;
  $('compare-controls').hidden = false;
  $('cmp-loss').hidden = false;
  $('cmp-changed').hidden = false;
  if (!r || !app.state.compare) return;
  const s = spec(r.scheme);
  $('cmp-title').textContent = `${s?.title ?? r.scheme} ${Object.entries(app.state.cmpParams).map(([k, v]) => `${k} ${v}`).join(', ')}`;
  $('cmp-positive-count').textContent = String(r.counts.total);
  $('cmp-loss-total').textContent = fmt(r.losses.total);
  cmpView.renderResult(r, { spec: s, levelIndex: geo.clampIndex(app.state.level, r.levels.length), anchor: app.state.anchor, heat: '', selected: app.state.sel, seq: 0 });
}

// ---- controls --------------------------------------------------------------------------------
function fillSchemeSelect(select, value, blank = '') {
  select.replaceChildren();
  if (blank) { const o = el('option', { text: blank }, select); o.value = ''; }
  for (const s of Object.values(app.schemes)) { const o = el('option', { text: s.title }, select); o.value = s.name; }
  select.value = value;
}

function syncLevelControls(r) {
  const tabs = $('level-tabs');
  const L = levelIndex();
  const names = r.levels.map((l) => `${l.name} · /${l.stride} · ${l.grid[1]}×${l.grid[0]}`);
  if ([...tabs.children].map((b) => b.textContent).join('|') !== names.join('|')) {
    tabs.replaceChildren();
    names.forEach((n, i) => {
      const b = el('button', { cls: 'tab', text: n, attrs: { type: 'button', role: 'tab', 'data-level': i, 'data-testid': 'level-tab' } }, tabs);
      b.addEventListener('click', () => { app.state.level = i; writeHash(true); renderFast(probe.renderedSeq); renderInspectorNow(); });
    });
    const select = $('level-select');
    select.replaceChildren();
    names.forEach((n, i) => { const o = el('option', { text: n }, select); o.value = i; });
  }
  [...tabs.children].forEach((b, i) => b.classList.toggle('on', i === L));
  $('level-select').value = String(L);
  const heat = $('heat-select');
  const s = spec(r.scheme);
  const layers = heatLayers(s);
  const options = ['-', ...layers.map((m) => m.name)];
  if ([...heat.options].map((o) => o.value).join('|') !== options.join('|')) {
    heat.replaceChildren();
    for (const name of options) {
      const declared = layers.find((m) => m.name === name);
      const label = declared?.target ? `${t('box.heat', { n: app.state.sel })} ${name.slice(4)}` : name; // box.cost -> cost
      const o = el('option', { text: name === '-' ? t('view.noHeat') : label }, heat);
      o.value = name;
      if (declared) o.title = declared.doc;
    }
  }
  heat.value = heatName() || '-';
}

function renderBoxEntry() {
  const box = app.result?.boxes?.[app.state.sel];
  const fields = ['cx', 'cy', 'w', 'h', 'x1', 'y1', 'x2', 'y2'];
  $('box-none').hidden = Boolean(box);
  for (const f of fields) {
    const input = $(`box-${f}`);
    input.disabled = !box;
    if (document.activeElement !== input) input.value = box ? String(box[f]) : '';
  }
}

function syncControls() {
  setLanguage(app.state.lang);
  const other = app.state.lang === 'zh' ? 'en' : 'zh';
  // readable without a CJK font too: the Latin code comes first
  $('lang-switch').textContent = other === 'zh' ? 'ZH 中文' : 'EN English';
  $('lang-switch').lang = other;
  fillSchemeSelect($('scheme-select'), app.state.scheme);
  const s = spec();
  $('scheme-doc').textContent = s ? `${s.doc} — ${s.upstream}` : '';
  renderControls($('param-controls'), s, app.state.params, (name, value, { live = false } = {}) => {
    app.state.params = { ...app.state.params, [name]: value };
    update({ dragging: live });
  });
  const d = app.sceneDefaults;
  const progress = app.state.progress ?? d.predictions.progress;
  $('progress').value = progress; $('progress-out').textContent = fmt(progress);
  $('seed').value = app.state.seed ?? d.predictions.seed;
  $('img-w').value = app.state.width ?? d.image.width;
  $('img-h').value = app.state.height ?? d.image.height;
  $('nc').value = app.state.nc ?? d.nc;
  $('cls-picker').value = app.state.boxes[app.state.sel]?.cls ?? 0;
  $('levels-box').hidden = !s?.custom_levels;
  if (s?.custom_levels) {
    const model = s.strides.map((stride, i) => ({ stride, anchors: s.anchors_px[i] }));
    $('levels-text').value = formatLevels(app.state.levels ?? model);
    $('levels-box').open = Boolean(app.state.levels) || $('levels-box').open;
  }
  $('compare-on').checked = app.state.compare;
  $('cmp-col').hidden = !app.state.compare && !splitOn();
  $('split-row').hidden = !spec()?.split;
  $('predict-mode').hidden = spec()?.kind === 'queries'; // a guess is a set of grid cells
  $('split-on').checked = splitOn();
  $('split-label').textContent = spec()?.split ? `${t('split.on')} ${spec().split.values.map((v) => v.label).join(' | ')}` : '';
  fillSchemeSelect($('cmp-scheme-select'), app.state.cmpScheme, t('compare.same'));
  renderControls($('cmp-param-controls'), spec(app.state.cmpScheme || app.state.scheme), app.state.cmpParams, (name, value, { live = false } = {}) => {
    app.state.cmpParams = { ...app.state.cmpParams, [name]: value };
    update({ dragging: live });
  }, 'cmp-');
  lessons.refreshControls(); // a lesson step keeps hiding what it hides after the panel is rebuilt
  loadPresets();
}

async function loadPresets() {
  const scene = sceneOf();
  const key = `${scene.scheme}|${scene.image.width}|${scene.image.height}|${scene.nc}|${app.state.lang}`;
  if (!app.presets.has(key)) {
    try { app.presets.set(key, (await getPresets(scene.scheme, scene, app.state.lang)).presets); } catch { app.presets.set(key, []); }
  }
  const select = $('preset-select');
  select.replaceChildren();
  const blank = el('option', { text: '—' }, select); blank.value = '';
  for (const p of app.presets.get(key)) { const o = el('option', { text: p.title }, select); o.value = p.name; o.title = p.doc; }
  app.presetList = app.presets.get(key);
}

/** An integer from a number field, or null when the field does not hold one (the server says why). */
function intField(input) {
  const v = Number(input.value);
  return input.value === '' || !Number.isInteger(v) ? input.value : v;
}

function bindControls() {
  $('scheme-select').addEventListener('change', (e) => {
    app.state.scheme = e.target.value; app.state.params = {}; app.state.stage = ''; app.state.heat = ''; app.state.level = 0; app.state.anchor = -1; app.state.pins = [];
    if (!app.schemes[e.target.value]?.custom_levels) app.state.levels = null;
    syncControls(); update();
  });
  $('cmp-scheme-select').addEventListener('change', (e) => { app.state.cmpScheme = e.target.value; app.state.cmpParams = {}; syncControls(); update(); });
  const setProgress = (e, live) => { app.state.progress = Number(e.target.value); $('progress-out').textContent = fmt(app.state.progress); update({ dragging: live }); };
  $('progress').addEventListener('input', (e) => setProgress(e, true));
  $('progress').addEventListener('change', (e) => setProgress(e, false));
  $('seed').addEventListener('change', (e) => { app.state.seed = intField(e.target); update(); });
  $('img-w').addEventListener('change', (e) => { app.state.width = intField(e.target); app.state.view = null; update(); });
  $('img-h').addEventListener('change', (e) => { app.state.height = intField(e.target); app.state.view = null; update(); });
  $('nc').addEventListener('change', (e) => { app.state.nc = intField(e.target); update(); });
  $('cls-picker').addEventListener('change', (e) => {
    const cls = intField(e.target);
    const box = app.state.boxes[app.state.sel];
    if (box) { box.cls = cls; update(); }
  });
  for (const f of ['cx', 'cy', 'w', 'h', 'x1', 'y1', 'x2', 'y2']) {
    $(`box-${f}`).addEventListener('change', () => {
      const box = app.state.boxes[app.state.sel];
      if (!box) return;
      const v = (name) => Number($(`box-${name}`).value);
      app.state.boxes[app.state.sel] = ['cx', 'cy', 'w', 'h'].includes(f)
        ? geo.boxFromCentre(box.cls, v('cx'), v('cy'), v('w'), v('h'))
        : geo.roundBox({ cls: box.cls, x1: v('x1'), y1: v('y1'), x2: v('x2'), y2: v('y2') });
      update();
    });
  }
  $('levels-apply').addEventListener('click', () => {
    app.state.levels = parseLevels($('levels-text').value);
    app.state.level = 0; app.state.anchor = -1; app.state.pins = []; app.state.view = null;
    update();
  });
  $('levels-reset').addEventListener('click', () => {
    app.state.levels = null; app.state.level = 0; app.state.anchor = -1; app.state.pins = []; app.state.view = null;
    syncControls(); update();
  });
  $('level-select').addEventListener('change', (e) => { app.state.level = Number(e.target.value); writeHash(true); renderFast(probe.renderedSeq); });
  $('heat-select').addEventListener('change', (e) => { app.state.heat = e.target.value; update(); });
  $('loss-log').addEventListener('change', () => renderTermBars($('loss-bar'), app.result, { log: $('loss-log').checked }));
  $('zoom-in').addEventListener('click', () => setView(geo.zoomView(currentView(), 1.5, geo.rectCentre(viewRect()), gridView.width, gridView.height)));
  $('zoom-out').addEventListener('click', () => setView(geo.zoomView(currentView(), 0.66, geo.rectCentre(viewRect()), gridView.width, gridView.height)));
  $('zoom-fit').addEventListener('click', () => setView(geo.fullView(gridView.width, gridView.height)));
  $('zoom-focus').addEventListener('click', () => { app.state.view = null; applyView(); writeHash(); });
  $('compare-on').addEventListener('change', (e) => { app.state.compare = e.target.checked; if (app.state.compare) app.state.split = false; syncControls(); update(); });
  $('split-on').addEventListener('change', (e) => { app.state.split = e.target.checked; if (app.state.split) app.state.compare = false; syncControls(); update(); });
  const step = (next) => {
    const current = $('stage-select').selectedOptions[0];
    const target = next ? current?.nextElementSibling : current?.previousElementSibling;
    if (target) pickStage(target.value);
  };
  $('stage-prev').addEventListener('click', () => step(false));
  $('stage-next').addEventListener('click', () => step(true));
  $('stage-select').addEventListener('change', (e) => pickStage(e.target.value));
  $('preset-select').addEventListener('change', (e) => {
    const preset = app.presetList?.find((p) => p.name === e.target.value);
    if (!preset) return;
    app.state.boxes = preset.boxes.map((b) => ({ ...b }));
    app.state.params = { ...app.state.params, ...preset.params };
    app.state.sel = preset.boxes.length ? 0 : -1;
    app.state.view = null; app.state.pins = [];
    e.target.value = '';
    syncControls(); update();
  });
  $('delete-box').addEventListener('click', () => {
    if (!app.state.boxes[app.state.sel]) return;
    app.state.boxes.splice(app.state.sel, 1); app.state.sel = -1; app.state.pins = []; update();
  });
  $('clear-boxes').addEventListener('click', () => { app.state.boxes = []; app.state.sel = -1; app.state.pins = []; update(); });
  $('lang-switch').addEventListener('click', async () => {
    app.state.lang = app.state.lang === 'zh' ? 'en' : 'zh';
    setLanguage(app.state.lang); // the page's own words and the link change at once; the scheme's texts follow
    writeHash(true);
    try { await loadSchemes(app.state.lang); } catch (error) { setStatus(error.message, true); }
    syncControls();
    await lessons.sync();
    update();
  });
  $('export-json').addEventListener('click', async () => {
    try {
      const { blob, filename } = await exportTrace(sceneOf(), app.state.lang);
      const url = URL.createObjectURL(blob);
      const a = el('a', { attrs: { href: url, download: filename } }, document.body);
      a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (error) { setStatus(error.message, true); }
  });
  $('import-json').addEventListener('change', async (e) => {
    const file = e.target.files?.[0];
    e.target.value = '';
    if (file) await importFile(file);
  });
  $('copy-link').addEventListener('click', async () => {
    writeHash(true);
    try { await navigator.clipboard.writeText(location.href); setStatus(t('status.copied')); } catch { setStatus(location.href); }
  });
  $('bg-file').addEventListener('change', (e) => {
    const file = e.target.files?.[0];
    gridView.setBackground(file ? URL.createObjectURL(file) : null); // a blob: URL, never uploaded
  });
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && app.picked) { app.picked = null; gridView.setPicked(null); renderInspectorNow(); } });
}

function viewRect() { const v = currentView(); return { x: v.x0, y: v.y0, w: v.w, h: v.h }; }

/**
 * Import a scene or an export: the server checks it first (a probe request); only a scene it
 * accepts replaces the current one, and the status line says which happened and why.
 */
async function importFile(file) {
  let data;
  try { data = JSON.parse(await file.text()); } catch (error) { setStatus(`${t('status.importFailed')}: ${file.name}: not JSON (${error.message})`, true); return; }
  const imported = sceneFromImport(data);
  if (imported instanceof Error) { setStatus(`${t('status.importFailed')}: ${file.name}: ${imported.message}`, true); return; }
  const candidate = { ...app.state, ...imported, sel: imported.boxes.length ? 0 : -1, view: null, stage: '' };
  try {
    await explain(toScene(candidate, app.sceneDefaults), { kind: 'probe', lang: app.state.lang });
  } catch (error) {
    const where = (error.detail || []).map((d) => `${fmtLoc(d.loc)}: ${d.msg}`).join('; ');
    setStatus(`${t('status.importFailed')}: ${file.name}: ${where || error.message}`, true);
    return;
  }
  const s = app.schemes[imported.scheme];
  for (const p of s?.params || []) if (candidate.params[p.name] === p.default) delete candidate.params[p.name];
  app.state = candidate;
  syncControls(); update();
  setStatus(`${t('status.imported')}: ${file.name} · ${imported.scheme} · ${imported.boxes.length} ${imported.boxes.length === 1 ? 'box' : 'boxes'}`);
}

// ---- start -----------------------------------------------------------------------------------
const gridView = new GridView($('scene-wrap'), {
  editable: true,
  testid: 'scene',
  currentClass: () => Number($('cls-picker').value) || 0,
  nudgeStride: () => app.result?.levels[levelIndex()]?.stride ?? 8,
  onSelect: (index, { silent } = {}) => {
    app.state.sel = index;
    $('cls-picker').value = app.state.boxes[index]?.cls ?? $('cls-picker').value;
    if (!silent) { gridView.renderBoxes(app.state.boxes, index); writeHash(); if (app.result) { renderFast(probe.renderedSeq); renderSlow(); } }
  },
  onBoxes: (boxes, { dragging, pointerTime }) => {
    app.state.boxes = boxes.map((b) => ({ ...b }));
    // pins stay: a slot still exists after its box moved (it may just no longer be a positive)
    update({ dragging, pointerTime });
  },
  onHover: (cell) => { app.hover = cell; if (cell && !app.picked) renderInspectorNow(); },
  onPick: (cell) => {
    if (lessons.picking()) { lessons.toggleGuess(levelIndex(), cell); return; }
    app.picked = app.picked && app.picked.gi === cell.gi && app.picked.gj === cell.gj ? null : cell;
    gridView.setPicked(app.picked);
    renderInspectorNow();
  },
  onPin: (pin, { dragging, pointerTime }) => {
    // one pin per slot: moving a prediction again replaces its pin
    const same = (p) => p.level === pin.level && p.anchor === pin.anchor && p.gi === pin.gi && p.gj === pin.gj;
    app.state.pins = [...app.state.pins.filter((p) => !same(p)), pin];
    update({ dragging, pointerTime });
  },
  onView: (view) => setView(view),
});
const cmpView = new GridView($('cmp-scene-wrap'), { editable: false, testid: 'cmp-scene', onView: (view) => setView(view) });

const lessons = new Lessons({
  app, $, update, syncControls, setStatus, gridView, sceneOf,
  levelIndex, writeHash,
  setState: (patch) => { Object.assign(app.state, patch); },
});

/** The schemes' declarations in the reader's language (asked once per language). */
async function loadSchemes(lang) {
  app.schemeText ??= {};
  app.schemeText[lang] ??= await getSchemes(lang);
  const body = app.schemeText[lang];
  for (const s of body.schemes) app.schemes[s.name] = s;
  app.sceneDefaults = body.scene_defaults;
}

async function start() {
  setLanguage(app.state.lang);
  setStatus(t('status.loading'));
  try {
    await loadSchemes(app.state.lang);
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  if (!app.schemes[app.state.scheme]) app.state.scheme = Object.keys(app.schemes)[0] || '';
  if (!location.hash) {
    const presets = (await getPresets(app.state.scheme, sceneOf(), app.state.lang)).presets;
    app.state.boxes = presets.find((p) => p.name === 'learners19')?.boxes.map((b) => ({ ...b })) ?? [];
  } else if (!location.hash.includes('welcome=')) {
    app.state.welcome = false; // a shared link opens on its scene, not on the welcome
  }
  syncControls();
  bindControls();
  await lessons.start();
  update();
  setStatus('');
  document.body.dataset.ready = '1';
}

start();
export { app };
