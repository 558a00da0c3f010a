// Wiring: state -> serialise -> request -> render. One state object (state.js); views are
// idempotent render functions of (element, server result).
import { deserialize, serialize, toScene, fromScene, defaults } from './state.js';
import { getSchemes, explain, exportTrace, Coalescer, ApiError } from './api.js';
import { setLanguage, t } from './i18n.js';
import { HASH_THROTTLE_MS, STAGE_DATA_LIMIT, ruleMark } from './config.js';
import { SceneView, viridis } from './views/scene.js';
import { renderCellInfo } from './views/cellinfo.js';
import { renderCounts, renderPositivesTable, renderNotes } from './views/tables.js';
import { renderLosses, renderFocal } from './views/losses.js';
import { renderStageList, renderStage } from './views/stages.js';
import { renderControls, showParamError, clearErrors } from './views/controls.js';
import { fmt, el } from './views/format.js';
import { PRESETS } from './presets.js';

const $ = (id) => document.getElementById(id);

const app = {
  state: deserialize(location.hash),
  schemes: {},
  result: null,
  cmpResult: null,
  selected: -1,
  hoverCell: null,
  exportCache: null, // {key, promise}
  lastHash: '',
  hashTimer: null,
  slowTimer: null,
};

// Instrumentation for the e2e tests and benchmarks/page_latency.py.
const probe = { latencies: [], renderTimes: [], renderMs: [], roundTripMs: [], computeMs: [], renders: 0, renderedSeq: 0, submittedSeq: 0, errors: 0 };
window.__losslab = probe;

// ---- hash ------------------------------------------------------------------------------------
function writeHash(now = false) {
  const write = () => {
    app.hashTimer = null;
    const hash = `#${serialize(app.state)}`;
    if (hash !== location.hash) { app.lastHash = hash; history.replaceState(null, '', hash); }
  };
  if (now) { clearTimeout(app.hashTimer); write(); } else if (!app.hashTimer) app.hashTimer = setTimeout(write, HASH_THROTTLE_MS);
}

window.addEventListener('hashchange', () => {
  if (location.hash === app.lastHash) return;
  app.state = deserialize(location.hash);
  app.selected = -1;
  syncControls();
  update();
});

// ---- requests --------------------------------------------------------------------------------
function neededMaps(dragging, heat) {
  if (!dragging) return ['all'];
  return heat ? [heat] : [];
}

const mainRequests = new Coalescer(
  ({ scene, maps, stageData }) => explain(scene, { maps, stageData, light: stageData === 0 }),
  { onResult: (result, job) => onResult(result, job), onError: (error, job) => onError(error, job, '') },
);
const cmpRequests = new Coalescer(
  ({ scene, maps, stageData }) => explain(scene, { maps, stageData, stages: false }), // the compare column has no stepper
  { onResult: (result) => { app.cmpResult = result; renderCompare(); }, onError: (error, job) => onError(error, job, 'cmp-') },
);

/** Zoom around the selected (else first) box; not called during a drag so the view holds still. */
function applyZoom() {
  const focus = app.state.boxes[app.selected] ?? app.state.boxes[0];
  const cx = focus ? (focus.x1 + focus.x2) / 2 : app.state.width / 2;
  const cy = focus ? (focus.y1 + focus.y2) / 2 : app.state.height / 2;
  sceneView.setZoom(app.state.zoom, cx, cy);
  cmpView.setZoom(app.state.zoom, cx, cy);
}

// dragging: a box or a slider thumb is moving; its requests are light ones (api.js explain)
function update({ dragging = false, pointerTime = null } = {}) {
  writeHash(!dragging);
  sceneView.setImage(app.state.width, app.state.height);
  if (!dragging) applyZoom();
  // while dragging, the scene view has already redrawn the dragged box itself
  if (!dragging) sceneView.renderBoxes(app.state.boxes, app.selected);
  const scene = toScene(app.state);
  const maps = neededMaps(dragging, app.state.heat);
  const seq = mainRequests.submit({ scene, maps, stageData: dragging ? 0 : STAGE_DATA_LIMIT }, { pointerTime, dragging });
  probe.submittedSeq = seq;
  if (app.state.compare) {
    cmpView.setImage(app.state.width, app.state.height);
    cmpView.renderBoxes(app.state.boxes, -1);
    cmpRequests.submit({ scene: toScene(app.state, 'compare'), maps: neededMaps(dragging, ''), stageData: 0 }, {});
  }
}

