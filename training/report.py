"""The evaluation report of one model version: ``report.json`` plus a few small PNG plots.

Plots are drawn on bare ``matplotlib.figure.Figure`` objects with the Agg canvas: no pyplot, so
no global figure registry, no GUI backend lookup and nothing to close, whatever ``MPLBACKEND``
says (training runs headless on Ray workers). The plots are built from the result's subsampled
curves and decile tables, never from the raw rows, so drawing costs the same for any test size.

``report.json`` layout::

    {"schema_version": 1, "model_name": str, "version": int | null, "created_at": iso str,
     "metrics": {flat scalars, as EvaluationResult.metrics()},
     "evaluation": EvaluationResult.to_dict() (curves, calibration bins, lift deciles, notes),
     "segments": {"<segment>=<value>": {"n", "positives", "observed_rate", "mean_score",
                                         "roc_auc", "pr_auc", "brier"}},
     "importance": {"<measure>": {"<feature>": float}},
     "plots": [file names]}

NaN and infinities are written as null (the file is strict JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.evaluate import EvaluationResult, SegmentMetrics, json_safe

REPORT_NAME = "report.json"
SCHEMA_VERSION = 1
# Small figures at a low DPI: each PNG is a few tens of KB and renders in tens of ms.
FIGSIZE = (4.8, 3.6)
DPI = 80
TOP_FEATURES = 20


def _figure(
    size: tuple[float, float] = FIGSIZE, left: float = 0.14, right: float = 0.96
) -> tuple[Figure, Axes]:
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    # Fixed margins, not constrained/tight layout: the layout solver measured every tick label
    # and doubled the rendering time, and these plots have known, short labels.
    figure.subplots_adjust(left=left, right=right, bottom=0.13, top=0.91)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _title(ax: Axes, text: str, model_name: str, version: int | None) -> None:
    # No version yet when the report is written before registering (files stored with it).
    suffix = f" v{version}" if version is not None else ""
    ax.set_title(f"{text}: {model_name}{suffix}", fontsize=9)


def plot_roc(result: EvaluationResult, path: Path, model_name: str, version: int | None) -> Path:
    """ROC curve with the chance diagonal."""
    figure, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    if result.roc_curve is not None:
        ax.plot(result.roc_curve.x, result.roc_curve.y, linewidth=1.5)
        ax.text(0.55, 0.1, f"AUC {result.roc_auc:.3f}", fontsize=9)
    else:
        ax.text(0.5, 0.5, "undefined: one class", ha="center", fontsize=9)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
    _title(ax, "ROC", model_name, version)
    return _save(figure, path)


def plot_pr(result: EvaluationResult, path: Path, model_name: str, version: int | None) -> Path:
    """Precision-recall curve with the base rate (a random ranking's precision)."""
    figure, ax = _figure()
    ax.axhline(result.base_rate, color="grey", linestyle=":", linewidth=1)
    if result.pr_curve is not None:
        ax.plot(result.pr_curve.x, result.pr_curve.y, linewidth=1.5, drawstyle="steps-post")
        ax.text(0.55, 0.9, f"AP {result.pr_auc:.3f}", fontsize=9)
    else:
        ax.text(0.5, 0.5, "undefined: one class", ha="center", fontsize=9)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    _title(ax, "Precision-recall", model_name, version)
    return _save(figure, path)


def plot_calibration(
    result: EvaluationResult, path: Path, model_name: str, version: int | None
) -> Path:
    """Reliability diagram: observed churn rate against mean score per equal-frequency bin."""
    figure, ax = _figure()
    bins = result.calibration
    top = max([1e-9, *(b.mean_score for b in bins), *(b.observed_rate for b in bins)]) * 1.05
    top = min(1.0, top)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
    ax.plot([b.mean_score for b in bins], [b.observed_rate for b in bins], marker="o", markersize=3)
    ax.text(0.05 * top, 0.9 * top, f"ECE {result.ece:.4f}", fontsize=9)
    ax.set(xlabel="mean score (equal-frequency bins)", ylabel="observed churn rate")
    ax.set(xlim=(0, top), ylim=(0, top))
    _title(ax, "Calibration", model_name, version)
    return _save(figure, path)


def plot_lift(result: EvaluationResult, path: Path, model_name: str, version: int | None) -> Path:
    """Lift per decile (bars) and cumulative capture (line, right axis)."""
    figure, ax = _figure(right=0.86)
    deciles = [b.decile for b in result.lift]
    ax.bar(deciles, [b.lift or 0.0 for b in result.lift], color="tab:blue", alpha=0.7)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="decile (1 = highest scores)", ylabel="lift", xticks=deciles)
    capture = ax.twinx()
    capture.plot(
        deciles, [b.cumulative_capture or 0.0 for b in result.lift], color="tab:orange", marker="o"
    )
    capture.set(ylabel="cumulative capture", ylim=(0, 1.02))
    _title(ax, "Lift and capture", model_name, version)
    return _save(figure, path)


