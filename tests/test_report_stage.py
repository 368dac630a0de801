"""The report stage on a tiny run, through the pipeline and the CLI, and tools/bench.py on it."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from click.testing import CliRunner
from conftest import load_tool
from test_export_stage import build_tiny_run

from distill import provenance
from distill.cli import cli
from distill.data.tokenize import TextEncoder
from distill.errors import UserError
from distill.models.teacher import label_names, load_classifier
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.report.recommend import recommend
from distill.report.schema import validate_report
from distill.stages.report import build_report

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, Run, dict]:
    """The tiny run after `export` and `report` ran through the pipeline."""
    root = tmp_path_factory.mktemp("report")
    recipe = build_tiny_run(root)
    run = Run(load_recipe(recipe))
    run.execute()
    return recipe, run, json.loads((run.dir / "report.json").read_text(encoding="utf-8"))


def torch_labels(model_dir: Path, texts: list[str]) -> list[str]:
    """Label names the saved torch classifier predicts, computed here independently of distill's stages."""
    model = load_classifier(model_dir)
    inputs = TextEncoder.from_pretrained_dir(model_dir, max_length=16).encode(texts)
    with torch.no_grad():
        logits = model(**{key: torch.from_numpy(value) for key, value in inputs.items()}).logits
    return [label_names(model.config)[index] for index in logits.argmax(dim=-1).tolist()]


def test_report_validates_and_has_one_entry_per_student(reported):
    _, run, report = reported
    validate_report(report)
    assert [(s["name"], s["kind"]) for s in report["students"]] == [("student", "transformer"), ("bow", "bow")]
    assert report["test_size"] == len(run.data().test)
    assert report["dataset"] == "tiny.csv"
    assert report["threads"] == report["hardware"]["threads"] == 1
    timed = {f"bs{n}_{key}" for n in (1, 32) for key in ("p50", "p95", "p50_low", "p50_high")}
    assert set(report["teacher"]["latency_ms"]) == timed
    assert report["timing"]["rounds"] == 3  # the recipe's 3 repeats allow 3 rounds, not the default 5
    flops = report["teacher"]["flops_per_text"]
    for entry in (report["teacher"], *report["students"]):
        assert entry["flop_speedup"] == pytest.approx(flops / entry["flops_per_text"])
        assert entry["int8"]["flops_per_text"] == entry["flops_per_text"]  # int8 runs the same operations
        latency = entry["latency_ms"]
        assert latency["bs1_p50_low"] <= latency["bs1_p50_high"] and latency["bs1_p50_low"] <= latency["bs1_p95"]
    for entry in (report["teacher"], *report["students"]):
        assert entry["onnx"].startswith("onnx/") and (run.dir / entry["onnx"]).is_file()
        assert (run.dir / entry["onnx_int8"]).is_file()
        assert entry["size_mb"] == (run.dir / entry["onnx"]).stat().st_size / 2**20
    assert 0 <= report["baseline"]["accuracy"] <= 1


def test_report_and_every_done_marker_carry_the_code_and_the_resolved_recipe(reported):
    _, run, report = reported
    resolved = tomllib.loads((run.dir / "recipe.toml").read_text(encoding="utf-8"))
    assert report["provenance"] == {**provenance.code(), "recipe": resolved}
    for path in run.dir.glob("done/*.json"):
        assert json.loads(path.read_text(encoding="utf-8"))["provenance"] == report["provenance"], path.name


def test_ratios_are_computed_from_the_recorded_figures(reported):
    _, _, report = reported
    teacher = report["teacher"]
    for entry in [teacher["int8"], *report["students"], *(s["int8"] for s in report["students"])]:
        assert entry["retention"] == pytest.approx(entry["accuracy"] / teacher["accuracy"])
        assert entry["speedup"] == pytest.approx(teacher["latency_ms"]["bs1_p50"] / entry["latency_ms"]["bs1_p50"])
    for student in report["students"]:
        assert student["vs_teacher"]["diff"] == pytest.approx(student["accuracy"] - teacher["accuracy"])
        assert student["vs_teacher"]["low"] <= student["vs_teacher"]["diff"] <= student["vs_teacher"]["high"]


