// English / 中文 dictionary. Elements carry data-i18n="key"; code calls t(key).

const DICT = {
  en: {
    'app.title': 'LossLab',
    'app.subtitle': 'label assignment and loss, computed by the real PyTorch code',
    'action.export': 'Export JSON', 'action.import': 'Import JSON', 'action.copyLink': 'Copy link',
    'action.delete': 'Delete box', 'action.clear': 'Clear',
    'action.background': 'Background picture (stays on this computer)',
    'controls.title': 'Scheme and parameters', 'controls.scheme': 'Scheme',
    'controls.predictions': 'Predictions', 'controls.progress': 'Training progress (0 random head, 1 perfect)',
    'controls.seed': 'Random seed', 'controls.scene': 'Scene', 'controls.width': 'Width', 'controls.height': 'Height',
    'controls.nc': 'Classes', 'controls.cls': 'Class of new/selected box', 'controls.preset': 'Preset',
    'hint.editor': 'Drag on empty space to draw a box; drag a box to move it, its corners to resize. Arrow keys nudge 1 px, Shift+arrow one cell of the selected level; Delete removes.',
    'compare.title': 'Compare', 'compare.on': 'Side by side with a second setting',
    'view.title': 'Image, grid and positives', 'view.level': 'Level', 'view.anchor': 'Anchor',
    'view.heat': 'Heat layer', 'view.zoom': 'Zoom (around the selected box)', 'view.preds': 'predicted boxes', 'view.allAnchors': 'all anchors', 'view.noHeat': 'none',
    'summary.positives': 'Positives', 'summary.total': 'Total loss',
    'cell.title': 'Cell inspector',
    'cell.hint': 'Hover a cell (or pick a row of the positives table) to see every number the code computed for it.',
    'cell.none': 'No positive in this cell at this level: no target was assigned here.',
    'cell.maps': 'Heat-map values at this cell', 'cell.positive': 'positive',
    'cell.anchorFilter': 'Anchor-ratio filter for a box centred in this cell', 'cell.neighbours': 'Neighbour rules for boxes centred in this cell',
    'cell.bceFloor': 'BCE with a soft target t (here tobj < 1) cannot reach 0: its minimum, at p = t, is the entropy −t·ln t − (1−t)·ln(1−t).',
    'legend.rules': 'rules', 'legend.lines': 'line: cell corner → box centre (the offset) · dashed: anchors to scale around the selected box',
    'counts.title': 'Positives per level and anchor', 'counts.total': 'total', 'counts.perBox': 'per box',
    'notes.title': 'What the code says',
    'loss.title': 'Loss', 'loss.term': 'term', 'loss.value': 'value',
    'loss.bar': 'Loss terms (stacked per level where the code splits them)',
    'focal.title': 'Focal loss −α_t (1−p_t)^γ ln p_t',
    'focal.noCurve': 'The server does not provide the curve (requested: GET /api/v1/focal_curve); only server points are drawn.',
    'table.title': 'Positives table', 'table.more': 'more rows not shown',
    'stages.title': 'Step through the code', 'stages.tensors': 'Tensors', 'stages.values': 'Values',
    'stages.code': 'Upstream code', 'stages.fetching': 'fetching the full export…',
    'preset.choose': '— choose a preset —', 'preset.half': 'Centre exactly at a cell half (P3)',
    'preset.border': 'Centre on the image border', 'preset.ratio': 'w/h ratio exactly anchor_t (rejected: strict <)',
    'preset.tiny': 'A tiny box', 'preset.fight': 'Two boxes fighting for one cell', 'preset.crowded': 'Crowded scene (20 boxes)',
    'preset.learners19': '50×80 box at (100, 203): 19 positives', 'preset.learners17': 'Same box at (100, 204): 17 positives',
    'status.loading': 'Loading schemes…', 'status.ready': 'Ready', 'status.copied': 'Link copied',
    'status.imported': 'Imported', 'status.error': 'Server error',
  },
  zh: {
    'app.title': 'LossLab',
    'app.subtitle': '标签分配与损失,由真实的 PyTorch 代码计算',
    'action.export': '导出 JSON', 'action.import': '导入 JSON', 'action.copyLink': '复制链接',
    'action.delete': '删除框', 'action.clear': '清空', 'action.background': '背景图片(只留在本机)',
    'controls.title': '方案与参数', 'controls.scheme': '方案', 'controls.predictions': '预测',
    'controls.progress': '训练进度(0 随机头,1 完美)', 'controls.seed': '随机种子', 'controls.scene': '场景',
    'controls.width': '宽', 'controls.height': '高', 'controls.nc': '类别数', 'controls.cls': '新框/选中框的类别',
    'controls.preset': '预设',
    'hint.editor': '在空白处拖动画框;拖动框可移动,拖动角可缩放。方向键移动 1 像素,Shift+方向键移动所选层的一个网格;Delete 删除。',
    'compare.title': '对比', 'compare.on': '与第二种设置并排对比',
    'view.title': '图像、网格与正样本', 'view.level': '层', 'view.anchor': '锚框', 'view.heat': '热力图层', 'view.zoom': '放大(以所选框为中心)',
    'view.preds': '预测框', 'view.allAnchors': '全部锚框', 'view.noHeat': '无',
    'summary.positives': '正样本数', 'summary.total': '总损失',
    'cell.title': '网格检查器', 'cell.hint': '将鼠标悬停在网格上(或点击正样本表中的一行)查看代码为它计算的每个数值。',
    'cell.none': '该层此网格没有正样本:没有目标分配到这里。', 'cell.maps': '此网格的热力图数值', 'cell.positive': '正样本',
    'cell.anchorFilter': '中心在此网格的框的锚框宽高比筛选', 'cell.neighbours': '中心在此网格的框的邻格规则',
    'cell.bceFloor': '软目标 t(这里 tobj < 1)下 BCE 无法为 0:在 p = t 时取最小值,即熵 −t·ln t − (1−t)·ln(1−t)。',
    'legend.rules': '规则', 'legend.lines': '线:网格左上角 → 框中心(偏移量)· 虚线:以所选框为中心、按比例绘制的锚框',
    'counts.title': '每层每个锚框的正样本数', 'counts.total': '合计', 'counts.perBox': '每个框',
    'notes.title': '代码说明',
    'loss.title': '损失', 'loss.term': '项', 'loss.value': '数值', 'loss.bar': '损失项(代码按层拆分处按层堆叠)',
    'focal.title': 'Focal 损失 −α_t (1−p_t)^γ ln p_t',
    'focal.noCurve': '服务器未提供曲线(已请求 GET /api/v1/focal_curve);只画服务器给出的点。',
    'table.title': '正样本表', 'table.more': '行未显示',
    'stages.title': '逐步查看代码', 'stages.tensors': '张量', 'stages.values': '数值', 'stages.code': '上游代码',
    'stages.fetching': '正在获取完整导出…',
    'preset.choose': '— 选择预设 —', 'preset.half': '中心正好在网格一半处 (P3)', 'preset.border': '中心在图像边界上',
    'preset.ratio': '宽高比正好等于 anchor_t(严格小于,被拒绝)', 'preset.tiny': '很小的框',
    'preset.fight': '两个框争夺同一网格', 'preset.crowded': '拥挤场景(20 个框)',
    'preset.learners19': '50×80 框,中心 (100, 203):19 个正样本', 'preset.learners17': '同一框,中心 (100, 204):17 个正样本',
    'status.loading': '正在加载方案…', 'status.ready': '就绪', 'status.copied': '链接已复制',
    'status.imported': '已导入', 'status.error': '服务器错误',
  },
};

let current = 'en';

export function setLanguage(lang) {
  current = DICT[lang] ? lang : 'en';
  document.documentElement.lang = current === 'zh' ? 'zh-CN' : 'en';
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
}

export function t(key) {
  return DICT[current][key] ?? DICT.en[key] ?? key;
}

export const LANGUAGES = Object.keys(DICT);
