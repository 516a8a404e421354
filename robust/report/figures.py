"""The report's figures, drawn with matplotlib and handed to reportlab as vector drawings.

Figures are saved as SVG (text as paths, so no font has to match) and converted by svglib
into reportlab `Drawing`s: they stay vector in the PDF. Colour maps are 'cividis', which
reads the same in greyscale, and every heatmap cell and bar carries its value as text; lines
differ by marker and dash as well as colour. (svglib drops SVG pattern fills, so no hatches.)
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Final

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from reportlab.graphics.shapes import Drawing
from svglib.svglib import svg2rlg

from robust.report.analysis import AttackSummary, EpsSweep, TransferMatrix

COLOUR_MAP: Final[str] = "cividis"
FIGURE_WIDTH_IN: Final[float] = 6.8  # about the PDF frame, so figures are drawn near 1:1
SIDE_BY_SIDE_COLUMNS: Final[int] = 2
MAX_TICK_LABEL: Final[int] = 14
_RC: Final[dict[str, object]] = {
    "svg.fonttype": "path",
    "svg.hashsalt": "vlp-robust",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
}
_MARKERS: Final[str] = "osD^vP*Xh<>"
_DASHES: Final[tuple[str, ...]] = ("-", "--", "-.", ":")


def short_names(names: Sequence[str]) -> dict[str, str]:
    """Tick labels for victims: the names themselves, or V1.. when any is too long to fit."""
    if all(len(name) <= MAX_TICK_LABEL for name in names):
        return {name: name for name in names}
    return {name: f"V{index}" for index, name in enumerate(names, start=1)}


def to_drawing(figure: Figure, width: float, max_height: float) -> Drawing:
    """The figure as a reportlab vector drawing, `width` points wide unless that makes it
    taller than `max_height`."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(_RC):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    buffer.seek(0)
    drawing = svg2rlg(buffer)
    drawing.initialFontName = "DejaVuSans"  # reportlab would otherwise add Helvetica, unembedded
    scale = min(width / drawing.width, max_height / drawing.height)
    drawing.scale(scale, scale)
    drawing.width, drawing.height = drawing.width * scale, drawing.height * scale
    return drawing


