"""report.json schema and the four rendered views (markdown, terminal, html, png)."""

from __future__ import annotations

import copy
import json
import re

import pytest

from distill.report.recommend import recommend
from distill.report.render import render_html, render_markdown, render_terminal, write_report
from distill.report.schema import validate_report
from distill.report.stats import HIERARCHICAL_BOOTSTRAP


def _latency(bs1: float) -> dict:
    return {
        "bs1_p50": bs1, "bs1_p95": bs1 * 1.25, "bs1_p50_low": bs1 * 0.9, "bs1_p50_high": bs1 * 1.1,
        "bs32_p50": bs1 * 8, "bs32_p95": bs1 * 9,
    }


def _student(name: str, kind: str, accuracy: float, retention: float, speedup: float) -> dict:
    # retention and speedup deliberately disagree with accuracy and latency, so a renderer
    # that recomputed them instead of reading them would show different numbers
    return {
        "name": name, "kind": kind, "accuracy": accuracy, "macro_f1": accuracy - 0.02,
        "retention": retention, "params": 4_400_000, "size_mb": 16.9,
        "onnx": f"onnx/{name}.onnx", "onnx_int8": None, "latency_ms": _latency(2.0),
        "throughput_per_s": 1500.0, "speedup": speedup, "onnx_parity_max_abs_diff": 3.2e-6,
    }


@pytest.fixture
def report() -> dict:
    student = _student("student", "transformer", 0.80, 0.777, 12.3)
    student["int8"] = {
        "accuracy": 0.79, "macro_f1": 0.77, "size_mb": 4.4, "latency_ms": _latency(1.5),
        "throughput_per_s": 2400.0, "retention": 0.654, "speedup": 21.5,
    }
    student["vs_teacher"] = {"diff": -0.01, "low": -0.02, "high": 0.005, "p_value": 0.21}
    return {
        "dataset": "builtin:tweets <demo>",
        "test_size": 400,
        "hardware": {"cpu": "Test CPU", "logical_cores": 2, "threads": 2, "torch": "2.13.0"},
        "teacher": {
            "accuracy": 0.81, "macro_f1": 0.79, "params": 22_700_000, "size_mb": 86.7,
            "latency_ms": _latency(14.0), "throughput_per_s": 180.0,
        },
        "students": [student, _student("cnn", "cnn", 0.74, 0.888, 45.6)],
        "baseline": {"name": "tfidf-logreg", "accuracy": 0.7, "macro_f1": 0.68},
        "provenance": {
            "package_version": "0.1.0", "git_commit": "0" * 40, "git_dirty": False, "code_tree": "1" * 40,
            "recipe": {"run": {"seed": 42}},
        },
    }


def test_schema_accepts_a_valid_report(report):
    validate_report(report)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["students"][1]["latency_ms"].pop("bs1_p50"), "report.students[1].latency_ms.bs1_p50"),
        (lambda r: r.pop("teacher"), "report.teacher"),
        (lambda r: r["students"][0]["int8"].pop("size_mb"), "report.students[0].int8.size_mb"),
        (lambda r: r["students"][0].update(kind="rnn"), "report.students[0].kind"),
        (lambda r: r["teacher"].update(accuracy=81.0), "report.teacher.accuracy"),
        (lambda r: r["teacher"].update(params=True), "report.teacher.params"),
        (lambda r: r["students"][1].update(speedup=float("nan")), "report.students[1].speedup"),
        (lambda r: r.pop("provenance"), "report.provenance"),
        (lambda r: r["provenance"].update(git_dirty="yes"), "report.provenance.git_dirty"),
    ],
)
def test_schema_rejects_a_broken_report_naming_the_path(report, mutate, message):
    mutate(report)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_report(report)


