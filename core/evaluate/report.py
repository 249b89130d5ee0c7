"""A self-contained HTML report of an evaluation: scores, per-class table, confusion matrix.

The confusion matrix is drawn with matplotlib (Agg, no display needed) and embedded as a base64
PNG, so the report is one file that opens in any browser and in QGIS's Results Viewer.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile

import numpy as np

from ..errors import MapSegError
from .evaluation import Evaluation, table_rows


def confusion_png(matrix: np.ndarray, labels: list) -> bytes:
    """Row-normalised confusion matrix (colour = share of each reference class), counts in cells."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(labels)
    size = min(4.0 + 0.45 * k, 14.0)
    fig = Figure(figsize=(size + 1.5, size), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of reference pixels")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("reference class")
    if k <= 20:  # beyond that the numbers no longer fit in the cells
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def report_html(result: Evaluation, prediction: str, reference: str) -> str:
    s = result.scores
    labels = [f"{v} {c['name']}" for v, c in zip(result.values, s["per_class"])]
    png = base64.b64encode(confusion_png(np.asarray(s["confusion"]), labels)).decode("ascii")
    summary = [
        ("Mean IoU", s["miou"]),
        ("Overall accuracy", s["accuracy"]),
        ("Cohen's kappa", s["kappa"]),
        ("Mean F1", s["mean_f1"]),
        ("Evaluated pixels", s["pixels"]),
    ]
    obj = result.objects
    if obj is not None:
        counts = f"{obj['tp']} / {obj['fp']} / {obj['fn']}"
        summary += [
            (f"Object F1 (class {obj['class']}, IoU ≥ {obj['iou_threshold']:g})", obj["f1"]),
            ("Objects: true / false positives, false negatives", counts),
        ]
    rows = table_rows(result)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0]) if rows else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>MapSeg evaluation</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}th{{background:#eee}}</style>
</head><body>
<h1>Segmentation evaluation</h1>
<p>Prediction: <code>{html.escape(prediction)}</code><br>
Reference: <code>{html.escape(reference)}</code></p>
<table>{"".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in summary)}
</table>
<ul>{notes}</ul>
<h2>Per class</h2>
<table><tr>{head}</tr>{body}</table>
<h2>Confusion matrix</h2>
<p>Rows: reference class; columns: predicted class; cells: pixel counts.</p>
<img alt="confusion matrix" src="data:image/png;base64,{png}">
</body></html>
"""


def write_evaluation_report(path: str, result: Evaluation, prediction: str, reference: str) -> str:
    """Write the report beside ``path`` and rename it into place (never a half-written file)."""
    text = report_html(result, prediction, reference)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".report.", suffix=".partial.html", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as err:
        raise MapSegError(f"Cannot write the report '{path}': {err.strerror}.") from None
    return path