function onResult(result, job) {
  app.result = result;
  clearErrors($('param-controls'));
  $('scene-error').textContent = '';
  $('scheme-error').textContent = '';
  setStatus('');
  const t0 = performance.now();
  renderFast(job.seq, { dragging: job.meta.dragging });
  probe.renderMs.push(performance.now() - t0);
  if (job.meta.dragging) {
    probe.roundTripMs.push(job.receivedAt - job.sentAt);
    probe.computeMs.push(result.compute_ms);
  }
  if (job.meta.pointerTime !== null && job.meta.pointerTime !== undefined) {
    // pointer event -> the frame that shows the grid for it (measured at the next animation frame)
    requestAnimationFrame(() => {
      probe.latencies.push(performance.now() - job.meta.pointerTime);
      probe.renderTimes.push(performance.now());
      performance.mark(`losslab-render-${job.seq}`);
    });
  }
  probe.renders += 1;
  probe.renderedSeq = job.seq;
  // the heavy views (table, plots, stepper) wait until the pointer rests: the drag's last
  // request is sent with dragging = false
  clearTimeout(app.slowTimer);
  if (!job.meta.dragging) app.slowTimer = setTimeout(renderSlow, 0);
}

function onError(error, job, prefix) {
  probe.errors += 1;
  const message = error instanceof ApiError ? error.message : `${t('status.error')}: ${error.message || error}`;
  let placed = false;
  for (const d of error.detail || []) {
    const loc = (d.loc || []).filter((p) => p !== 'body');
    if (loc[0] === 'params' && loc[1]) placed = showParamError($(prefix ? 'cmp-param-controls' : 'param-controls'), loc[1], d.msg, prefix) || placed;
    else if (loc[0] === 'boxes' || loc[0] === 'image' || loc[0] === 'nc') { $('scene-error').textContent = `${loc.join('.')}: ${d.msg}`; placed = true; }
    else if (loc[0] === 'scheme') { $(prefix ? 'cmp-scheme-error' : 'scheme-error').textContent = d.msg; placed = true; }
  }
  setStatus(message, true); // the last good view stays as it is
}

function setStatus(text, isError = false) {
  const s = $('status');
  s.textContent = text;
  s.classList.toggle('error', isError);
}

// ---- rendering -------------------------------------------------------------------------------
function levelIndex(result = app.result) {
  return Math.max(0, Math.min(app.state.level, (result?.levels.length || 1) - 1));
}

function renderFast(seq, { dragging = false } = {}) {
  const r = app.result;
  if (!r) return;
  syncViewSelects(r);
  sceneView.renderResult(r, { levelIndex: levelIndex(), anchor: app.state.anchor, heat: app.state.heat, preds: app.state.preds, boxes: app.state.boxes, seq });
  $('positive-count').textContent = String(r.positives.length);
  $('loss-total').textContent = fmt(r.losses.total);
  $('compute-ms').textContent = `${r.family} · ${r.device} · ${fmt(r.compute_ms)} ms`;
  renderCounts($('counts'), r);
  if (dragging) return; // legend and inspector follow when the pointer rests
  renderHeatLegend();
  renderCell();
}

function renderSlow() {
  const r = app.result;
  if (!r) return;
  renderNotes($('notes'), r);
  renderPositivesTable($('positives-table'), r, (row) => {
    app.state.level = row.level; app.state.anchor = -1;
    app.hoverCell = { gi: row.gi, gj: row.gj };
    writeHash(true);
    renderFast(probe.renderedSeq);
    sceneView.showCell(row.gi, row.gj);
  });
  renderLosses($('loss-bar'), $('loss-table'), r);
  renderFocal($('focal-plot'), $('focal-note'), r);
  const stage = renderStageList($('stage-select'), r, app.state.stage);
  renderStage($('stage-detail'), r, stage, fetchExport);
  renderLegend();
}

function renderCell() {
  if (!app.hoverCell) return;
  renderCellInfo($('cell-info'), { result: app.result, levelIndex: levelIndex(), gi: app.hoverCell.gi, gj: app.hoverCell.gj, boxes: app.state.boxes, params: {} });
}

