"""One self-contained offline HTML report of a scene: Plotly figures of every stage.

The page embeds plotly.js once (from the installed ``plotly`` package, no CDN) and then one figure
per item: a bar of the losses, a table of the positives, heat maps of every per-cell map (one
panel per anchor), and for every trace stage a table of its values and a figure per tensor (a heat
map for 2-D and larger tensors, bars for vectors; large tensors show their summary only).
"""
from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

import torch

from losscore.export import Run, library_versions
from losscore.registry import get_scheme
from losscore.wire import plain

MAX_FIGURE_ELEMENTS = 40_000  # a stage tensor larger than this is summarised, not drawn


def _div(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


def _table(header: list[str], columns: list[list[Any]], title: str) -> go.Figure:
    fig = go.Figure(go.Table(header={"values": header}, cells={"values": columns}))
    fig.update_layout(title=title, height=min(120 + 26 * max((len(c) for c in columns), default=1), 700),
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def _fmt(value: Any) -> str:
    value = plain(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _losses_figure(run: Run) -> go.Figure:
    names = list(run.result.losses)
    values = [float(run.result.losses[n]) for n in names]
    fig = go.Figure(go.Bar(x=names, y=values, text=[f"{v:.4g}" for v in values], textposition="auto"))
    fig.update_layout(title="Losses", height=360, margin={"t": 40, "b": 40})
    return fig


def _positives_figure(run: Run) -> go.Figure:
    result = run.result
    rule_names = get_scheme(run.scene.scheme).rule_names
    header, columns = [], []
    for name, tensor in result.positives.items():
        values = plain(tensor)
        if name == "rule":
            values = [rule_names[v] if isinstance(v, int) and 0 <= v < len(rule_names) else v for v in values]
        header.append(name)
        columns.append([_fmt(v) for v in values])
    count = len(columns[0]) if columns else 0
    return _table(header, columns, f"Positives ({count})")


def _map_figure(name: str, doc: str, level_name: str, tensor: torch.Tensor) -> go.Figure:
    grid = tensor.detach().cpu().float()
    if grid.dim() == 2:
        grid = grid.unsqueeze(0)
    anchors = grid.shape[0]  # (A, H, W)
    fig = make_subplots(rows=1, cols=anchors, subplot_titles=[f"anchor {a}" for a in range(anchors)])
    for a in range(anchors):
        z = grid[a].nan_to_num(nan=float("nan"), posinf=float("nan"), neginf=float("nan")).tolist()
        fig.add_trace(go.Heatmap(z=z, coloraxis="coloraxis"), row=1, col=a + 1)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{a + 1 if a else ''}", row=1, col=a + 1)
    fig.update_layout(title=f"{name} · {level_name} — {doc}", height=360, coloraxis={"colorscale": "Viridis"},
                      margin={"t": 60, "b": 20})
    return fig


def _tensor_figure(stage_name: str, key: str, dims: str, tensor: torch.Tensor) -> go.Figure | None:
    t = tensor.detach().cpu()
    if t.numel() == 0 or t.numel() > MAX_FIGURE_ELEMENTS or t.dim() == 0:
        return None
    values = t.to(torch.float64).nan_to_num(nan=float("nan"), posinf=float("nan"), neginf=float("nan"))
    title = f"{stage_name} · {key} [{dims or 'no dims'}] {list(t.shape)} {str(t.dtype).replace('torch.', '')}"
    if t.dim() == 1:
        fig = go.Figure(go.Bar(y=values.tolist()))
    else:
        fig = go.Figure(go.Heatmap(z=values.reshape(-1, values.shape[-1]).tolist(), colorscale="Viridis"))
        fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=300, margin={"t": 40, "b": 20})
    return fig


def render_report(run: Run) -> str:
    """The report of one computed scene as an HTML string (plotly.js inline, no external script)."""
    result, scene = run.result, run.scene
    spec = get_scheme(scene.scheme)
    versions = library_versions()
    parts: list[str] = []
    parts.append(f"<h1>LossLab report — {html.escape(spec.title)}</h1>")
    parts.append(
        "<p>" + html.escape(
            f"{scene.width}x{scene.height} px, {len(scene.boxes)} boxes, nc={scene.nc}, device {result.device}; "
            f"losslab {versions['losslab']}, torch {versions['torch']}, python {versions['python']}; "
            f"upstream {spec.upstream}") + "</p>")
    parts.append("<h2>Parameters</h2>" + _div(_table(
        ["parameter", "value"], [list(scene.params), [_fmt(v) for v in scene.params.values()]], "Parameters")))
    if result.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in result.notes) + "</ul>")
    parts.append("<h2>Losses</h2>" + _div(_losses_figure(run)))
    parts.append("<h2>Positives</h2>" + _div(_positives_figure(run)))
    if spec.columns:
        parts.append("<dl>" + "".join(f"<dt>{html.escape(c.name)}</dt><dd>{html.escape(c.doc)}</dd>"
                                      for c in spec.columns) + "</dl>")
    map_docs = {m.name: m.doc for m in spec.maps}
    parts.append("<h2>Maps</h2>")
    for name, levels in result.maps.items():
        for level, tensor in zip(result.levels, levels):
            parts.append(_div(_map_figure(name, map_docs.get(name, ""), level.name, tensor)))
    parts.append("<h2>Stages</h2>")
    for index, stage in enumerate(run.trace):
        parts.append(f"<section><h3>{index + 1}. {html.escape(stage.title)} <code>{html.escape(stage.name)}</code></h3>")
        parts.append(f"<p>{html.escape(stage.explain)}</p><p><code>{html.escape(stage.code)}</code></p>")
        summary_rows = [[], [], [], [], []]
        for key, rec in stage.tensors.items():
            t = rec.value.detach().cpu()
            stats = t.to(torch.float64) if t.numel() else None
            for column, value in zip(summary_rows, [key, rec.dims, str(list(t.shape)),
                                                   _fmt(float(stats.min())) if stats is not None else "",
                                                   _fmt(float(stats.max())) if stats is not None else ""]):
                column.append(value)
        if stage.values:
            parts.append(_div(_table(["value", ""], [list(stage.values), [_fmt(v) for v in stage.values.values()]],
                                     "Values")))
        if stage.tensors:
            parts.append(_div(_table(["tensor", "dims", "shape", "min", "max"], summary_rows, "Tensors")))
        for key, rec in stage.tensors.items():
            fig = _tensor_figure(stage.name, key, rec.dims, rec.value)
            if fig is not None:
                parts.append(_div(fig))
        parts.append("</section>")
    body = "\n".join(parts)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>LossLab report — {html.escape(spec.title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "code{background:#f3f3f3;padding:0 .2em}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>\n<body>\n{body}\n</body></html>\n"
    )
