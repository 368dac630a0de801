"""Turn a validated report dict into report.json, .md, .html and .png.

Rendering only formats: every derived number (retention, speed-up, parity, paired tests)
is computed once by the report stage and read from the dict here, so all four views agree.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter
from matplotlib.transforms import Bbox

from distill.export.runtime import PHASES
from distill.report.schema import METRIC_TITLES, task_metrics, validate_report
from distill.report.stats import significant

T = TypeVar("T")
MISSING = "—"
_PER_TYPE_TITLE = "F1 per entity type"
_PER_TYPE_LEGEND = (
    "F1 of exact spans (start, end and type) per entity type; n = gold entities of the type in the "
    "test split. Precision and recall per type are in report.json (per_type)."
)
_TERMINAL_COLUMNS = ("model", "retention", "bs1 p50/p95 ms", "speed-up", "size MB")  # after the first two metrics
_MARKERS = {"teacher": "*", "transformer": "o", "bow": "s", "cnn": "^", "bigru": "D"}
_LEGEND = (
    "Retention = model / teacher in the first metric. Speed-up = teacher bs1 p50 / model bs1 p50. "
    "bs1 p50 by round = the lowest and highest median of the timing rounds, in which every model "
    "took its turn on the same texts: the spread the machine's noise leaves. "
    "bs1 tokenise / run / post = the median of each phase of one-text predict calls (splitting and encoding the "
    "text, onnxruntime, logits to the answer), timed in rounds like the p50 but in a pass of their own; "
    "medians of parts need not sum to the p50. "
    "bs1 p50 served = at the intra-op thread count the model serves with (the one its export measured "
    "fastest, in brackets), the other columns all at the report's thread count; served speed-up = the "
    "fp32 teacher's served p50 / the model's. "
    "MFLOPs/text = matrix-product FLOPs of one forward pass on a text of the mean test length; "
    "FLOP-limit speed-up = teacher FLOPs / model FLOPs, the speed-up if latency followed FLOPs. "
    "Parity = largest absolute logit difference between the ONNX export and the original model."
)


def render_markdown(report: dict) -> str:
    """A Markdown page: headline, one table row per model, paired tests, baseline, hardware."""
    headers, rows = _table(report)
    lines = [f"# distill report: {report['dataset']}", "", _headline(report), ""]
    if "recommended" in report:
        lines += [f"**{_recommended_line(report['recommended'])}**", ""]
    lines += _markdown_table(headers, rows) + ["", _LEGEND, ""]
    per_type = _per_type_table(report)
    if per_type is not None:
        lines += [f"## {_PER_TYPE_TITLE}", ""] + _markdown_table(*per_type) + ["", _PER_TYPE_LEGEND, ""]
    significance = list(_significance_lines(report))
    if significance:
        lines += ["## Paired tests", ""] + [f"- {line}" for line in significance] + [""]
    if "baseline" in report:
        lines += [_baseline_line(report), ""]
    if "notes" in report:
        lines += [f"Notes: {report['notes']}", ""]
    lines.append(_hardware_line(report["hardware"]))
    return "\n".join(lines) + "\n"


def _markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines, pipes inside cells escaped."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def render_terminal(report: dict) -> str:
    """A compact fixed-width table for the console, columns padded to their widest cell."""
    headers, rows = _table(report)
    metrics = [_title(name) for name in task_metrics(report)[:2]]
    keep = [headers.index(name) for name in (_TERMINAL_COLUMNS[0], *metrics, *_TERMINAL_COLUMNS[1:])]
    table = [[headers[i] for i in keep]] + [[row[i] for i in keep] for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(len(keep))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    text.insert(1, "  ".join("-" * width for width in widths))
    text += ["", _headline(report)]
    if "recommended" in report:
        text.append(_recommended_line(report["recommended"]))
    return "\n".join(text) + "\n"


def render_chart(report: dict, png_path: str | Path) -> None:
    """Two panels: the primary metric vs batch-1 latency (log x, labelled points) and size per model."""
    models = list(_model_entries(report))
    colors = [f"C{index % 10}" for index in range(len(models))]
    figure = Figure(figsize=(13, 5.5), dpi=110, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    accuracy_axes, size_axes = figure.subplots(1, 2, width_ratios=(3, 2))
    annotations = _plot_accuracy_vs_latency(accuracy_axes, report, models, colors)
    _plot_sizes(size_axes, models, colors)
    hardware = report["hardware"]
    figure.suptitle(
        f"{report['dataset']}: {report['test_size']} test {_rows(report)}, "
        f"CPU {hardware['cpu']}, {hardware['threads']} threads",
        fontsize=11,
    )
    canvas.draw()  # label boxes are only known once the figure is laid out
    _separate_labels(annotations, accuracy_axes, canvas.get_renderer())
    figure.savefig(png_path)


def _plot_accuracy_vs_latency(axes, report: dict, models: list, colors: list[str]) -> list:
    """One coloured, labelled point per model plus teacher and baseline reference lines."""
    primary = task_metrics(report)[0]
    title = _title(primary)
    annotations = []
    for (label, kind, metrics), color in zip(models, colors):
        x, y = metrics["latency_ms"]["bs1_p50"], metrics[primary]
        axes.scatter(x, y, s=140 if kind == "teacher" else 70, color=color, marker=_MARKERS[kind], zorder=3)
        annotations.append(
            axes.annotate(
                label, (x, y), xytext=(8, 6), textcoords="offset points", fontsize=9, color=color,
                arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6}, annotation_clip=False,
            )
        )
    axes.axhline(report["teacher"][primary], color="0.5", ls="--", lw=0.8, label=f"teacher {title}")
    if "baseline" in report:
        baseline = report["baseline"]
        axes.axhline(baseline[primary], color="0.5", ls=":", lw=0.8, label=f"baseline ({baseline['name']})")
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.margins(x=0.25, y=0.2)
    axes.set_xlabel("latency at batch size 1, median (ms, log scale)")
    axes.set_ylabel(f"test {title}")
    axes.set_title(f"{title} vs CPU latency (up and left is better)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return annotations


def _plot_sizes(axes, models: list, colors: list[str]) -> None:
    """Bars of size on disk, each with its value written on top."""
    positions = range(len(models))
    bars = axes.bar(positions, [metrics["size_mb"] for _, _, metrics in models], color=colors)
    axes.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    axes.set_xticks(positions, [label for label, _, _ in models], rotation=30, ha="right", fontsize=9)
    axes.set_ylabel("size on disk (MB)")
    axes.set_title("model size")
    axes.margins(y=0.12)


def render_html(report: dict, chart_png: bytes) -> str:
    """A self-contained page (inline style, the chart as a data URI, no scripts) that reads on a
    phone as on a laptop: the wide table scrolls sideways instead of squeezing the page."""
    escape = html.escape
    significance = "".join(f"<li>{escape(line)}</li>" for line in _significance_lines(report))
    title = escape(f"distill report: {report['dataset']}")
    chart = base64.b64encode(chart_png).decode("ascii")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>",
        "<style>html{-webkit-text-size-adjust:100%;text-size-adjust:100%}"
        "body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;max-width:80em;line-height:1.4;"
        "overflow-wrap:break-word}"
        ".scroll{overflow-x:auto}table{border-collapse:collapse;white-space:nowrap}"
        "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{white-space:normal;vertical-align:bottom}"
        "th:first-child,td:first-child{position:sticky;left:0;background:#fff;box-shadow:inset -1px 0 #ccc}"
        "th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}"
        "img{max-width:100%;height:auto}.note{color:#555}"
        "@media (max-width:40em){body{margin:1em auto;padding:0 .5em;font-size:15px}h1{font-size:1.4em}}</style>",
        "</head><body>",
        f"<h1>{title}</h1>",
        f"<p><strong>{escape(_headline(report))}</strong></p>",
    ]
    if "recommended" in report:
        parts.append(f"<p><strong>{escape(_recommended_line(report['recommended']))}</strong></p>")
    parts += [
        _html_table(*_table(report)),
        f'<p class="note">{escape(_LEGEND)}</p>',
        f'<img src="data:image/png;base64,{chart}" alt="accuracy versus latency and model size">',
    ]
    per_type = _per_type_table(report)
    if per_type is not None:
        legend = f'<p class="note">{escape(_PER_TYPE_LEGEND)}</p>'
        parts += [f"<h2>{escape(_PER_TYPE_TITLE)}</h2>", _html_table(*per_type), legend]
    if significance:
        parts.append(f"<h2>Paired tests</h2><ul>{significance}</ul>")
    if "baseline" in report:
        parts.append(f"<p>{escape(_baseline_line(report))}</p>")
    if "notes" in report:
        parts.append(f'<p class="note">Notes: {escape(report["notes"])}</p>')
    parts += [f"<h2>Hardware</h2><p>{escape(_hardware_line(report['hardware']))}</p>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    """A table that scrolls sideways on a narrow screen, every cell escaped."""
    escape = html.escape
    head_cells = "".join(f"<th>{escape(name)}</th>" for name in headers)
    body_rows = "\n".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head_cells}</tr></thead><tbody>\n{body_rows}\n</tbody></table></div>'


def write_report(report: dict, run_dir: str | Path) -> dict[str, Path]:
    """Validate `report`, then write report.json/.md/.html/.png into `run_dir`; return their paths."""
    validate_report(report)
    run_dir = Path(run_dir)
    paths = {suffix: run_dir / f"report.{suffix}" for suffix in ("json", "md", "html", "png")}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    render_chart(report, paths["png"])
    paths["html"].write_text(render_html(report, paths["png"].read_bytes()), encoding="utf-8")
    return paths


def _model_entries(report: dict) -> Iterator[tuple[str, str, dict]]:
    """(row label, kind, metrics) for the teacher, then each student; each followed by its int8 variant."""
    yield "teacher", "teacher", report["teacher"]
    if "int8" in report["teacher"]:
        reference = report["teacher"].get("int8_decision", {}).get("kept") is False
        label = "teacher int8 (reference, not kept)" if reference else "teacher int8"
        yield label, "teacher", {"params": report["teacher"]["params"], **report["teacher"]["int8"]}
    for student in report["students"]:
        yield student["name"], student["kind"], student
        if "int8" in student:
            # Quantisation keeps the parameter count, so the int8 row shows the fp32 count.
            yield f"{student['name']} int8", student["kind"], {"params": student["params"], **student["int8"]}


def _table(report: dict) -> tuple[list[str], list[list[str]]]:
    """Column headers and formatted cells shared by the Markdown, terminal and HTML views."""
    large = _largest_batch_size(report["teacher"]["latency_ms"])
    names = task_metrics(report)
    headers = [
        "model", "kind", *map(_title, names), "retention", "params", "size MB", "bs1 p50/p95 ms", "bs1 p50 by round ms",
        "bs1 tokenise / run / post ms",
    ]
    if large:
        headers.append(f"bs{large} p50 ms")
    headers += ["throughput/s", "speed-up", "bs1 p50 ms served (threads)", "served speed-up", "MFLOPs/text", "FLOP-limit speed-up", "parity"]
    rows = []
    for label, kind, metrics in _model_entries(report):
        latency = metrics["latency_ms"]
        row = [
            label,
            kind,
            *(f"{metrics[name]:.4f}" for name in names),
            _optional(metrics.get("retention"), lambda value: f"{100 * value:.1f}%"),
            _params(metrics["params"]),
            f"{metrics['size_mb']:.1f}",
            f"{_ms(latency['bs1_p50'])} / {_ms(latency['bs1_p95'])}",
            f"{_ms(latency['bs1_p50_low'])}–{_ms(latency['bs1_p50_high'])}" if "bs1_p50_low" in latency else MISSING,
            _optional(metrics.get("latency_split_ms"), lambda split: " / ".join(_ms(split[phase]) for phase in PHASES)),
        ]
        if large:
            row.append(_optional(latency.get(f"bs{large}_p50"), _ms))
        row += [
            _optional(metrics.get("throughput_per_s"), lambda value: f"{value:,.0f}"),
            _optional(metrics.get("speedup"), lambda value: f"{value:.1f}×"),
            _optional(metrics.get("served_bs1_ms"), lambda served: f"{_ms(served['bs1_p50'])} ({served['threads']})"),
            _optional(metrics.get("served_speedup"), lambda value: f"{value:.1f}×"),
            _optional(metrics.get("flops_per_text"), lambda value: f"{value / 1e6:,.3g}"),
            _optional(metrics.get("flop_speedup"), lambda value: f"{value:.1f}×"),
            _optional(metrics.get("onnx_parity_max_abs_diff"), lambda value: f"{value:.1e}"),
        ]
        rows.append(row)
    return headers, rows


def _per_type_table(report: dict) -> tuple[list[str], list[list[str]]] | None:
    """F1 per entity type of every model (int8 copies included) and the baseline, each type's
    header with its gold support; None when the report has no figures per type."""
    entries = list(_model_entries(report))
    if "baseline" in report:
        entries.append((f"baseline {report['baseline']['name']}", "baseline", report["baseline"]))
    per_model = [(label, metrics["per_type"]) for label, _, metrics in entries if "per_type" in metrics]
    if not per_model:
        return None
    support = {kind: figures["support"] for _, per_type in per_model for kind, figures in per_type.items()}
    types = sorted(support)
    headers = ["model", *(f"{kind} (n={support[kind]:,})" for kind in types)]
    rows = [
        [label, *(_optional(per_type.get(kind), lambda figures: f"{figures['f1']:.4f}") for kind in types)]
        for label, per_type in per_model
    ]
    return headers, rows


def _largest_batch_size(latency: dict) -> int | None:
    """The largest timed batch size above 1 (the throughput column), or None if only bs1 was timed."""
    sizes = [int(match[1]) for key in latency if (match := re.fullmatch(r"bs(\d+)_p50", key))]
    return max((size for size in sizes if size > 1), default=None)


def _title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


def _rows(report: dict) -> str:
    """What a test row is (texts, sentences); reports from before task families: texts."""
    return report.get("task", {}).get("rows", "texts")


def _headline(report: dict) -> str:
    """One sentence on the best student by the primary metric, read straight from its stored figures."""
    primary = task_metrics(report)[0]
    title = _title(primary)
    if not report["students"]:
        return f"Teacher only: {title} {report['teacher'][primary]:.4f} on {report['test_size']} test {_rows(report)}."
    best = max(report["students"], key=lambda student: student[primary])
    return (
        f"Best student by {title}: {best['name']} ({best['kind']}) keeps {100 * best['retention']:.1f}% of the "
        f"teacher's {title}, runs {best['speedup']:.1f}× faster at batch size 1 and takes "
        f"{best['size_mb']:.1f} MB against the teacher's {report['teacher']['size_mb']:.1f} MB "
        f"({report['test_size']} test {_rows(report)})."
    )


def _recommended_line(recommended: dict) -> str:
    return (
        f"Recommended for deployment: {recommended['name']} ({recommended['manifest']}), {recommended['why']}; "
        "`distill predict RUN_DIR` and `distill serve RUN_DIR` load it."
    )


def _significance_lines(report: dict) -> Iterator[str]:
    """Paired bootstrap and McNemar results and teacher agreement, for students that carry them."""
    comparisons = (
        ("vs_teacher", "the teacher"),
        ("vs_ensemble", "the teacher ensemble"),
        ("vs_gold_twin", "its twin trained on gold labels only"),
    )
    title = _title(task_metrics(report)[0])
    if "ensemble" in report:
        yield _ensemble_line(report)
    agreement = report.get("task", {}).get("agreement", "share of test texts with the same decision")
    if "threshold_gain" in report["teacher"]:
        yield f"teacher: thresholds tuned on dev change test {title} by {100 * report['teacher']['threshold_gain']:+.2f} points over the default rule"
    if any(key in student for student in report["students"] for key, _ in comparisons):
        yield _tests_explained(report)
    for student in report["students"]:
        for key, other in comparisons:
            if key in student:
                test = student[key]
                exact = f", exact McNemar p = {test['p_value']:.3g}" if "p_value" in test else ""
                yield (
                    f"{student['name']} vs {other}: {title} {100 * test['diff']:+.1f} points "
                    f"(bootstrap interval {100 * test['low']:+.1f} to {100 * test['high']:+.1f}){exact}; "
                    f"{_verdict(significant(test['low'], test['high']))}"
                )
        if "ensemble_retention" in student:
            yield f"{student['name']} keeps {100 * student['ensemble_retention']:.1f}% of the teacher ensemble's {title}"
        if "agreement" in student:
            yield f"{student['name']} agreement with the teacher ({agreement}): {student['agreement']:.3f}"
        if "threshold_gain" in student:
            yield f"{student['name']}: thresholds tuned on dev change test {title} by {100 * student['threshold_gain']:+.2f} points over the default rule"
        if "over_seeds" in student:
            yield _over_seeds_line(student["name"], student["over_seeds"])


def _ensemble_line(report: dict) -> str:
    """The teacher ensemble's figure beside each member's (torch, test), and which member is the teacher row."""
    ensemble = report["ensemble"]
    primary = task_metrics(report)[0]
    members = ", ".join(
        f"{member['name']} (seed {member['seed']}) {member['test'][primary]:.4f}" for member in ensemble["members"]
    )
    return (
        f"teacher ensemble ({len(ensemble['members'])} members, mean of their {ensemble['combine']}): test "
        f"{_title(primary)} {ensemble['figures'][primary]:.4f} (torch); members {members}; best on dev "
        f"{ensemble['best_member']}; the teacher row is {ensemble['relation_member']}, the member relations, "
        "student init and the export use"
    )


def _tests_explained(report: dict) -> str:
    """What the paired tests resample and, where McNemar applies, what it counts as right: for
    token classification a sentence-level exact match, which is not the entity F1."""
    rows, title = _rows(report), _title(task_metrics(report)[0])
    line = (
        f"How to read the tests: a bootstrap interval resamples the test {rows} with replacement, both models "
        f"on the same draw, and computes each resample's {title} afresh from its {rows}"
    )
    right = report.get("task", {}).get("right")
    if right is not None:
        line += f"; exact McNemar p compares the test {rows} one model gets right and the other does not ({right})"
    return line


def _over_seeds_line(name: str, seeds: dict) -> str:
    """Mean ± std over the student seeds, and the pooled difference to the gold-only twin."""
    line = (
        f"{name} over seeds {', '.join(map(str, seeds['seeds']))} (torch): accuracy "
        f"{seeds['accuracy_mean']:.4f} ± {seeds['accuracy_std']:.4f}, macro-F1 "
        f"{seeds['macro_f1_mean']:.4f} ± {seeds['macro_f1_std']:.4f}"
    )
    if "vs_gold_twin" in seeds:
        pooled = seeds["vs_gold_twin"]["pooled"]
        line += (
            f"; vs its gold-only twin {100 * pooled['diff']:+.2f} points ({pooled['interval']}: "
            f"{100 * pooled['low']:+.2f} to {100 * pooled['high']:+.2f}); {_verdict(pooled['significant'])}"
        )
    return line


def _verdict(is_significant: bool) -> str:
    return "significant" if is_significant else "not significant: the interval includes 0"


def _baseline_line(report: dict) -> str:
    baseline = report["baseline"]
    figures = ", ".join(f"{_title(name)} {baseline[name]:.4f}" for name in task_metrics(report))
    return f"Baseline {baseline['name']}: {figures}."


def _hardware_line(hardware: dict) -> str:
    """CPU, cores, threads, then whichever library versions and OS were recorded."""
    parts = [f"{hardware['cpu']}, {hardware['logical_cores']} logical cores, {hardware['threads']} threads"]
    versions = ("torch", "onnxruntime", "transformers", "python")
    parts += [f"{name} {hardware[name]}" for name in versions if name in hardware]
    if "os" in hardware:
        parts.append(hardware["os"])
    return "Hardware: " + "; ".join(parts) + "."


def _separate_labels(annotations: list, axes, renderer) -> None:
    """Move each point label to the nearest height (up or down) where it covers no point and
    no earlier label; the leader line keeps a moved label tied to its point."""
    point_size_px = 14
    obstacles = [
        Bbox.from_bounds(x - point_size_px / 2, y - point_size_px / 2, point_size_px, point_size_px)
        for x, y in axes.transData.transform([annotation.xy for annotation in annotations])
    ]
    for annotation in annotations:
        start_x, start_y = annotation.xyann
        for nudge in (0, 8, -8, 16, -16, 24, -24, 32, -32, 40, -40, None):
            annotation.xyann = (start_x, start_y + (nudge or 0))
            if nudge is None:  # nowhere free nearby: keep the plain position
                break
            box = _text_box(annotation, renderer)
            if not any(box.overlaps(other) for other in obstacles):
                break
        obstacles.append(_text_box(annotation, renderer))


def _text_box(annotation, renderer) -> Bbox:
    """The label's own box in pixels, without its leader line (which always touches its point)."""
    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def _optional(value: T | None, fmt: Callable[[T], str]) -> str:
    return MISSING if value is None else fmt(value)


def _ms(value: float) -> str:
    """About three significant digits without exponents: 0.0512, 4.56, 38.2, 1234."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:#.3g}"


def _params(count: int) -> str:
    for divisor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= divisor:
            return f"{count / divisor:.1f}{suffix}"
    return str(count)
