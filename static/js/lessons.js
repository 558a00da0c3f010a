// Guided lessons (TensorFlow Playground's idea): the welcome lists the questions; a lesson is data
// served by GET /api/v1/lessons/{id} (scene, visible controls, text per step); the page applies a
// step to its one state, hides the controls the step does not need, and lets the learner predict
// before the code's answer is revealed (POST /api/v1/reveal says hits, misses and extras, each with
// why). The learner's record stays in this browser (localStorage); nothing leaves it.
import { getLessons, getLesson, revealGuess, getPresets } from './api.js';
import { el } from './views/format.js';
import { t } from './i18n.js';

const STORE = 'losslab.lessons';

function record() {
  try { return JSON.parse(localStorage.getItem(STORE) || '{}'); } catch { return {}; }
}

function save(update) {
  try { localStorage.setItem(STORE, JSON.stringify({ ...record(), ...update })); } catch { /* private mode: no record */ }
}

export class Lessons {
  /** ctx: {app, $, update, syncControls, setStatus, gridView, levelIndex, writeHash} */
  constructor(ctx) {
    this.ctx = ctx;
    this.list = [];
    this.current = null;   // the open lesson (texts in the page's language)
    this.guess = [];       // [{gi, gj}] the learner's predicted cells
    this.predicting = false;
    this.lastReveal = null;
  }

  async start() {
    const { $, app } = this.ctx;
    $('welcome-free').addEventListener('click', () => this.leave());
    $('welcome-continue').addEventListener('click', () => {
      const last = record().last;
      if (last) this.open(last.id, last.step);
    });
    $('open-welcome').addEventListener('click', () => { app.state.welcome = true; this.showWelcome(); this.ctx.writeHash(true); });
    $('lesson-close').addEventListener('click', () => this.leave());
    $('lesson-next').addEventListener('click', () => this.next());
    $('lesson-prev').addEventListener('click', () => this.previous());
    $('predict-mode').addEventListener('click', () => this.setPredicting(!this.predicting));
    $('predict-clear').addEventListener('click', () => { this.guess = []; this.drawGuess(); });
    $('reveal').addEventListener('click', () => this.reveal());
    await this.loadList();
    if (app.state.lesson) await this.open(app.state.lesson, app.state.step, { keepScene: true });
    else this.showWelcome();
  }

  async loadList() {
    try { this.list = (await getLessons(this.ctx.app.state.lang)).lessons; } catch { this.list = []; }
  }

  /** Show the welcome screen when the state asks for it and no lesson is open. */
  showWelcome() {
    const { $, app } = this.ctx;
    const show = app.state.welcome && !app.state.lesson && !location.hash.includes('welcome=0') && this.list.length !== 0;
    $('welcome').hidden = !show;
    if (!show) return;
    const list = $('lesson-list');
    list.replaceChildren();
    const done = record();
    for (const lesson of this.list) {
      const li = el('li', {}, list);
      const b = el('button', { attrs: { type: 'button', 'data-testid': 'lesson-link', 'data-lesson': lesson.id } }, li);
      el('strong', { text: lesson.question }, b);
      el('small', { text: lesson.summary || '' }, b);
      if (done[lesson.id]?.done) el('small', { cls: 'done', text: '✓' }, b);
      b.addEventListener('click', () => this.open(lesson.id, 0));
    }
    $('welcome-continue').hidden = !record().last;
  }

  /** Free play: close the welcome and any lesson; every control visible again. */
  leave() {
    const { $, app } = this.ctx;
    app.state.lesson = ''; app.state.step = 0; app.state.welcome = false;
    this.current = null;
    $('welcome').hidden = true;
    $('lesson').hidden = true;
    this.setPredicting(false);
    this.showControls(null);
    this.ctx.syncControls();
    this.ctx.update();
  }