function renderHeatLegend() {
  const root = $('heat-legend');
  root.replaceChildren();
  const range = sceneView.heatRange;
  if (!range) return;
  const canvas = el('canvas', {}, null);
  canvas.width = 140; canvas.height = 1;
  const ctx = canvas.getContext('2d');
  for (let x = 0; x < 140; x++) { const [r, g, b] = viridis(x / 139); ctx.fillStyle = `rgb(${r},${g},${b})`; ctx.fillRect(x, 0, 1, 1); }
  root.append(`${range.name} (${range.reduce}): ${fmt(range.lo)}`, canvas, fmt(range.hi));
  const doc = app.result?.map_names?.[range.name];
  if (doc) el('span', { text: `— ${doc}` }, root);
}

function renderLegend() {
  const root = $('legend');
  root.replaceChildren();
  const r = app.result;
  if (!r) return;
  root.append(`${t('legend.rules')}: `);
  r.rule_names.forEach((name, i) => el('span', { text: `${ruleMark(name, i)} ${name}` }, root));
  el('span', { text: `· ${t('legend.lines')}` }, root);
}

function renderCompare() {
  const r = app.cmpResult;
  $('cmp-col').hidden = !app.state.compare;
  if (!r || !app.state.compare) return;
  $('cmp-title').textContent = `${r.scheme} ${Object.entries(app.state.cmpParams).map(([k, v]) => `${k}=${v}`).join(' ')}`;
  $('cmp-positive-count').textContent = String(r.positives.length);
  $('cmp-loss-total').textContent = fmt(r.losses.total);
  const L = Math.max(0, Math.min(app.state.level, r.levels.length - 1));
  cmpView.renderResult(r, { levelIndex: L, anchor: app.state.anchor, heat: '', preds: false, boxes: app.state.boxes, seq: 0 });
  renderCounts($('cmp-counts'), r);
}

function fetchExport() {
  const key = JSON.stringify(toScene(app.state));
  if (!app.exportCache || app.exportCache.key !== key) {
    app.exportCache = { key, promise: exportTrace(toScene(app.state)).then((x) => x.data) };
  }
  return app.exportCache.promise;
}

// ---- controls --------------------------------------------------------------------------------
function schemeSpec(name = app.state.scheme) { return app.schemes[name]; }

function fillSchemeSelect(select, value) {
  select.replaceChildren();
  for (const spec of Object.values(app.schemes)) { const o = el('option', { text: `${spec.title} (${spec.name})` }, select); o.value = spec.name; }
  select.value = value;
}

function syncViewSelects(result) {
  const level = $('level-select');
  const names = result.levels.map((l) => `${l.name} · stride ${l.stride} · ${l.grid[1]}×${l.grid[0]}`);
  if ([...level.options].map((o) => o.textContent).join('|') !== names.join('|')) {
    level.replaceChildren();
    names.forEach((n, i) => { const o = el('option', { text: n }, level); o.value = i; });
  }
  level.value = String(levelIndex(result));
  const anchors = result.levels[levelIndex(result)].anchors;
  const anchorNames = [t('view.allAnchors'), ...(anchors || []).map((a, i) => `a${i} · ${a.map(fmt).join('×')} px`)];
  const anchorSel = $('anchor-select');
  if ([...anchorSel.options].map((o) => o.textContent).join('|') !== anchorNames.join('|')) {
    anchorSel.replaceChildren();
    anchorNames.forEach((n, i) => { const o = el('option', { text: n }, anchorSel); o.value = i - 1; });
  }
  anchorSel.value = String(Math.min(app.state.anchor, (anchors?.length || 0) - 1));
  const heat = $('heat-select');
  const mapNames = ['', ...Object.keys(result.map_names || {})];
  if ([...heat.options].map((o) => o.value).join('|') !== mapNames.join('|')) {
    heat.replaceChildren();
    for (const m of mapNames) { const o = el('option', { text: m || t('view.noHeat') }, heat); o.value = m; if (m) o.title = result.map_names[m]; }
  }
  heat.value = app.state.heat;
}

