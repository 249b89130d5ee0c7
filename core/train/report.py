"""The training report: one self-contained HTML file (curves embedded as base64 PNGs).

Figures are drawn with matplotlib's object API on an Agg canvas, never through pyplot, so
writing a report inside QGIS does not touch any global matplotlib backend or state.
"""

from __future__ import annotations

import base64
import html
import io
import os
from typing import List, Sequence

import numpy as np

from ..errors import MapSegError
from .schedule import STOP_REASONS

STYLE = (
    "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:"
    "collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
    "th{background:#eee}td:first-child{text-align:left}.sw{display:inline-block;width:1em;"
    "height:1em;border:1px solid #555;vertical-align:middle;margin-right:4px}</style>"
)


def _head(title: str, tr: dict, kept: str) -> list:
    """Page head, title and the early-stop notice shared by both training reports."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MapSeg training report</title>",
        STYLE,
        f"</head><body><h1>{title}</h1>",
    ]
    if tr.get("stopped_early"):
        why = STOP_REASONS.get(tr.get("stop_reason"), "time limit")
        parts.append(
            f"<p><b>Training was stopped early ({why}).</b> The model holds {kept} found "
            "before the stop.</p>"
        )
    return parts


def _png(series: Sequence[tuple], ylabel: str, title: str, xlabel: str = "epoch") -> str:
    """A line chart of ``(label, xs, ys)`` series as a base64 PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, xs, ys in series:
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return _encode(fig)


def _encode(fig) -> str:
    """A matplotlib figure as a base64 PNG data URI."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _rows(rows: List[List[str]], header: List[str]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _finite(values) -> list:
    return [v if v == v else None for v in values]  # NaN -> gap in the curve


def _kept(tr: dict) -> str:
    # Files trained before 1 December 2026 kept the best validation mIoU and do not say which epoch.
    return f"{tr['kept_epoch']} (lowest validation loss)" if tr.get("kept_epoch") else "-"


def _summary(meta: dict) -> str:
    esc = html.escape
    metrics = meta.get("metrics") or {}
    tr = meta.get("training") or {}
    hist = meta.get("history") or []
    rows = [
        ["Architecture", f"{esc(meta['architecture'])} {esc(str(meta.get('arch_kwargs', {})))}"],
        ["Inputs", esc(", ".join(tr.get("inputs", [])))],
        ["Bands", str(meta["in_bands"])],
        ["Tile size", f"{meta['tile_size']} px"],
        ["Device", esc(str(tr.get("device"))) + (" (AMP)" if tr.get("mixed_precision") else "")],
        ["Training time", f"{float(tr.get('seconds', 0)):.1f} s"],
        ["Epochs run", f"{tr.get('epochs_run', len(hist))} of {tr.get('epochs', '?')}"],
        ["Epoch kept", _kept(tr)],
        ["Sampling", esc(f"{tr.get('sampling', 'grid tiles')}, "
                         f"{tr.get('steps_per_epoch', '?')} steps per epoch")],
        ["Defaults chosen", esc(" ".join(tr.get("defaults") or []) or "-")],
        ["Encoder weights", esc(tr.get("encoder_weights") or "random initialisation")],
        ["Training / validation tiles", f"{tr.get('train_tiles')} / {tr.get('val_tiles')}"],
        ["Loss", esc(str(tr.get("loss", "")))],
        ["Fine-tuned from", esc(tr.get("init_model") or "-")],
        ["Metrics measured on", esc(metrics.get("evaluated_on", "validation tiles"))],
        ["mIoU", f"{metrics.get('miou', 0):.4f}"],
        ["Overall accuracy", f"{metrics.get('accuracy', 0):.4f}"],
        ["Kappa", f"{metrics.get('kappa', 0):.4f}"],
    ]  # fmt: skip
    return "<h2>Summary</h2>" + _rows(rows, ["", ""])


def _curves(hist: List[dict], names: List[str]) -> List[str]:
    epochs = [h["epoch"] for h in hist]
    loss = _png(
        [
            ("training", epochs, _finite([h["train_loss"] for h in hist])),
            ("validation", epochs, _finite([h["val_loss"] for h in hist])),
        ],
        "loss",
        "Loss",
    )
    miou = _png(
        [
            ("validation mIoU", epochs, _finite([h["val_miou"] for h in hist])),
            ("validation accuracy", epochs, _finite([h["val_accuracy"] for h in hist])),
        ],
        "score",
        "Validation mIoU and accuracy",
    )
    parts = [
        f"<h2>Curves</h2><img alt='loss curve' src='{loss}'>",
        f"<img alt='mIoU curve' src='{miou}'>",
    ]
    if names and all(h.get("val_iou") for h in hist):  # a collapse to one class shows here
        series = [
            (name, epochs, _finite([h["val_iou"][i] for h in hist])) for i, name in enumerate(names)
        ]
        iou = _png(series, "IoU", "Validation IoU per class")
        parts.append(f"<img alt='per-class IoU curve' src='{iou}'>")
    return parts


def _per_class(classes: List[dict], per: List[dict]) -> str:
    rows = []
    for c, p in zip(classes, per):
        r, g, b = c.get("color", [128, 128, 128])[:3]
        swatch = f"<span class='sw' style='background:#{r:02x}{g:02x}{b:02x}'></span>"
        rows.append(
            [swatch + html.escape(str(c["name"])), str(c["value"])]
            + [f"{p[k]:.4f}" for k in ("iou", "precision", "recall", "f1")]
            + [str(p["support"])]
        )
    header = ["Class", "Value", "IoU", "Precision", "Recall", "F1", "Pixels"]
    return "<h2>Per-class scores</h2>" + _rows(rows, header)


def _confusion(classes: List[dict], cm: List[List[int]]) -> str:
    names = [html.escape(str(c["name"])) for c in classes]
    rows = [[names[i]] + [str(v) for v in row] for i, row in enumerate(cm)]
    return (
        "<h2>Confusion matrix</h2><p>Rows: reference class; columns: predicted class "
        "(pixels).</p>" + _rows(rows, ["reference \\ predicted"] + names)
    )


def _history(hist: List[dict]) -> str:
    rows = [
        [str(h["epoch"])]
        + [f"{h[k]:.4f}" for k in ("train_loss", "val_loss", "val_miou", "val_accuracy")]
        + [f"{h['lr']:.2e}", f"{h['seconds']:.1f}"]
        for h in hist
    ]
    header = ["Epoch", "Train loss", "Val loss", "Val mIoU", "Val accuracy", "LR", "Seconds"]
    return "<h2>History</h2>" + _rows(rows, header)


def report_html(meta: dict) -> str:
    """The report page for a trained model's metadata."""
    if meta.get("mode") == "unsupervised":
        return _label_free_html(meta)
    hist = meta.get("history") or []
    metrics = meta.get("metrics") or {}
    parts = _head("MapSeg training report", meta.get("training") or {}, "the best weights")
    parts.append(_summary(meta))
    if hist:
        parts += _curves(hist, [str(c["name"]) for c in meta["classes"]])
    if metrics.get("per_class"):
        parts.append(_per_class(meta["classes"], metrics["per_class"]))
    if metrics.get("confusion"):
        parts.append(_confusion(meta["classes"], metrics["confusion"]))
    if hist:
        parts.append(_history(hist))
    parts.append(_footer(meta))
    return "\n".join(parts)