  async open(id, step = 0, { keepScene = false } = {}) {
    const { $, app } = this.ctx;
    try { this.current = await getLesson(id, app.state.lang); } catch (error) { this.ctx.setStatus(error.message, true); return; }
    app.state.lesson = id;
    app.state.welcome = false;
    $('welcome').hidden = true;
    await this.apply(this.current.steps[step] ? step : 0, { keepScene });
  }

  async next() {
    const steps = this.current?.steps || [];
    const next = this.ctx.app.state.step + 1;
    if (next === steps.length) { save({ [this.current.id]: { ...(record()[this.current.id] || {}), done: true } }); this.leave(); return; }
    if (steps[next]) await this.apply(next);
  }

  async previous() {
    const steps = this.current?.steps || [];
    const previous = steps.findIndex((_, i) => i + 1 === this.ctx.app.state.step);
    if (previous !== -1) await this.apply(previous);
  }

  /** Put the page in the state a step starts from and show its text and controls. */
  async apply(index, { keepScene = false } = {}) {
    const { app } = this.ctx;
    const lesson = this.current;
    const step = lesson.steps[index];
    app.state.step = index;
    save({ last: { id: lesson.id, step: index } });
    this.lastReveal = null;
    if (!keepScene && step.scene !== 'keep') await this.applyScene(lesson, step.scene);
    this.renderPanel(lesson, step, index);
    this.ctx.syncControls();
    this.showControls(step.controls);
    this.setPredicting(Boolean(step.predict), step.predict?.clue === 'heat');
    this.ctx.update();
  }

  async applyScene(lesson, scene) {
    const { app } = this.ctx;
    const s = app.state;
    s.scheme = lesson.scheme;
    s.params = { ...(scene.params || {}) };
    s.pins = (scene.pins || []).map((p) => ({ ...p })); s.levels = null; s.view = null; s.stage = '';
    s.split = Boolean(scene.split);
    s.width = scene.width ?? null; s.height = scene.height ?? null; s.nc = scene.nc ?? null;
    s.seed = scene.seed ?? null; s.progress = scene.progress ?? null;
    s.compare = Boolean(scene.compare); s.cmpScheme = scene.cmpScheme || ''; s.cmpParams = {};
    if (scene.preset) {
      const presets = (await getPresets(s.scheme, { image: { width: s.width ?? app.sceneDefaults.image.width, height: s.height ?? app.sceneDefaults.image.height }, nc: s.nc ?? app.sceneDefaults.nc })).presets;
      const preset = presets.find((p) => p.name === scene.preset);
      s.boxes = (preset?.boxes || []).map((b) => ({ ...b }));
      s.params = { ...preset?.params, ...s.params };
    } else {
      s.boxes = (scene.boxes || []).map((b) => ({ ...b }));
    }
    for (const key of ['sel', 'level', 'heat', 'anchor']) if (key in scene) s[key] = scene[key];
  }

  renderPanel(lesson, step, index) {
    const { $ } = this.ctx;
    $('lesson').hidden = false;
    $('lesson-title').textContent = lesson.question;
    $('lesson-progress').textContent = `${t('lesson.step')} ${String(index + 1)} ${t('lesson.of')} ${String(lesson.steps.length)}`;
    const text = $('lesson-text');
    text.replaceChildren();
    el('p', { text: step.text }, text);
    if (step.rule) {
      const rule = el('div', { cls: 'rule', attrs: { 'data-testid': 'lesson-rule' } }, text);
      el('strong', { text: `${t('lesson.rule')}: ` }, rule);
      rule.append(step.rule);
      if (step.code) { const p = el('p', {}, rule); el('code', { text: step.code }, p); }
    }
    $('lesson-prev').disabled = index === 0;
    $('lesson-next').textContent = lesson.steps[index + 1] ? t('lesson.next') : t('lesson.done');
  }