def test_accuracy_and_agreement_match_the_torch_models(reported):
    _, run, report = reported
    test = run.data().test
    texts, gold = [e.text for e in test], [e.label for e in test]
    teacher = torch_labels(run.dir / "teacher", texts)
    student = torch_labels(run.dir / "student", texts)
    assert report["teacher"]["accuracy"] == pytest.approx(np.mean([p == g for p, g in zip(teacher, gold)]))
    transformer = report["students"][0]
    assert transformer["accuracy"] == pytest.approx(np.mean([p == g for p, g in zip(student, gold)]))
    assert transformer["agreement"] == pytest.approx(np.mean([t == s for t, s in zip(teacher, student)]))
    summary = json.loads((run.dir / "onnx" / "summary.json").read_text(encoding="utf-8"))
    for entry, reported_entry in zip(summary["models"], [report["teacher"], *report["students"]]):
        assert reported_entry["accuracy"] == entry["test_accuracy"]
        assert reported_entry["int8"]["accuracy"] == entry["test_accuracy_int8"]


def test_pipeline_publishes_every_view_at_the_run_root(reported):
    _, run, report = reported
    markdown = (run.dir / "report.md").read_text(encoding="utf-8")
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    labels = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert labels == ["teacher", "teacher int8", "student", "student int8", "bow", "bow int8"]
    assert (run.dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in (run.dir / "report.html").read_text(encoding="utf-8")
    done = json.loads((run.dir / "done" / "report.json").read_text(encoding="utf-8"))
    assert done["metrics"]["teacher_accuracy"] == report["teacher"]["accuracy"]
    assert done["metrics"]["bow_speedup"] == report["students"][1]["speedup"]
    assert not list(run.dir.glob(".*.partial"))


def test_report_recommends_a_student_that_predict_on_the_run_directory_loads(reported, distill_main):
    _, run, report = reported
    recommended = report["recommended"]
    assert recommended == recommend(report, tolerance=0.01)  # the recipe's default tolerance, no budget
    assert recommended["name"] in {name for s in report["students"] for name in (s["name"], f"{s['name']} int8")}
    assert recommended["name"] in (run.dir / "report.md").read_text(encoding="utf-8")
    code, out, err = distill_main("predict", run.dir, "--text", "a good film")
    assert code == 0, err
    assert err == f"model: {run.dir / recommended['manifest']}\n" and json.loads(out)["text"] == "a good film"


def test_cli_eval_prints_torch_accuracy_per_model(reported):
    _, run, report = reported
    result = CliRunner().invoke(cli, ["eval", str(run.dir)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:5]}
    assert list(rows) == ["teacher", "student", "bow"]
    assert float(rows["teacher"][2]) == pytest.approx(report["teacher"]["accuracy"], abs=1e-4)
    for student in report["students"]:
        assert float(rows[student["name"]][2]) == pytest.approx(student["accuracy"], abs=1e-4)


def test_cli_report_adds_the_gold_twin_comparison(reported):
    recipe, run, report = reported
    twin = run.dir / "student" / "twin"
    shutil.copytree(run.dir / "teacher", twin)
    try:
        result = CliRunner().invoke(cli, ["report", str(run.dir)])
        assert result.exit_code == 0, result.output
        rewritten = json.loads((run.dir / "report.json").read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(twin)
    assert "teacher int8" in result.stdout and "bow" in result.stdout
    validate_report(rewritten)
    student = rewritten["students"][0]
    # the twin is a copy of the teacher, so the comparison must equal the one with the teacher
    assert student["vs_gold_twin"]["diff"] == pytest.approx(student["vs_teacher"]["diff"])
    assert student["vs_gold_twin"]["p_value"] == pytest.approx(student["vs_teacher"]["p_value"])
    assert "vs_gold_twin" not in rewritten["students"][1]


def test_bench_tool_records_stages_memory_and_figures(reported, tmp_path):
    recipe, run, report = reported
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- results:start -->\nold\n<!-- results:end -->\nafter\n", encoding="utf-8")
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench.py"), str(recipe), "--out", str(out), "--readme", str(readme)],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    bench = json.loads(out.read_text(encoding="utf-8"))
    (entry,) = bench["runs"]
    done = {path.stem: json.loads(path.read_text(encoding="utf-8"))["seconds"] for path in run.dir.glob("done/*.json")}
    assert entry["stages"] == done and set(done) == {"prepare", "export", "report"}
    assert sorted(entry["reused_stages"]) == ["export", "prepare", "report"]  # all done before the bench
    assert entry["peak_rss_mb"] > 10 and entry["wall_s"] > 0
    assert entry["teacher"]["accuracy"] == report["teacher"]["accuracy"]
    assert [s["name"] for s in entry["students"]] == ["student", "bow"]
    text = readme.read_text(encoding="utf-8")
    assert "\nold\n" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    section = re.search(r"<!-- results:start -->\n(.*)<!-- results:end -->", text, re.S)[1]
    assert report["hardware"]["cpu"] in section
    assert f"{report['students'][1]['retention'] * 100:.1f}%" in section


def test_a_marked_section_is_appended_once_then_replaced_leaving_the_prose_around_it(tmp_path):
    from distill.report.sections import markers, update_section

    readme = tmp_path / "README.md"
    readme.write_text("# project\n", encoding="utf-8")
    update_section(readme, "results", "first", "Benchmark results")
    readme.write_text(readme.read_text(encoding="utf-8") + "\nprose after\n", encoding="utf-8")
    update_section(readme, "results", "second", "Benchmark results")
    update_section(readme, "ablation", "table", "Ablation")
    text = readme.read_text(encoding="utf-8")
    start, end = markers("results")
    assert text.startswith(f"# project\n\n## Benchmark results\n\n{start}\nsecond\n{end}\n\nprose after\n")
    assert text.count(start) == 1 and "first" not in text and text.endswith("## Ablation\n\n<!-- ablation:start -->\ntable\n<!-- ablation:end -->\n")


def _bench_run(recipe: str, accuracy: float, **extra) -> dict:
    model = {"accuracy": accuracy, "macro_f1": accuracy, "size_mb": 1.0, "latency_ms": {"bs1_p50": 2.0}}
    return {
        "recipe": f"recipes/{recipe}", "wall_s": 10.0, "peak_rss_mb": 100.0, "stages": {"prepare": 1.0},
        "dataset": "builtin:tweets", "hardware": {"cpu": "Test CPU", "threads": 2},
        "teacher": model, "students": [{"name": "cnn", **model, "retention": 1.0, "speedup": 1.0}], **extra,
    }


def load_bench_tool():
    return load_tool("bench")


def test_bench_refuses_a_run_whose_stages_come_from_different_code_unless_allowed(reported, tmp_path):
    recipe, run, _ = reported
    copied = tomllib.loads(recipe.read_text(encoding="utf-8"))
    copied["run"]["out_dir"] = str(tmp_path / "runs")  # a copy of the run, every stage done
    (tmp_path / "tiny.toml").write_text(tomli_w.dumps(copied), encoding="utf-8")
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(run.dir, run_dir)
    marker = json.loads((run_dir / "done" / "prepare.json").read_text(encoding="utf-8"))
    marker["provenance"].update(git_commit="0123456789ab" + "0" * 28, code_tree="1" * 40)  # made by other code
    (run_dir / "done" / "prepare.json").write_text(json.dumps(marker), encoding="utf-8")
    out, readme = tmp_path / "bench.json", tmp_path / "README.md"
    command = [sys.executable, str(REPO / "tools" / "bench.py"), str(tmp_path / "tiny.toml"), "--out", str(out)]

    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and not out.exists()
    assert "WARNING: [prepare] reuses the output of commit 0123456789ab" in refused.stderr  # from `distill run`
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "different code" in line and "prepare 0123456789ab" in line and "--allow-mixed-code" in line

    allowed = subprocess.run([*command, "--allow-mixed-code", "--readme", str(readme)], capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stderr
    (entry,) = json.loads(out.read_text(encoding="utf-8"))["runs"]
    now = provenance.code()["git_commit"]
    edited = "+uncommitted" if provenance.code()["git_dirty"] else ""  # a checkout being edited
    assert entry["mixed_code"] == {"export": now + edited, "prepare": marker["provenance"]["git_commit"] + edited, "report": now + edited}
    assert entry["provenance"] == json.loads((run_dir / "report.json").read_text(encoding="utf-8"))["provenance"]
    rows = [line for line in readme.read_text(encoding="utf-8").splitlines() if line.startswith("| tiny.toml")]
    assert rows and all(row.startswith("| tiny.toml **⚠ MIXED CODE** |") for row in rows)
    assert "**⚠ MIXED CODE**: the row's stages were made by different commits" in readme.read_text(encoding="utf-8")


def test_the_report_names_stages_made_by_other_code(reported, tmp_path, monkeypatch):
    """A stage reused from other code, or onnx/ redone by `distill export` at other code, is named
    in report.json's provenance (stage -> commit) and in its notes; one code's run has neither."""
    recipe, run, _ = reported
    copied = tomllib.loads(recipe.read_text(encoding="utf-8"))
    copied["run"]["out_dir"] = str(tmp_path / "runs")
    (tmp_path / "tiny.toml").write_text(tomli_w.dumps(copied), encoding="utf-8")
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(run.dir, run_dir)
    this_code = {"package_version": "1.0", "git_commit": "c" * 40, "git_dirty": False, "code_tree": "t" * 40}
    monkeypatch.setattr(provenance, "code", lambda: dict(this_code))

    def made_by(path: Path, code: dict) -> None:
        record = json.loads(path.read_text(encoding="utf-8"))
        record["provenance"] = {**record.get("provenance", {}), **code}
        path.write_text(json.dumps(record), encoding="utf-8")

    markers = sorted((run_dir / "done").glob("*.json"))
    for path in [*markers, run_dir / "onnx" / "summary.json"]:
        made_by(path, this_code)
    one_code = build_report(Run(load_recipe(tmp_path / "tiny.toml")))
    assert "mixed_code" not in one_code["provenance"] and "different code" not in one_code.get("notes", "")

    other_code = {**this_code, "git_commit": "d" * 40, "code_tree": "u" * 40}
    made_by(run_dir / "done" / "prepare.json", other_code)
    made_by(run_dir / "onnx" / "summary.json", {**other_code, "git_commit": "e" * 40})
    mixed = build_report(Run(load_recipe(tmp_path / "tiny.toml")))
    validate_report(mixed)
    expected = {path.stem: "c" * 40 for path in markers} | {"prepare": "d" * 40, "export": "e" * 40, "report": "c" * 40}
    assert mixed["provenance"]["mixed_code"] == expected
    assert "stages made by different code (" in mixed["notes"] and "prepare dddddddddddd" in mixed["notes"]


def test_mixed_code_counts_a_marker_without_provenance_as_other_code():
    mixed_code = provenance.mixed_code
    same = {"seconds": 1.0, "provenance": {"code_tree": "t", "git_commit": "c"}}
    assert mixed_code({"prepare": same, "report": same}) is None
    assert mixed_code({"prepare": {"seconds": 1.0}, "report": same}) == {"prepare": None, "report": "c"}
    edited = {"seconds": 1.0, "provenance": {"code_tree": "t", "git_commit": "c", "git_dirty": True, "uncommitted_digest": "x"}}
    assert mixed_code({"prepare": edited, "report": edited}) is None  # the same edits
    other_edits = {"seconds": 1.0, "provenance": {**edited["provenance"], "uncommitted_digest": "y"}}
    assert mixed_code({"prepare": edited, "report": other_edits}) == {"prepare": "c+uncommitted", "report": "c+uncommitted"}
    assert mixed_code({"prepare": edited, "report": same}) == {"prepare": "c+uncommitted", "report": "c"}
    unknown_edits = {"seconds": 1.0, "provenance": {"code_tree": "t", "git_commit": "c", "git_dirty": True}}  # older marker
    assert mixed_code({"prepare": unknown_edits, "report": unknown_edits}) is not None


def test_bench_with_earlier_files_merges_runs_dated_and_replaced_by_recipe(tmp_path):
    bench_tool = load_bench_tool()
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"created": "2026-01-02T03:04:05+00:00", "runs": [_bench_run("a.toml", 0.5), _bench_run("b.toml", 0.6)]}))
    earlier = bench_tool.load_runs(old)
    assert [run["measured"] for run in earlier] == ["2026-01-02T03:04:05+00:00"] * 2
    now = _bench_run(
        "b.toml", 0.7, measured="2026-02-03T00:00:00+00:00", load_average_1min={"before": 0.2, "after": 2.5},
        reused_stages=["prepare"],
    )
    runs = bench_tool.merged_runs(earlier, [now, _bench_run("c.toml", 0.8, measured="2026-02-03T00:00:00+00:00")])
    assert [Path(run["recipe"]).name for run in runs] == ["a.toml", "b.toml", "c.toml"] and runs[1] is now
    section = bench_tool.results_section(runs)
    assert "| a.toml | 2026-01-02 | 2 | — |" in section and "| b.toml | 2026-02-03 | 2 | 0.2 → 2.5 |" in section
    assert "| b.toml | builtin:tweets | teacher | 0.7000 |" in section and "0.6000" not in section
    assert "| 10.0 | 100 | prepare 1.0* |" in section and "| 10.0 | 100 | prepare 1.0 |" in section
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(UserError, match="not a bench file"):
        bench_tool.load_runs(tmp_path / "broken.json")


