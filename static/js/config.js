// Constants shared by the views: API paths, colours, limits. No state lives here.

export const API_BASE = '/api/v1';

// Okabe-Ito: eight colours distinguishable with the common colour-vision deficiencies.
// Box i uses OKABE_ITO[i % 8]; black (last) is kept for outlines.
export const OKABE_ITO = ['#E69F00', '#56B4E9', '#009E73', '#D55E00', '#0072B2', '#CC79A7', '#F0E442', '#000000'];
export const boxColour = (index) => OKABE_ITO[index % (OKABE_ITO.length - 1)];

// Marks drawn in a positive cell for the rule that made it positive (shape, not colour, carries it).
export const RULE_MARKS = { centre: '●', center: '●', left: '←', up: '↑', right: '→', down: '↓',
  best_anchor: '★', topk: 'K', inside: '□', ignore: '∅' };
const FALLBACK_MARKS = ['◆', '▲', '■', '★', '✚', '◇', '△', '□'];
/** The glyph for a rule: a known name's arrow/dot, else a shape chosen by its index in rule_names. */
export const ruleMark = (name, index = -1) => RULE_MARKS[name] ?? (index >= 0 ? FALLBACK_MARKS[index % FALLBACK_MARKS.length] : '?');

// Viridis control points (perceptually uniform, colour-blind safe) for heat layers.
export const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];

export const STAGE_DATA_LIMIT = 64;    // elements of a stage tensor sent inline by /explain (larger ones come from the export)
export const HASH_THROTTLE_MS = 250;   // URL hash updates while dragging
// Positives columns the grid reads while a box moves (SceneView.renderResult, predictedBox); the
// full rows, the stages and every map follow when the pointer rests.
export const DRAG_COLUMNS = ['gt', 'level', 'anchor', 'gi', 'gj', 'rule', 'pred_box_px'];
export const MIN_BOX_PX = 2;           // a drawn box smaller than this is discarded
export const MAX_TABLE_ROWS = 400;     // positives table rows rendered at once
export const FORMAT_DIGITS = 4;        // significant digits for numbers on screen