def _markdown_table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, body rows) of the one table in the page; the |---| rule is skipped."""
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    return cells[0], cells[1:]


def test_markdown_has_one_row_per_model_teacher_first(report):
    _, rows = _markdown_table(render_markdown(report))
    assert [row[0] for row in rows] == ["teacher", "student", "student int8", "cnn"]
    assert [row[1] for row in rows] == ["teacher", "transformer", "transformer", "cnn"]


def test_retention_and_speedup_are_read_from_the_report(report):
    markdown = render_markdown(report)
    header, body = _markdown_table(markdown)
    rows = {row[0]: row for row in body}
    retention, speedup = header.index("retention"), header.index("speed-up")
    assert (rows["student"][retention], rows["student"][speedup]) == ("77.7%", "12.3×")
    assert (rows["student int8"][retention], rows["student int8"][speedup]) == ("65.4%", "21.5×")
    assert (rows["cnn"][retention], rows["cnn"][speedup]) == ("88.8%", "45.6×")
    assert (rows["teacher"][retention], rows["teacher"][speedup]) == ("—", "—")
    assert "keeps 77.7% of the teacher's accuracy, runs 12.3× faster" in markdown


def test_a_report_from_before_timing_rounds_shows_no_spread(report):
    for latency in [report["teacher"]["latency_ms"], *(s["latency_ms"] for s in report["students"])]:
        latency.pop("bs1_p50_low"), latency.pop("bs1_p50_high")
    assert _markdown_table(render_markdown(report))[1][0][8] == "—"


def test_markdown_cells_baseline_significance_and_hardware(report):
    markdown = render_markdown(report)
    teacher = _markdown_table(markdown)[1][0]
    # a report made before phases were timed shows none (—) in the tokenise / run / post column
    assert teacher[2:12] == ["0.8100", "0.7900", "—", "22.7M", "86.7", "14.0 / 17.5", "12.6–15.4", "—", "112", "180"]
    assert "Baseline tfidf-logreg: accuracy 0.7000, macro-F1 0.6800." in markdown
    assert "student vs the teacher: accuracy -1.0 points (bootstrap interval -2.0 to +0.5)" in markdown
    assert "p = 0.21; not significant: the interval includes 0" in markdown
    assert "Hardware: Test CPU, 2 logical cores, 2 threads; torch 2.13.0." in markdown


def test_a_difference_is_marked_significant_only_when_its_interval_excludes_zero(report):
    report["students"][0]["vs_gold_twin"] = {"diff": 0.012, "low": 0.004, "high": 0.02, "p_value": 0.003}
    markdown = render_markdown(report)
    assert "student vs its twin trained on gold labels only: accuracy +1.2 points" in markdown
    assert "p = 0.003; significant" in markdown and markdown.count("; significant") == 1


def test_figures_over_seeds_validate_and_render_with_the_pooled_twin_verdict(report):
    per_seed = [{"diff": 0.01, "low": -0.01, "high": 0.03, "p_value": 0.4}] * 3
    report["students"][0]["over_seeds"] = {
        "seeds": [1, 2, 3], "accuracy_mean": 0.8, "accuracy_std": 0.004, "macro_f1_mean": 0.77, "macro_f1_std": 0.005,
        "agreement_mean": 0.9, "agreement_std": 0.01,
        "vs_gold_twin": {
            "pooled": {"diff": 0.01, "low": 0.002, "high": 0.018, "interval": HIERARCHICAL_BOOTSTRAP, "significant": True},
            "per_seed": per_seed,
        },
    }  # fmt: skip
    validate_report(report)
    markdown = render_markdown(report)
    assert "student over seeds 1, 2, 3 (torch): accuracy 0.8000 ± 0.0040, macro-F1 0.7700 ± 0.0050" in markdown
    assert (
        "vs its gold-only twin +1.00 points (hierarchical bootstrap over seeds and examples: +0.20 to +1.80); significant"
        in markdown
    )
    report["students"][0]["over_seeds"]["vs_gold_twin"]["pooled"]["interval"] = "pooled bootstrap interval"
    with pytest.raises(ValueError, match="pooled.interval"):
        validate_report(report)
    report["students"][0]["over_seeds"]["vs_gold_twin"]["pooled"].pop("interval")
    with pytest.raises(ValueError, match="pooled.interval"):
        validate_report(report)
    report["students"][0]["over_seeds"]["vs_gold_twin"]["pooled"]["interval"] = HIERARCHICAL_BOOTSTRAP
    report["students"][0]["over_seeds"]["accuracy_std"] = -1
    with pytest.raises(ValueError, match="over_seeds"):
        validate_report(report)


def test_notes_are_shown_in_markdown_and_html(report, tmp_path):
    report["notes"] = "general read no corpus given: the task's 40 training texts, labels unused"
    validate_report(report)
    assert f"Notes: {report['notes']}" in render_markdown(report)
    assert "Notes: general read no corpus given: the task&#x27;s 40 training texts" in render_html(report, b"png")


def test_terminal_table_is_aligned_with_one_line_per_model(report):
    lines = render_terminal(report).splitlines()
    assert lines[0].split()[:3] == ["model", "accuracy", "macro-F1"]
    assert [line.split()[0] for line in lines[2:6]] == ["teacher", "student", "student", "cnn"]
    assert len({line.index("0.") for line in lines[2:6]}) == 1  # the accuracy column lines up


def test_html_escapes_text_and_embeds_the_chart(report):
    page = render_html(report, b"\x89PNG fake")
    assert "builtin:tweets &lt;demo&gt;" in page and "<demo>" not in page
    assert '<img src="data:image/png;base64,iVBORyBmYWtl"' in page
    assert page.count("<tr><td>") == 4


def test_html_is_self_contained_and_fits_a_phone(report, tmp_path):
    page = write_report(report, tmp_path)["html"].read_text(encoding="utf-8")
    assert re.findall(r'(?:src|href)="([^"]*)"', page) == [page.split('src="')[1].split('"')[0]]  # the one image
    assert page.split('src="')[1].startswith("data:image/png;base64,iVBORw0KGgo")  # the PNG itself
    assert "url(" not in page and "<link" not in page and "<script" not in page
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert '<div class="scroll"><table>' in page and ".scroll{overflow-x:auto}" in page


def _deployable(report: dict) -> dict:
    """The fixture's figures with int8 files: student 0.80 at 2.0 ms, its int8 0.79 at 1.5 ms, cnn 0.74 at 2.0 ms."""
    report["students"][0]["onnx_int8"] = "onnx/student.int8.onnx"
    return report