def _percent_text(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def transfer_heatmaps(matrix: TransferMatrix, names: dict[str, str]) -> Figure:
    """TR and IR R@1 ASR (%) side by side; white-box cells outlined and starred."""
    with matplotlib.rc_context(_RC):
        rows, columns = matrix.tr_asr.shape
        if columns <= SIDE_BY_SIDE_COLUMNS:
            figure = Figure(figsize=(FIGURE_WIDTH_IN, rows * 0.62 + 1.5), layout="constrained")
            axes = figure.subplots(1, 2)
        else:  # one panel per row keeps cells wide enough for their 8 pt values
            cell = min(0.55, 3.3 / rows, 5.0 / columns)
            height = 2 * (rows * cell + 1.3)
            figure = Figure(figsize=(FIGURE_WIDTH_IN, height), layout="constrained")
            axes = figure.subplots(2, 1)
        for ax, grid, title in (
            (axes[0], matrix.tr_asr, "image→text (TR)"),
            (axes[1], matrix.ir_asr, "text→image (IR)"),
        ):
            mesh = ax.pcolormesh(
                100 * np.ma.masked_invalid(grid),
                cmap=COLOUR_MAP,
                vmin=0,
                vmax=100,
                edgecolors="white",
                linewidth=1.0,
            )
            ax.set_xlim(0, columns)
            ax.set_ylim(rows, 0)
            ax.set_aspect("equal")
            ax.set_xticks(np.arange(columns) + 0.5, [names[t] for t in matrix.targets])
            ax.set_yticks(np.arange(rows) + 0.5, [names[s] for s in matrix.sources])
            if columns > 2 and max(len(names[t]) for t in matrix.targets) > 4:
                ax.tick_params(axis="x", labelrotation=30)
                for label in ax.get_xticklabels():
                    label.set_horizontalalignment("right")
            ax.set_xlabel("target (evaluated)")
            ax.set_ylabel("source (attacked)")
            ax.set_title(title)
            for s in range(rows):
                for t in range(columns):
                    _annotate_cell(ax, grid[s, t], s, t, bool(matrix.white_box[s, t]))
        colour_bar = figure.colorbar(mesh, ax=axes, shrink=0.8, label="R@1 ASR %")
        colour_bar.solids.set_rasterized(False)  # matplotlib rasterises long colour bars
    return figure


def _annotate_cell(ax: Axes, value: float, row: int, column: int, white_box: bool) -> None:
    text = _percent_text(value) + ("*" if white_box else "")
    colour = "black" if math.isnan(value) or _lightness(value) > 0.45 else "white"
    ax.text(column + 0.5, row + 0.5, text, ha="center", va="center", color=colour, fontsize=8)
    if white_box:
        outline = Rectangle(
            (column + 0.04, row + 0.04),
            0.92,
            0.92,
            fill=False,
            linewidth=2.2,
            edgecolor=colour,
            linestyle="--",
        )
        ax.add_patch(outline)


def _lightness(value: float) -> float:
    """Perceived lightness of the colour map at `value`, to pick black or white text on it."""
    red, green, blue, _ = matplotlib.colormaps[COLOUR_MAP](float(value))
    return 0.299 * red + 0.587 * green + 0.114 * blue


def attack_comparison(summaries: Sequence[AttackSummary]) -> Figure:
    """Grouped bars per attack: transfer and white-box R@1 ASR, TR and IR, with the spread
    over seeds as error bars where there is one."""
    columns = {
        "transfer TR": "transfer_tr",
        "transfer IR": "transfer_ir",
        "white-box TR": "white_box_tr",
        "white-box IR": "white_box_ir",
    }
    series = [
        (
            label,
            [getattr(s, field) for s in summaries],
            [getattr(s, f"{field}_spread") for s in summaries],
        )
        for label, field in columns.items()
    ]
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(FIGURE_WIDTH_IN, 3.4), layout="constrained")
        ax = figure.subplots()
        positions = np.arange(len(summaries))
        width = 0.8 / len(series)
        colours = matplotlib.colormaps[COLOUR_MAP](np.linspace(0.0, 1.0, len(series)))
        for index, (label, values, spreads) in enumerate(series):
            heights = [0.0 if math.isnan(v) else 100 * v for v in values]
            errors = [0.0 if math.isnan(v) else 100 * v for v in spreads]
            bars = ax.bar(
                positions + (index - (len(series) - 1) / 2) * width,
                heights,
                width,
                label=label,
                color=colours[index],
                edgecolor="black",
                linewidth=0.5,
                yerr=errors if any(errors) else None,
                error_kw={"elinewidth": 0.6, "capsize": 1.5},
            )
            ax.bar_label(
                bars,
                labels=["n/a" if math.isnan(v) else f"{100 * v:.0f}" for v in values],
                fontsize=6,
                padding=1,
            )
        ax.set_xticks(positions, [s.attack for s in summaries])
        padding = max(0.0, (3 - len(summaries)) / 2)  # a lone attack keeps slim, centred bars
        ax.set_xlim(-0.6 - padding, len(summaries) - 0.4 + padding)
        ax.tick_params(axis="x", labelrotation=20 if len(summaries) > 6 else 0)
        ax.set_ylim(0, 105)
        ax.set_ylabel("mean R@1 ASR %")
        ax.set_xlabel("attack")
        ax.grid(axis="y", linewidth=0.4, alpha=0.6)
        ax.set_axisbelow(True)
        ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return figure