def test_bench_table_gives_int8_speed_ups_the_latency_split_and_the_flop_limit_where_measured():
    bench_tool = load_bench_tool()
    run = _bench_run("t.toml", 0.8)
    run["teacher"].update(latency_ms={"bs1_p50": 12.0}, int8={"latency_ms": {"bs1_p50": 6.0}})
    student = run["students"][0]
    student.update(
        name="student", latency_ms={"bs1_p50": 4.0}, int8={"latency_ms": {"bs1_p50": 1.5}}, int8_decision={"kept": True, "reason": "r"},
        latency_split_ms={"tokenise": 0.25, "run": 3.5, "post": 0.05}, flop_speedup=3.04,
    )
    cnn = {**student, "name": "cnn", "int8_decision": {"kept": False, "reason": "slower"}}
    del cnn["latency_split_ms"], cnn["flop_speedup"]
    run["students"].append(cnn)
    section = bench_tool.results_section([{**one, "measured": "2026-12-06T00:00:00+00:00"} for one in (run, _bench_run("old.toml", 0.7))])
    # 12 / 1.5 = 8.0x over the fp32 teacher, 6 / 1.5 = 4.0x over the int8 teacher
    assert "| student | 0.8000 | 0.8000 | 100.0% | 4.00 | 1.0× | 1.50 | 8.0× | 4.0× | 0.25 / 3.50 / 0.05 | 3.0× | 1.0 |" in section
    assert "| cnn | 0.8000 | 0.8000 | 100.0% | 4.00 | 1.0× | 1.50† | 8.0× | 4.0× | — | — | 1.0 |" in section
    assert "| t.toml | builtin:tweets | teacher | 0.8000 | 0.8000 | 100.0% | 12.00 | 1.0× | 6.00 | 2.0× | 1.0× | — | 1.0× |" in section
    assert "| old.toml | builtin:tweets | cnn | 0.7000 | 0.7000 | 100.0% | 2.00 | 1.0× | — | — | — | — | — | 1.0 |" in section