def test_recommended_is_the_fastest_within_the_tolerance_of_the_best(report):
    report = _deployable(report)
    within_a_point = recommend(report, tolerance=0.01)
    assert within_a_point["name"] == "student int8" and within_a_point["manifest"] == "onnx/student.int8.json"
    assert within_a_point["why"] == (
        "the fastest model at batch size 1 (1.5 ms median) whose accuracy (0.7900) is within 0.01 of the best, "
        "student (0.8000)"
    )
    assert recommend(report, tolerance=0.005)["name"] == "student"  # int8 lost a point; cnn as fast but far worse
    report["students"][1]["latency_ms"] = _latency(0.5)
    assert recommend(report, tolerance=0.06)["name"] == "cnn"  # 0.74 is within 6 points, and fastest


def test_with_a_budget_the_most_accurate_model_within_it_is_recommended(report):
    report = _deployable(report)
    assert recommend(report, tolerance=0.0, budget_ms=3.0)["name"] == "student"
    assert recommend(report, tolerance=0.0, budget_ms=1.6)["name"] == "student int8"
    over = recommend(report, tolerance=0.0, budget_ms=1.0)
    assert over["name"] == "student int8" and over["why"].startswith("no model meets the latency budget of 1 ms")


def test_a_teacher_only_report_recommends_the_teacher(report):
    report["students"] = []
    report["teacher"]["onnx"] = "onnx/teacher.onnx"
    assert recommend(report, tolerance=0.01)["manifest"] == "onnx/teacher.json"


def test_recommended_validates_and_every_view_names_it(report):
    report["recommended"] = recommend(_deployable(report), tolerance=0.01)
    validate_report(report)
    line = "Recommended for deployment: student int8 (onnx/student.int8.json), the fastest model"
    assert line in render_markdown(report) and line in render_terminal(report) and line in render_html(report, b"")
    del report["recommended"]["manifest"]
    with pytest.raises(ValueError, match=r"report\.recommended: missing required key 'manifest'"):
        validate_report(report)


def test_write_report_writes_all_four_files_and_json_round_trips(report, tmp_path):
    paths = write_report(report, tmp_path)
    assert sorted(path.name for path in paths.values()) == ["report.html", "report.json", "report.md", "report.png"]
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == report
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["md"].read_text(encoding="utf-8") == render_markdown(report)


def test_write_report_refuses_an_invalid_report_before_writing(report, tmp_path):
    broken = copy.deepcopy(report)
    del broken["students"][0]["name"]
    with pytest.raises(ValueError, match=r"report\.students\[0\]\.name"):
        write_report(broken, tmp_path)
    assert list(tmp_path.iterdir()) == []