def eps_sweep(sweep: EpsSweep, names: dict[str, str]) -> Figure:
    """R@1 ASR against eps (x255) for every (source, target) pair, TR and IR panels."""
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(FIGURE_WIDTH_IN, 3.2), layout="constrained")
        axes = figure.subplots(1, 2, sharey=True)
        colours = matplotlib.colormaps[COLOUR_MAP](np.linspace(0.0, 0.75, len(sweep.curves)))
        for ax, direction in ((axes[0], "TR"), (axes[1], "IR")):
            for index, curve in enumerate(sweep.curves):
                values = curve.tr_asr if direction == "TR" else curve.ir_asr
                ax.plot(
                    [255 * eps for eps in curve.eps],
                    [100 * v for v in values],
                    marker=_MARKERS[index % len(_MARKERS)],
                    linestyle=_DASHES[index % len(_DASHES)],
                    color=colours[index],
                    label=f"{names[curve.source]} → {names[curve.target]}",
                )
            ax.set_xticks(sorted({255 * eps for curve in sweep.curves for eps in curve.eps}))
            ax.set_xlabel("eps (×1/255)")
            ax.set_title(f"{direction} R@1 ASR")
            ax.grid(linewidth=0.4, alpha=0.6)
            ax.set_ylim(0, 105)
        axes[0].set_ylabel("R@1 ASR %")
        figure.legend(
            *axes[0].get_legend_handles_labels(),
            loc="outside lower center",
            ncols=min(4, len(sweep.curves)),
            frameon=False,
            title="source → target",
        )
    return figure


def grouped_bars(
    panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[float]]]]],
    series: Sequence[str],
    value_label: str,
    columns: int,
    *,
    shared_rows: bool = True,
) -> Figure:
    """Horizontal grouped bars, one panel per title: each row a label with one value
    (a fraction, drawn in points) per series, dark to light, values printed. With
    `shared_rows` panels share the union of row labels (a row a panel lacks stays empty);
    without, each panel lists its own rows. A single series needs no legend."""
    union = list(dict.fromkeys(name for _, rows in panels for name, _ in rows))
    most = len(union) if shared_rows else max(len(rows) for _, rows in panels)
    columns = min(columns, len(panels))
    grid_rows = math.ceil(len(panels) / columns)
    thickness = 0.8 / len(series)
    with matplotlib.rc_context(_RC):
        row_height = 0.12 * len(series) + 0.1
        height = grid_rows * (row_height * most + 0.9) + (0.4 if len(series) > 1 else 0.0)
        figure = Figure(figsize=(FIGURE_WIDTH_IN, height), layout="constrained")
        axes = figure.subplots(grid_rows, columns, sharey=shared_rows, squeeze=False)
        colours = matplotlib.colormaps[COLOUR_MAP](np.linspace(0.1, 0.9, len(series)))
        for ax, (title, rows) in zip(axes.flat, panels, strict=False):
            values = dict(rows)
            labels = union if shared_rows else [name for name, _ in rows]
            positions = np.arange(len(labels))
            for index, name in enumerate(series):
                found = [values[label][index] if label in values else math.nan for label in labels]
                bars = ax.barh(
                    positions + (index - (len(series) - 1) / 2) * thickness,
                    [0.0 if math.isnan(v) else 100 * v for v in found],
                    thickness,
                    color=colours[index],
                    edgecolor="black",
                    linewidth=0.5,
                    label=name,
                )
                ax.bar_label(
                    bars,
                    labels=["" if math.isnan(v) else f"{100 * v:.0f}" for v in found],
                    fontsize=6,
                    padding=1,
                )
            ax.axvline(0, color="black", linewidth=0.6)
            ax.set_yticks(positions, labels)
            ax.set_ylim(most - 0.5, -0.5)
            ax.set_title(title)
            ax.set_xlabel(value_label)
            ax.grid(axis="x", linewidth=0.4, alpha=0.6)
            ax.set_axisbelow(True)
            ax.margins(x=0.18)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        if len(series) > 1:
            figure.legend(
                *axes.flat[0].get_legend_handles_labels(),
                loc="outside upper center",
                ncols=len(series),
                frameon=False,
            )
    return figure


def drops_against_control(
    panels: Sequence[tuple[str, Sequence[tuple[str, float, float]]]],
) -> Figure:
    """Per target, each measure's drop in points: the patch dark, its control light."""
    pairs = [(title, [(name, (a, b)) for name, a, b in rows]) for title, rows in panels]
    return grouped_bars(pairs, ("patch", "random-patch control"), "drop (points)", columns=3)


def defense_asr(
    panels: Sequence[tuple[str, Sequence[tuple[str, tuple[float, float, float]]]]],
) -> Figure:
    """Per defense and direction, R@1 ASR undefended, non-adaptive and adaptive."""
    return grouped_bars(panels, ("undefended", "non-adaptive", "adaptive"), "R@1 ASR %", columns=2)
