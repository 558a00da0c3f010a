// Guided lessons (filled in by the lessons work): the welcome, one lesson per question, predict
// then reveal. This first version only keeps the welcome screen closed.
export class Lessons {
  constructor(ctx) { this.ctx = ctx; this.guess = []; }
  async start() { this.ctx.$('welcome').hidden = true; }
  sync() {}
  onResult() {}
  picking() { return false; }
  toggleGuess() {}
}