def test_graph_compare_times_both_exports_in_one_harness_and_divides_b_by_a(reported, tmp_path, monkeypatch):
    from distill.stages.report import Measured

    tool = load_tool("graph_compare")
    _, run, _ = reported
    dirs = {side: tmp_path / side / "runs" / run.dir.name for side in "AB"}
    for directory in dirs.values():
        shutil.copytree(run.dir, directory)
    calls = []

    def fake_measure(paths, examples, family, timing, served):
        assert not served  # both graphs at one thread count, no pass at each model's own
        calls.append((list(paths), timing))
        figures = lambda side: {  # B scores 0.1 higher at half A's latency
            "accuracy": 0.5 + (0.1 if side == "B" else 0.0),
            "latency_ms": {"bs1_p50": 1.0 if side == "B" else 2.0, "bs1_p50_low": 0.5, "bs1_p50_high": 3.0},
            "latency_split_ms": {"tokenise": 0.1, "run": 0.8 if side == "B" else 1.8, "post": 0.1},
            "size_mb": 1.0,
        }
        return {path: Measured([], figures("B" if dirs["B"] in path.parents else "A")) for path in paths}

    monkeypatch.setattr(tool, "measure", fake_measure)
    result = tool.compare_graphs(Run.from_dir(dirs["A"]), Run.from_dir(dirs["B"]), repeats=40, rounds=8)
    ((timed, timing),) = calls  # one interleaved harness for both exports, at batch size 1
    assert (timing.batch_sizes, timing.repeats, timing.rounds) == ([1], 40, 8) == ([1], result["repeats"], result["rounds"])
    assert len(timed) == 12 and sum(dirs["B"] in path.parents for path in timed) == 6
    assert [(row["model"], row["variant"]) for row in result["rows"]] == [
        (name, variant) for name in ("teacher", "student", "bow") for variant in ("fp32", "int8")
    ]
    for row in result["rows"]:
        assert row["latency_b_over_a"] == 0.5 and row["accuracy_b_minus_a"] == pytest.approx(0.1)
        manifest = json.loads((dirs["A"] / "onnx" / f"{row['model']}.json").read_text(encoding="utf-8"))
        assert row["A"]["nodes"] == manifest["graph"]["nodes"] == row["B"]["nodes"]  # an int8 copy shows its fp32 graph
    table = tool.markdown({**result, "created": "2026-12-06T00:00:00"}, ("A", "B"))
    assert "| teacher fp32 |" in table and "| 2.00 (0.50–3.00) / 1.00 (0.50–3.00) | 0.50 | 1.80 / 0.80 |" in table
    out = tmp_path / "graph.json"
    assert CliRunner().invoke(tool.main, [str(dirs["A"]), str(dirs["B"]), "--repeats", "4", "--out", str(out)]).exit_code == 0
    written = json.loads(out.read_text(encoding="utf-8"))["provenance"]
    assert written["timed_by"] == provenance.code()  # the harness's code beside each export's
    assert written["A"]["git_commit"] == json.loads((dirs["A"] / "done" / "export.json").read_text(encoding="utf-8"))["provenance"]["git_commit"]

    test_file = dirs["B"] / "data" / "test.jsonl"
    test_file.write_text(test_file.read_text(encoding="utf-8").replace('"text": "', '"text": "x', 1), encoding="utf-8")
    with pytest.raises(UserError, match="test splits differ"):
        tool.compare_graphs(Run.from_dir(dirs["A"]), Run.from_dir(dirs["B"]))