def _footer(meta: dict) -> str:
    return f"<p>Created {html.escape(str(meta.get('created', '')))} by MapSeg.</p></body></html>"


def preview_png(tile: np.ndarray, segments: np.ndarray) -> str:
    """A training tile (first 3 bands) beside its segment map, as a base64 PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rgb = tile[:3] if tile.shape[0] >= 3 else np.repeat(tile[:1], 3, axis=0)
    rgb = np.clip(np.moveaxis(rgb, 0, -1), 0, 1)
    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for i, (img, title) in enumerate(((rgb, "training tile"), (segments, "segments"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(img, cmap="tab10" if i else None, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    return _encode(fig)


def _label_free_html(meta: dict) -> str:
    """Report of a label-free model: what it was trained on, its loss curve, a preview."""
    esc = html.escape
    hist = meta.get("history") or []
    tr = meta.get("training") or {}
    parts = _head(
        "MapSeg training report: label-free model", tr, "the weights with the lowest held-out loss"
    )
    parts.append(
        "<p>No labels were given: the network learned per-pixel features (an embedding of "
        f"{meta.get('embedding_dim')} values) by predicting {tr.get('k0')} clusters of a filter "
        "bank from photometrically altered views. Segment Raster groups them into N segments "
        "with k-means; segment ids carry no class names.</p>"
    )
    summary = [
        ["Architecture", f"{esc(meta['architecture'])} {esc(str(meta.get('arch_kwargs', {})))}"],
        ["Inputs", esc(", ".join(tr.get("inputs", [])))],
        ["Bands", str(meta["in_bands"])],
        ["Normalisation", esc(str(meta.get("normalization", "")))],
        ["Tiles / tile size", f"{tr.get('tiles')} / {meta['tile_size']} px"],
        ["Device", esc(str(tr.get("device")))],
        ["Training time", f"{float(tr.get('seconds', 0)):.1f} s"],
        ["Steps run", f"{tr.get('steps_run')} of {tr.get('steps')}"],
        ["Lowest held-out loss", f"{(meta.get('metrics') or {}).get('held_out_loss', 0):.4f}"],
    ]  # fmt: skip
    parts.append("<h2>Summary</h2>" + _rows(summary, ["", ""]))
    if hist:
        steps = [h["step"] for h in hist]
        loss = _png(
            [
                ("training", steps, _finite([h["train_loss"] for h in hist])),
                ("held-out tiles", steps, _finite([h["held_out_loss"] for h in hist])),
            ],
            "loss",
            "Loss",
            "step",
        )
        parts.append(f"<h2>Loss</h2><img alt='loss curve' src='{loss}'>")
    if tr.get("preview", "").startswith("data:image/png;base64,"):
        parts.append(
            f"<h2>Preview</h2><p>A training tile and its {tr.get('preview_segments')}-segment "
            f"map.</p><img alt='segment preview' src='{tr['preview']}'>"
        )
    parts.append(_footer(meta))
    return "\n".join(parts)


def write_training_report(path: str, meta: dict) -> str:
    """Write the report atomically at ``path``."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.partial-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(report_html(meta))
        os.replace(tmp, path)
    except OSError as err:
        raise MapSegError(f"Cannot write the training report '{path}': {err}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