def plot_importance(
    importance: Mapping[str, Mapping[str, float]],
    path: Path,
    model_name: str,
    version: int | None,
) -> Path:
    """Top features by mean |SHAP| (by gain without SHAP), as shares of each measure's total."""
    measures = [m for m in ("mean_abs_shap", "gain") if importance.get(m)]
    figure, ax = _figure((4.8, 4.2), left=0.34)
    if not measures:
        ax.text(0.5, 0.5, "no importance given", ha="center")
        return _save(figure, path)
    ranking = importance[measures[0]]
    features = sorted(ranking, key=lambda name: -ranking[name])[:TOP_FEATURES][::-1]
    height = 0.8 / len(measures)
    for i, measure in enumerate(measures):
        values = importance[measure]
        total = sum(values.values()) or 1.0
        positions = [j + (i - (len(measures) - 1) / 2) * height for j in range(len(features))]
        shares = [values.get(name, 0.0) / total for name in features]
        ax.barh(positions, shares, height=height, label=measure)
    ax.set_yticks(range(len(features)), features, fontsize=7)
    ax.set_xlabel("share of total")
    # Headroom on the right keeps the legend off the bars.
    ax.set_xlim(0, ax.get_xlim()[1] * 1.3)
    ax.legend(fontsize=7, loc="lower right")
    _title(ax, "Feature importance", model_name, version)
    return _save(figure, path)


def report_document(
    result: EvaluationResult,
    segments: Mapping[str, SegmentMetrics],
    importance: Mapping[str, Mapping[str, float]],
    model_name: str,
    version: int | None,
    plots: list[str],
) -> dict[str, Any]:
    """The content of ``report.json`` (JSON-safe)."""
    document = {
        "schema_version": SCHEMA_VERSION,
        "model_name": model_name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(),
        "metrics": result.metrics(),
        "evaluation": result.to_dict(),
        "segments": {key: dict(value) for key, value in segments.items()},
        "importance": {key: dict(value) for key, value in importance.items()},
        "plots": plots,
    }
    safe: dict[str, Any] = json_safe(document)
    return safe


def write_report(
    directory: Path,
    result: EvaluationResult,
    segments: Mapping[str, SegmentMetrics],
    importance: Mapping[str, Mapping[str, float]],
    model_name: str,
    version: int | None,
) -> list[Path]:
    """Write ``report.json`` and the PNG plots into ``directory``; the written paths.

    Files are rewritten in place: a directory per model version is the caller's choice.
    """
    directory.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_roc(result, directory / "roc.png", model_name, version),
        plot_pr(result, directory / "pr.png", model_name, version),
        plot_calibration(result, directory / "calibration.png", model_name, version),
        plot_lift(result, directory / "lift.png", model_name, version),
        plot_importance(importance, directory / "importance.png", model_name, version),
    ]
    document = report_document(
        result, segments, importance, model_name, version, [p.name for p in plots]
    )
    path = directory / REPORT_NAME
    # allow_nan=False: a NaN that slipped past json_safe fails here instead of writing bad JSON.
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return [path, *plots]


def read_report(directory: Path) -> dict[str, Any]:
    """``report.json`` of a report directory, parsed."""
    loaded: dict[str, Any] = json.loads((directory / REPORT_NAME).read_text())
    return loaded