def test_each_model_is_also_timed_at_the_thread_count_it_serves_with(reported, tmp_path, monkeypatch):
    import distill.stages.report as report_stage

    _, run, report = reported
    for entry in (report["teacher"], *report["students"]):  # exported with one thread, reported with one
        served, latency = entry["served_bs1_ms"], entry["latency_ms"]
        assert served == {"threads": 1, **{key: latency[key] for key in report_stage.SERVED_KEYS}}
    for entry in [report["teacher"]["int8"], *report["students"], *(student["int8"] for student in report["students"])]:
        served = report["teacher"]["served_bs1_ms"]["bs1_p50"] / entry["served_bs1_ms"]["bs1_p50"]
        assert entry["served_speedup"] == pytest.approx(served) == pytest.approx(entry["speedup"])
    # a manifest that serves with two threads makes one more interleaved batch-size-1 pass for all
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(run.dir / "onnx", onnx_dir)
    manifests = [onnx_dir / "teacher.json", onnx_dir / "student.int8.json"]
    manifest = json.loads(manifests[0].read_text(encoding="utf-8"))
    manifests[0].write_text(json.dumps({**manifest, "threads": 2}), encoding="utf-8")
    calls = []

    def fake_latencies(predicts, texts, batch_sizes, warmup, repeats, rounds):
        calls.append((sorted(predicts), batch_sizes, repeats))
        return {name: {"bs1_p50": 1.0 + index, "bs1_p50_low": 0.5, "bs1_p50_high": 4.0} for index, name in enumerate(predicts)}

    monkeypatch.setattr(report_stage, "measure_latencies", fake_latencies)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # a manifest's count is capped at the machine's cores
    timing = report_stage.TimingSettings(1, [1, 32], 0, 4, 2)
    served = report_stage.served_latencies(manifests, run.data().test, timing, {})
    assert calls == [(sorted(map(str, manifests)), (1,), 4 * 32)]  # as many one-text calls as the bs1 column
    assert served[manifests[0]] == {"threads": 2, "bs1_p50": 1.0, "bs1_p50_low": 0.5, "bs1_p50_high": 4.0}
    assert served[manifests[1]]["threads"] == 1 and served[manifests[1]]["bs1_p50"] == 2.0
