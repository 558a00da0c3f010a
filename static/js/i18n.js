// The page's own words (buttons, headings, hints) in English and 中文. Everything about a scheme
// (parameter and map docs, notes, checks, stage titles, lessons) comes from the server already in
// the chosen language. Elements carry data-i18n="key"; code calls t(key).

const DICT = {
  en: {
    'app.title': 'LossLab',
    'app.subtitle': 'how detectors pick positives and add up their loss — computed by the real PyTorch code',
    'action.export': 'Export JSON', 'action.import': 'Import JSON', 'action.copyLink': 'Copy link',
    'action.delete': 'Delete box', 'action.clear': 'Clear boxes', 'action.questions': 'Questions',
    'action.background': 'Background picture (stays on this computer)',
    'controls.title': 'Scheme and parameters', 'controls.scheme': 'Scheme',
    'controls.predictions': 'Predictions', 'controls.progress': 'Training progress (0 untrained, 1 perfect)',
    'controls.seed': 'Random seed', 'controls.scene': 'Image and boxes', 'controls.width': 'Width', 'controls.height': 'Height',
    'controls.nc': 'Classes', 'controls.cls': 'Class of the new / selected box', 'controls.preset': 'Preset scene',
    'controls.box': 'Selected box', 'controls.noBox': 'No box selected: click a box, or drag on the image to draw one.',
    'controls.default': 'default',
    'controls.levels': 'Levels and anchors', 'controls.apply': 'Apply', 'controls.reset': 'The model\'s',
    'controls.levelsHint': 'One level per line, "stride: w×h w×h …" in pixels, e.g. "8: 15x5 24x16 16x24".',
    'hint.editor': 'Drag on empty space to draw a box; drag a box to move it, a corner to resize. Scroll to zoom, Shift+drag to pan. Arrow keys move the selected box 1 px (Shift: one cell); Delete removes it. Click a cell to keep it in the inspector.',
    'compare.title': 'Compare', 'compare.on': 'Side by side with a second setting', 'compare.same': 'same scheme',
    'compare.settings': 'Settings of this side',
    'box.title': 'Selected box', 'box.hint': 'Click a box to see what the code decided for it: its positives, the numbers behind them and every test it ran.',
    'box.cls': 'class', 'box.where': 'where', 'box.more': 'the first {shown} of {total}, in this order', 'box.noTests': 'The code ran no test for this box that it reports.',
    'box.heat': 'box',
    'view.level': 'Level', 'view.heat': 'Heat layer', 'view.noHeat': 'none', 'view.fit': 'Whole image',
    'view.focus': 'Around the box', 'view.zoomIn': 'Zoom in', 'view.zoomOut': 'Zoom out',
    'view.anchorFree': 'anchor-free: one anchor point per cell (its centre)',
    'summary.positives': 'positives', 'summary.total': 'total loss', 'summary.stale': 'showing the last valid scene',
    'insp.title': 'Cell inspector', 'insp.hint': 'Hover a cell to see whether it is positive and why; click it to keep it here.',
    'insp.cell': 'cell', 'insp.positive': 'positive for box', 'insp.notPositive': 'Not positive',
    'insp.background': 'Not positive: no box tests this cell, so it is background (objectness target 0).',
    'insp.target': 'Target', 'insp.loss': 'Loss', 'insp.tests': 'Tests the code ran here', 'insp.maps': 'Heat-map values here',
    'insp.query': 'Query', 'insp.matchedTo': 'matched to box', 'insp.noObject': 'Not matched: its class target is no-object.',
    'insp.dflTarget': 'target', 'insp.bins': 'bins', 'insp.pinned': 'kept (click another cell or press Esc)',
    'counts.title': 'Positives per level and anchor', 'counts.total': 'total', 'counts.cells': 'cells',
    'notes.title': 'What the code says about this scene',
    'loss.title': 'The loss, as it adds up', 'loss.total': 'total', 'loss.formula': 'formula',
    'loss.noComposition': 'This scheme does not break its loss down.', 'loss.logAxis': 'value (log scale)', 'loss.linearAxis': 'value',
    'loss.log': 'log scale',
    'focal.title': 'Focal curve', 'focal.none': 'This scheme has no focal term: its class loss is plain BCE.',
    'focal.on': 'Focal loss on', 'focal.off': 'Focal wrapper off', 'focal.appliesTo': 'wraps', 'focal.cells': 'this scene\'s positives',
    'focal.lossAxis': 'loss of one positive',
    'table.title': 'Positives table', 'table.more': 'more rows not shown',
    'stages.title': 'Step through the code', 'stages.tensors': 'Tensors', 'stages.code': 'Upstream code',
    'stages.cells': 'Cells this step is about', 'stages.forBox': 'for box', 'stages.level': 'level',
    'stages.data': 'values', 'stages.summaryOnly': 'summary only (see the export)', 'stages.wait': 'The steps appear when the code has run.',
    'changed.title': 'What changed',
    'status.loading': 'Loading schemes…', 'status.copied': 'Link copied', 'status.imported': 'Imported',
    'status.importFailed': 'Import failed', 'status.error': 'Server error', 'status.fixed': 'Fixed: showing the new scene',
    'welcome.title': 'What do you want to understand?',
    'welcome.lead': 'LossLab runs the real training-loss code of object detectors on boxes you draw, and shows which cells, anchors or queries become positives, why, and how every number adds up to the loss.',
    'welcome.free': 'Just let me play', 'welcome.continue': 'Continue where I left off',
    'lesson.next': 'Next', 'lesson.prev': 'Back', 'lesson.close': 'Leave the lesson', 'lesson.rule': 'The rule, as the code has it',
    'lesson.step': 'Step', 'lesson.of': 'of', 'lesson.done': 'Done',
    'predict.mode': 'Predict', 'predict.reveal': 'Reveal', 'predict.hint': 'Click the cells you expect to become positive, then press Reveal.',
    'predict.clear': 'Clear my guess', 'predict.hits': 'hits', 'predict.misses': 'missed', 'predict.extras': 'wrong guesses',
  },
  zh: {
    'app.title': 'LossLab',
    'app.subtitle': '检测器如何选择正样本、损失如何累加——由真实的 PyTorch 代码计算',
    'action.export': '导出 JSON', 'action.import': '导入 JSON', 'action.copyLink': '复制链接',
    'action.delete': '删除框', 'action.clear': '清空所有框', 'action.questions': '问题列表',
    'action.background': '背景图片(只留在本机)',
    'controls.title': '方案与参数', 'controls.scheme': '方案',
    'controls.predictions': '预测', 'controls.progress': '训练进度(0 未训练,1 完美)',
    'controls.seed': '随机种子', 'controls.scene': '图像与框', 'controls.width': '宽', 'controls.height': '高',
    'controls.nc': '类别数', 'controls.cls': '新框 / 选中框的类别', 'controls.preset': '预设场景',
    'controls.box': '选中的框', 'controls.noBox': '没有选中框:点击一个框,或在图上拖动画一个框。',
    'controls.default': '默认',
    'controls.levels': '层与锚框', 'controls.apply': '应用', 'controls.reset': '模型默认',
    'controls.levelsHint': '每行一个层,格式为“步长: 宽×高 宽×高 …”(像素),例如“8: 15x5 24x16 16x24”。',
    'hint.editor': '在空白处拖动画框;拖动框可移动,拖动角可缩放。滚轮缩放,Shift+拖动平移。方向键把选中框移动 1 像素(Shift:一个网格);Delete 删除。点击网格可把它固定在检查器中。',
    'compare.title': '对比', 'compare.on': '与第二种设置并排对比', 'compare.same': '同一方案',
    'compare.settings': '这一侧的设置',
    'box.title': '选中的框', 'box.hint': '点击一个框,查看代码为它做出的决定:它的正样本、背后的数值,以及它运行过的每一项测试。',
    'box.cls': '类别', 'box.where': '位置', 'box.more': '按此顺序的前 {shown} 行,共 {total} 行', 'box.noTests': '代码没有为这个框报告任何测试。',
    'box.heat': '框',
    'view.level': '层', 'view.heat': '热力图层', 'view.noHeat': '无', 'view.fit': '整幅图像',
    'view.focus': '以框为中心', 'view.zoomIn': '放大', 'view.zoomOut': '缩小',
    'view.anchorFree': '无锚框:每个网格一个锚点(网格中心)',
    'summary.positives': '个正样本', 'summary.total': '总损失', 'summary.stale': '显示的是上一个有效场景',
    'insp.title': '网格检查器', 'insp.hint': '把鼠标移到网格上,查看它是否为正样本以及原因;点击可固定在这里。',
    'insp.cell': '网格', 'insp.positive': '正样本,属于框', 'insp.notPositive': '不是正样本',
    'insp.background': '不是正样本:没有框检验这个网格,它是背景(置信度目标为 0)。',
    'insp.target': '目标', 'insp.loss': '损失', 'insp.tests': '代码在这里做的检验', 'insp.maps': '此处的热力图数值',
    'insp.query': '查询', 'insp.matchedTo': '匹配到框', 'insp.noObject': '没有匹配:它的类别目标是“无目标”。',
    'insp.dflTarget': '目标', 'insp.bins': '区间', 'insp.pinned': '已固定(点击其他网格或按 Esc)',
    'counts.title': '每层每个锚框的正样本数', 'counts.total': '合计', 'counts.cells': '网格',
    'notes.title': '代码对这个场景的说明',
    'loss.title': '损失是怎样累加起来的', 'loss.total': '总计', 'loss.formula': '公式',
    'loss.noComposition': '这个方案不拆分它的损失。', 'loss.logAxis': '数值(对数坐标)', 'loss.linearAxis': '数值',
    'loss.log': '对数坐标',
    'focal.title': 'Focal 曲线', 'focal.none': '这个方案没有 focal 项:它的分类损失是普通 BCE。',
    'focal.on': 'Focal 损失已开启', 'focal.off': 'Focal 包装未开启', 'focal.appliesTo': '作用于', 'focal.cells': '本场景的正样本',
    'focal.lossAxis': '单个正样本的损失',
    'table.title': '正样本表', 'table.more': '行未显示',
    'stages.title': '逐步查看代码', 'stages.tensors': '张量', 'stages.code': '上游代码',
    'stages.cells': '这一步涉及的网格', 'stages.forBox': '属于框', 'stages.level': '层',
    'stages.data': '数值', 'stages.summaryOnly': '只显示摘要(完整数据见导出)', 'stages.wait': '代码运行后这里显示各个步骤。',
    'changed.title': '变化',
    'status.loading': '正在加载方案…', 'status.copied': '链接已复制', 'status.imported': '已导入',
    'status.importFailed': '导入失败', 'status.error': '服务器错误', 'status.fixed': '已修正:显示新的场景',
    'welcome.title': '你想弄明白什么?',
    'welcome.lead': 'LossLab 在你画的框上运行目标检测器真实的训练损失代码,显示哪些网格、锚框或查询成为正样本、为什么,以及每个数值如何累加成损失。',
    'welcome.free': '直接自由探索', 'welcome.continue': '从上次离开的地方继续',
    'lesson.next': '下一步', 'lesson.prev': '上一步', 'lesson.close': '退出课程', 'lesson.rule': '代码中的规则',
    'lesson.step': '第', 'lesson.of': '步,共', 'lesson.done': '完成',
    'predict.mode': '先预测', 'predict.reveal': '揭晓', 'predict.hint': '点击你认为会成为正样本的网格,然后按“揭晓”。',
    'predict.clear': '清除我的猜测', 'predict.hits': '猜中', 'predict.misses': '漏掉', 'predict.extras': '猜错',
  },
};

let current = 'en';

export function setLanguage(lang) {
  current = DICT[lang] ? lang : 'en';
  document.documentElement.lang = current === 'zh' ? 'zh-CN' : 'en';
  for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll('[data-i18n-title]')) node.title = t(node.dataset.i18nTitle);
}

export function language() { return current; }

export function t(key) {
  return DICT[current][key] ?? DICT.en[key] ?? key;
}

export const LANGUAGES = Object.keys(DICT);
export const KEYS = { en: Object.keys(DICT.en), zh: Object.keys(DICT.zh) };