function syncControls() {
  setLanguage(app.state.lang);
  $('lang-toggle').textContent = app.state.lang === 'zh' ? 'English' : '中文';
  fillSchemeSelect($('scheme-select'), app.state.scheme);
  const spec = schemeSpec();
  $('scheme-doc').textContent = spec ? `${spec.doc} — ${spec.upstream}` : '';
  renderControls($('param-controls'), spec, app.state.params, (name, value, { live = false } = {}) => { app.state.params = { ...app.state.params, [name]: value }; update({ dragging: live }); });
  $('progress').value = app.state.progress; $('progress-out').textContent = fmt(app.state.progress);
  $('seed').value = app.state.seed;
  $('img-w').value = app.state.width; $('img-h').value = app.state.height;
  $('nc').value = app.state.nc; $('cls-picker').value = app.state.cls; $('cls-picker').max = app.state.nc - 1;
  $('show-preds').checked = app.state.preds;
  $('zoom-select').value = String(app.state.zoom);
  $('compare-on').checked = app.state.compare;
  $('compare-controls').hidden = !app.state.compare;
  $('cmp-col').hidden = !app.state.compare;
  fillSchemeSelect($('cmp-scheme-select'), app.state.cmpScheme);
  renderControls($('cmp-param-controls'), schemeSpec(app.state.cmpScheme), app.state.cmpParams, (name, value, { live = false } = {}) => { app.state.cmpParams = { ...app.state.cmpParams, [name]: value }; update({ dragging: live }); }, 'cmp-');
  const presets = $('preset-select');
  presets.replaceChildren();
  for (const key of ['choose', ...Object.keys(PRESETS)]) { const o = el('option', { text: t(`preset.${key}`) }, presets); o.value = key === 'choose' ? '' : key; }
}