  /** Show only the controls a step names (Playground hides what a lesson does not need). */
  showControls(names) {
    this.shownControls = names;
    const keep = new Set(names || []);
    for (const node of document.querySelectorAll('[data-control], [data-param]')) {
      const name = node.dataset.param ? `param:${node.dataset.param}` : node.dataset.control;
      node.toggleAttribute('data-hidden-by-lesson', names !== null && !keep.has(name));
    }
    for (const group of document.querySelectorAll('[data-control-group]')) {
      const visible = names === null || [...group.querySelectorAll('[data-control], [data-param]')].some((n) => !n.hasAttribute('data-hidden-by-lesson'));
      group.toggleAttribute('data-hidden-by-lesson', !visible);
    }
  }

  /** After the controls are rebuilt (a parameter panel re-rendered): hide again what the step hides. */
  refreshControls() {
    if (this.current && this.shownControls) this.showControls(this.shownControls);
  }

  // ---- predict, then reveal ----------------------------------------------------------------
  picking() { return this.predicting; }

  setPredicting(on, clue = false) {
    const { $ } = this.ctx;
    this.predicting = on;
    document.body.classList.toggle('predicting', on);
    // a lesson step whose text reads the heat layer (t, IoU, cost …) keeps it while the learner predicts
    document.body.classList.toggle('lesson-clue', on && clue);
    $('predict-mode').classList.toggle('on', on);
    $('predict-hint').hidden = !on;
    $('reveal').hidden = !on;
    $('predict-clear').hidden = !on;
    if (on) { this.guess = []; $('reveal-result').hidden = true; this.ctx.gridView.renderReveal(null); }
    this.drawGuess();
  }

  toggleGuess(level, cell) {
    const index = this.guess.findIndex((g) => g.gi === cell.gi && g.gj === cell.gj);
    if (index === -1) this.guess.push({ gi: cell.gi, gj: cell.gj });
    else this.guess.splice(index, 1);
    this.guessLevel = level;
    this.drawGuess();
  }

  drawGuess() { this.ctx.gridView.renderGuess(this.predicting ? this.guess : []); }

  async reveal() {
    const { app, $ } = this.ctx;
    const step = this.current?.steps[app.state.step];
    const level = step?.predict?.level ?? this.ctx.levelIndex();
    const anchor = step?.predict?.anchor ?? -1;
    let answer;
    try {
      answer = await revealGuess(this.ctx.sceneOf(), level, anchor, this.guess.map((g) => [g.gi, g.gj]), app.state.lang);
    } catch (error) { this.ctx.setStatus(error.message, true); return; }
    this.lastReveal = answer;
    this.setPredicting(false);
    const root = $('reveal-result');
    root.hidden = false;
    root.replaceChildren();
    root.dataset.hits = String(answer.hits.length);
    root.dataset.misses = String(answer.misses.length);
    root.dataset.extras = String(answer.extras.length);
    el('strong', { text: `${answer.hits.length} ${t('predict.hits')} · ${answer.misses.length} ${t('predict.misses')} · ${answer.extras.length} ${t('predict.extras')}` }, root);
    const list = el('ul', {}, root);
    for (const reason of answer.reasons) {
      const li = el('li', { cls: reason.kind, text: reason.text }, list);
      Object.assign(li.dataset, { gi: reason.gi, gj: reason.gj, kind: reason.kind });
    }
    this.ctx.gridView.renderReveal({ level, ...answer });
    if (this.current) {
      save({ [this.current.id]: { ...(record()[this.current.id] || {}), hits: answer.hits.length, misses: answer.misses.length, extras: answer.extras.length } });
    }
  }

  /** After the language changes, or a result arrives. */
  async sync() {
    await this.loadList();
    const { app, $ } = this.ctx;
    if (app.state.lesson) {
      await this.open(app.state.lesson, app.state.step, { keepScene: true });
      return;
    }
    this.current = null;
    $('lesson').hidden = true;
    this.setPredicting(false);
    this.showControls(null);
    this.showWelcome();
  }

  onResult(result) {
    const step = this.current?.steps[this.ctx.app.state.step];
    if (step?.highlight === 'positives' && result.positives) {
      const sel = this.ctx.app.state.sel;
      this.ctx.gridView.highlight(result.positives.filter((r) => r.gt === sel));
    }
  }
}
