// Constants of the page (no state, no domain values: those come from the server's declaration).

export const API_BASE = '/api/v1';
export const STAGE_DATA_LIMIT = 64;    // elements of a stage tensor sent inline by /explain (larger ones come from the export)
export const HASH_THROTTLE_MS = 250;   // URL hash updates while dragging
export const MIN_BOX_PX = 2;           // a drawn box smaller than this is discarded
export const MAX_TABLE_ROWS = 400;     // positives table rows rendered at once
export const MAX_GRID_CHECKS = 600;    // check labels drawn on the grid at once (the inspector lists all)
export const FORMAT_DIGITS = 4;        // significant digits for numbers on screen