function bindControls() {
  $('scheme-select').addEventListener('change', (e) => {
    app.state.scheme = e.target.value; app.state.params = {}; app.state.stage = '';
    const spec = schemeSpec(); app.state.heat = spec ? Object.keys(spec.maps || {})[0] || '' : '';
    syncControls(); update();
  });
  $('cmp-scheme-select').addEventListener('change', (e) => { app.state.cmpScheme = e.target.value; app.state.cmpParams = {}; syncControls(); update(); });
  const setProgress = (e, live) => { app.state.progress = Number(e.target.value); $('progress-out').textContent = fmt(app.state.progress); update({ dragging: live }); };
  $('progress').addEventListener('input', (e) => setProgress(e, true)); // light requests while sliding
  $('progress').addEventListener('change', (e) => setProgress(e, false));
  $('seed').addEventListener('change', (e) => { app.state.seed = Math.max(0, parseInt(e.target.value, 10) || 0); update(); });
  $('img-w').addEventListener('change', (e) => { app.state.width = parseInt(e.target.value, 10) || app.state.width; update(); });
  $('img-h').addEventListener('change', (e) => { app.state.height = parseInt(e.target.value, 10) || app.state.height; update(); });
  $('nc').addEventListener('change', (e) => { app.state.nc = parseInt(e.target.value, 10) || app.state.nc; update(); });
  $('cls-picker').addEventListener('change', (e) => {
    app.state.cls = Math.max(0, parseInt(e.target.value, 10) || 0);
    if (app.selected >= 0 && app.state.boxes[app.selected]) { app.state.boxes[app.selected].cls = app.state.cls; }
    update();
  });
  $('level-select').addEventListener('change', (e) => { app.state.level = Number(e.target.value); app.state.anchor = -1; writeHash(true); renderFast(probe.renderedSeq); });
  $('anchor-select').addEventListener('change', (e) => { app.state.anchor = Number(e.target.value); writeHash(true); renderFast(probe.renderedSeq); });
  $('heat-select').addEventListener('change', (e) => { app.state.heat = e.target.value; writeHash(true); renderFast(probe.renderedSeq); });
  $('zoom-select').addEventListener('change', (e) => { app.state.zoom = Number(e.target.value); writeHash(true); applyZoom(); renderFast(probe.renderedSeq); });
  $('show-preds').addEventListener('change', (e) => { app.state.preds = e.target.checked; writeHash(true); renderFast(probe.renderedSeq); });
  $('compare-on').addEventListener('change', (e) => { app.state.compare = e.target.checked; if (app.state.compare && !app.state.cmpScheme) app.state.cmpScheme = app.state.scheme; syncControls(); update(); });
  $('stage-select').addEventListener('change', (e) => { app.state.stage = e.target.value; writeHash(true); renderStage($('stage-detail'), app.result, app.state.stage, fetchExport); });
  const step = (d) => {
    const sel = $('stage-select');
    const i = Math.max(0, Math.min(sel.options.length - 1, sel.selectedIndex + d));
    if (sel.options[i]) { sel.selectedIndex = i; sel.dispatchEvent(new Event('change')); }
  };
  $('stage-prev').addEventListener('click', () => step(-1));
  $('stage-next').addEventListener('click', () => step(1));
  $('preset-select').addEventListener('change', (e) => {
    const make = PRESETS[e.target.value];
    if (!make) return;
    const spec = schemeSpec();
    const strides = spec?.strides || [8, 16, 32];
    const anchorT = app.state.params.anchor_t ?? spec?.params.find((p) => p.name === 'anchor_t')?.default;
    app.state.boxes = make({ width: app.state.width, height: app.state.height, nc: app.state.nc, strides, anchors: spec?.anchors_px ?? app.result?.levels.map((l) => l.anchors), anchorT });
    app.selected = app.state.boxes.length ? 0 : -1;
    e.target.value = '';
    update();
  });
  $('delete-box').addEventListener('click', () => {
    if (app.selected < 0) return;
    app.state.boxes.splice(app.selected, 1); app.selected = -1; update();
  });
  $('clear-boxes').addEventListener('click', () => { app.state.boxes = []; app.selected = -1; update(); });
  $('lang-toggle').addEventListener('click', () => { app.state.lang = app.state.lang === 'zh' ? 'en' : 'zh'; syncControls(); writeHash(true); renderFast(probe.renderedSeq); renderSlow(); });
  $('export-json').addEventListener('click', async () => {
    try {
      const { blob, filename } = await exportTrace(toScene(app.state));
      const url = URL.createObjectURL(blob);
      const a = el('a', { attrs: { href: url, download: filename } }, document.body);
      a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (error) { setStatus(error.message, true); }
  });
  $('import-json').addEventListener('change', async (e) => {
    const file = e.target.files?.[0];
    if (!file) return;
    try {
      const data = JSON.parse(await file.text());
      const scene = data.format === 'losslab-trace' ? data.scene : data;
      app.state = fromScene(scene, app.state);
      // an export lists every parameter; keep only those that differ from the upstream defaults
      const spec = schemeSpec();
      for (const p of spec?.params || []) if (app.state.params[p.name] === p.default) delete app.state.params[p.name];
      app.selected = -1;
      syncControls(); update();
      setStatus(t('status.imported'));
    } catch (error) { setStatus(`import: ${error.message}`, true); }
    e.target.value = '';
  });
  $('copy-link').addEventListener('click', async () => {
    writeHash(true);
    try { await navigator.clipboard.writeText(location.href); setStatus(t('status.copied')); } catch { setStatus(location.href); }
  });
  $('bg-file').addEventListener('change', (e) => {
    const file = e.target.files?.[0];
    sceneView.setBackground(file ? URL.createObjectURL(file) : null); // a blob: URL, never uploaded
  });
}

// ---- start -----------------------------------------------------------------------------------
const sceneView = new SceneView($('scene-wrap'), {
  editable: true,
  testid: 'scene',
  currentClass: () => Math.min(app.state.cls, app.state.nc - 1),
  nudgeStride: () => app.result?.levels[levelIndex()]?.stride ?? 8,
  onSelect: (index, { silent } = {}) => {
    app.selected = index;
    if (index >= 0 && app.state.boxes[index]) { app.state.cls = app.state.boxes[index].cls; $('cls-picker').value = app.state.cls; }
    if (!silent) { sceneView.renderBoxes(app.state.boxes, index); applyZoom(); }
  },
  onBoxes: (boxes, { dragging, pointerTime }) => {
    app.state.boxes = boxes.map((b) => ({ ...b }));
    update({ dragging, pointerTime });
  },
  onHover: (cell) => { if (cell) { app.hoverCell = cell; renderCell(); } },
});
const cmpView = new SceneView($('cmp-scene-wrap'), { editable: false, testid: 'cmp-scene' });

async function start() {
  setLanguage(app.state.lang);
  setStatus(t('status.loading'));
  try {
    const { schemes } = await getSchemes();
    for (const s of schemes) app.schemes[s.name] = s;
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  if (!app.schemes[app.state.scheme]) app.state.scheme = Object.keys(app.schemes)[0] || app.state.scheme;
  if (!app.schemes[app.state.cmpScheme]) app.state.cmpScheme = app.state.scheme;
  if (!location.hash) {
    app.state.heat = Object.keys(schemeSpec()?.maps || {})[0] || '';
    app.state.boxes = PRESETS.learners19();
  }
  syncControls();
  bindControls();
  update();
  document.body.dataset.ready = '1';
}

start();
export { app, defaults };
