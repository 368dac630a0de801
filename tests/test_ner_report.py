"""The report's pieces for token classification (NER): the paired bootstrap over sentences (corpus
entity F1 of each resample, by hand and against seqeval), McNemar on sentences wholly right, and
figures per entity type in report.json and its rendered views."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
from seqeval.metrics import f1_score

from distill.report.render import render_html, render_markdown
from distill.report.schema import validate_report
from distill.tasks import family

NER = family("token_classification")

# Four sentences; the entities each model gets right are counted in the comments.
GOLD = [
    ("B-PER", "I-PER", "O", "B-LOC"),  # PER(0,2) LOC(3,4)
    ("B-LOC", "I-LOC", "O"),  # LOC(0,2)
    ("O", "O", "O"),  # none
    ("B-PER", "O", "B-PER"),  # PER(0,1) PER(2,3)
]
MODEL_A = [
    ("B-PER", "I-PER", "O", "B-LOC"),  # both right: right 2, predicted 2, gold 2
    ("B-LOC", "O", "O"),  # LOC(0,1), wrong: 0, 1, 1
    ("O", "O", "O"),  # 0, 0, 0
    ("B-PER", "O", "O"),  # PER(0,1) right: 1, 1, 2
]
MODEL_B = [
    ("B-PER", "O", "O", "B-LOC"),  # PER(0,1) wrong, LOC right: 1, 2, 2
    ("B-LOC", "I-LOC", "O"),  # right: 1, 1, 1
    ("O", "B-PER", "O"),  # a false PER: 0, 1, 0
    ("B-PER", "O", "B-PER"),  # both right: 2, 2, 2
]


def test_paired_rows_are_each_sentences_entity_counts():
    assert NER.paired_rows(GOLD, MODEL_A).tolist() == [[2, 2, 2], [0, 1, 1], [0, 0, 0], [1, 1, 2]]
    assert NER.paired_rows(GOLD, MODEL_B).tolist() == [[1, 2, 2], [1, 1, 1], [0, 1, 0], [2, 2, 2]]


def test_a_resamples_f1_difference_sums_its_sentences_counts_by_hand():
    rows_a, rows_b = NER.paired_rows(GOLD, MODEL_A), NER.paired_rows(GOLD, MODEL_B)
    # all four: a 3 right of 4 predicted and 5 gold, F1 6/9; b 4 right of 6 predicted, F1 8/11
    assert NER.statistic(rows_a) == pytest.approx(6 / 9)
    assert NER.statistic(rows_b) == pytest.approx(8 / 11)
    # the resample 0, 0, 2, 3: a right 2+2+0+1 = 5, predicted 5, gold 2+2+0+2 = 6: F1 10/11;
    # b right 1+1+0+2 = 4, predicted 2+2+1+2 = 7, gold 6: F1 8/13
    draw = np.array([[0, 0, 2, 3]])
    difference = NER.statistic(rows_a[draw]) - NER.statistic(rows_b[draw])
    assert difference == pytest.approx([10 / 11 - 8 / 13])
    # not the mean of per-sentence F1 (1, 1, 0, 2/3 for a), which would give a 2/3
    assert NER.statistic(rows_a[draw])[0] != pytest.approx(np.mean([1, 1, 0, 2 / 3]))
    assert NER.paired(GOLD, MODEL_A, MODEL_B, seed=0)["diff"] == pytest.approx(6 / 9 - 8 / 11)


def test_the_interval_is_the_percentiles_of_seqeval_f1_differences_on_the_same_resamples():
    rng = random.Random(4)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [tuple(rng.choice(tags) for _ in range(rng.randint(1, 8))) for _ in range(30)]
    a = [tuple(tag if rng.random() < 0.8 else rng.choice(tags) for tag in sentence) for sentence in gold]
    b = [tuple(tag if rng.random() < 0.6 else rng.choice(tags) for tag in sentence) for sentence in gold]
    seed, resamples = 7, 1000
    result = NER.paired(gold, a, b, seed=seed)

    def f1(reference: list, predicted: list, rows: np.ndarray) -> float:
        return f1_score([list(reference[i]) for i in rows], [list(predicted[i]) for i in rows], zero_division=0)

    everything = np.arange(len(gold))
    assert result["diff"] == pytest.approx(f1(gold, a, everything) - f1(gold, b, everything))
    draws = np.random.default_rng(seed).integers(0, len(gold), size=(resamples, len(gold)))  # as the bootstrap draws
    replicates = [f1(gold, a, rows) - f1(gold, b, rows) for rows in draws]
    assert [result["low"], result["high"]] == pytest.approx(np.quantile(replicates, [0.025, 0.975]))


def test_mcnemar_counts_sentences_whose_entities_are_all_right():
    assert NER.exactly_right(GOLD, MODEL_A) == [True, False, True, False]
    assert NER.exactly_right(GOLD, MODEL_B) == [False, True, False, True]
    # a and b each alone right on two sentences: the two-sided exact binomial p of 2 of 4 is 1
    assert NER.paired(GOLD, MODEL_A, MODEL_B, seed=0)["p_value"] == 1.0
    # gold itself against a: right alone on sentences 1 and 3, p = 2 * 0.5**2
    perfect = NER.paired(GOLD, GOLD, MODEL_A, seed=0)
    assert (perfect["p_value"], perfect["diff"]) == (pytest.approx(0.5), pytest.approx(1 - 6 / 9))
    # a sentence tagged differently but read as the same entities is right: I- after O starts an entity
    assert NER.exactly_right([("O", "B-PER")], [("O", "I-PER")]) == [True]


def test_report_details_are_the_figures_per_type_by_hand():
    details = NER.report_details(NER.score(GOLD, MODEL_B, ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]))
    # LOC: 2 right of 2 predicted, 2 gold; PER: 2 right of 4 predicted (one wrong span, one false), 3 gold
    assert details == {
        "per_type": {
            "LOC": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2},
            "PER": {"precision": 0.5, "recall": pytest.approx(2 / 3), "f1": pytest.approx(4 / 7), "support": 3},
        }
    }


# --------------------------------------------------------------------------- report.json and its views


def _latency(bs1: float) -> dict:
    return {"bs1_p50": bs1, "bs1_p95": bs1 * 1.2}


def _per_type(per: float, loc: float) -> dict:
    return {
        "PER": {"precision": per, "recall": per, "f1": per, "support": 40},
        "LOC": {"precision": loc, "recall": loc, "f1": loc, "support": 1234},
    }


@pytest.fixture
def ner_report() -> dict:
    figures = {"entity_f1": 0.8, "entity_precision": 0.82, "entity_recall": 0.78}
    student = {
        "name": "student", "kind": "transformer", **figures, "per_type": _per_type(0.7, 0.85),
        "retention": 0.9, "params": 100, "size_mb": 1.0, "onnx": "onnx/student.onnx", "onnx_int8": "onnx/student.int8.onnx",
        "latency_ms": _latency(1.0), "throughput_per_s": 900.0, "speedup": 3.0, "onnx_parity_max_abs_diff": 1e-6,
        "vs_teacher": {"diff": -0.05, "low": -0.09, "high": -0.01, "p_value": 0.02},
        "int8": {**figures, "per_type": {"PER": _per_type(0.65, 0.0)["PER"]}, "size_mb": 0.3, "latency_ms": _latency(0.8)},
    }  # fmt: skip
    return {
        "dataset": "builtin:pd98-ner",
        "task": {
            "type": "token_classification", "metrics": list(NER.metrics), "rows": NER.rows_name,
            "agreement": NER.agreement_means, "right": NER.right_means,
        },
        "test_size": 2000,
        "hardware": {"cpu": "Test CPU", "logical_cores": 2, "threads": 2},
        "teacher": {
            "entity_f1": 0.88, "entity_precision": 0.9, "entity_recall": 0.86, "per_type": _per_type(0.8, 0.9),
            "params": 1000, "size_mb": 4.0, "latency_ms": _latency(3.0), "throughput_per_s": 300.0,
        },
        "students": [student],
        "baseline": {
            "name": "crf", "entity_f1": 0.6, "entity_precision": 0.7, "entity_recall": 0.5, "per_type": _per_type(0.5, 0.65),
        },
        "provenance": {"package_version": "0.1.0", "git_commit": None, "git_dirty": None, "code_tree": None, "recipe": {}},
    }  # fmt: skip


def _section_table(markdown: str, heading: str) -> list[list[str]]:
    """Cells of the table under `heading` (header row first, the |---| rule skipped)."""
    lines = markdown.split(f"## {heading}\n", 1)[1].splitlines()
    table = [line for line in lines[: lines.index("", 2)] if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table]


def test_per_type_f1_of_every_model_and_the_crf_baseline_is_one_table(ner_report):
    validate_report(ner_report)
    markdown = render_markdown(ner_report)
    assert _section_table(markdown, "F1 per entity type") == [
        ["model", "LOC (n=1,234)", "PER (n=40)"],
        ["teacher", "0.9000", "0.8000"],
        ["student", "0.8500", "0.7000"],
        ["student int8", "—", "0.6500"],
        ["baseline crf", "0.6500", "0.5000"],
    ]
    assert "Baseline crf: entity F1 0.6000, entity precision 0.7000, entity recall 0.5000." in markdown
    assert "keeps 90.0% of the teacher's entity F1" in markdown and "(2000 test sentences)" in markdown
    page = render_html(ner_report, b"png")
    assert "<h2>F1 per entity type</h2>" in page and "<tr><td>baseline crf</td><td>0.6500</td><td>0.5000</td></tr>" in page


def test_the_paired_tests_say_what_they_resample_and_what_mcnemar_counts(ner_report):
    markdown = render_markdown(ner_report)
    assert "a bootstrap interval resamples the test sentences with replacement" in markdown
    assert "computes each resample's entity F1 afresh from its sentences" in markdown
    mcnemar = "exact McNemar p compares the test sentences one model gets right and the other does not"
    assert f"{mcnemar} ({NER.right_means})" in markdown
    assert (
        "student vs the teacher: entity F1 -5.0 points (bootstrap interval -9.0 to -1.0), exact McNemar p = 0.02; significant"
        in markdown
    )


def test_a_task_without_rows_wholly_right_states_no_mcnemar(ner_report):
    ner_report["task"].pop("right")  # as for regression, whose correlations have no exact test
    line = next(line for line in render_markdown(ner_report).splitlines() if "How to read the tests" in line)
    assert "McNemar" not in line and line.endswith("computes each resample's entity F1 afresh from its sentences")


def test_a_report_without_figures_per_type_has_no_such_section(ner_report):
    for model in (ner_report["teacher"], ner_report["baseline"], *ner_report["students"], ner_report["students"][0]["int8"]):
        model.pop("per_type")
    validate_report(ner_report)
    assert "F1 per entity type" not in render_markdown(ner_report)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda r: r["teacher"]["per_type"]["PER"].update(f1=1.5), "report.teacher.per_type.PER.f1"),
        (lambda r: r["students"][0]["int8"]["per_type"]["PER"].pop("support"), "report.students[0].int8.per_type.PER"),
        (lambda r: r["baseline"]["per_type"]["LOC"].update(support=-1), "report.baseline.per_type.LOC.support"),
    ],
)
def test_the_schema_checks_figures_per_type(ner_report, mutate, where):
    broken = copy.deepcopy(ner_report)
    mutate(broken)
    with pytest.raises(ValueError, match=where.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        validate_report(broken)
