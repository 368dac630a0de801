"""Bad input through the real command line: exit code 2, one `error:` line, no traceback."""

import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import tiny_rows, write_rows
from tiny_models import tiny_teacher_dir

GOOD_TASK = '[task]\ndataset = "data.csv"\n'

# case: (command, recipe body, data file bytes or None for the tiny CSV, what the error line says)
BAD_INPUT = {
    "unknown-key": ("run", GOOD_TASK + "[run]\nsede = 1\n", None, ["unknown key 'run.sede'", "did you mean 'seed'?"]),
    "unknown-nested-key": (
        "run",
        GOOD_TASK + "[stages.finetune]\nlr = 1e-4\nepoch = 2\n",
        None,
        ["unknown key 'stages.finetune.epoch'", "'epochs'"],
    ),
    "wrong-type": ("run", GOOD_TASK + "[run]\nseed = \"42\"\n", None, ["'run.seed' = '42'", "valid integer"]),
    "invalid-toml": ("run", GOOD_TASK + "[run\nseed = 1\n", None, ["not valid TOML", "bad.toml"]),
    "hidden-weight-across-widths": (
        "validate",
        GOOD_TASK + "[student]\nhidden = 192\nheads = 4\n[stages.task_adaptive]\nhidden_weight = 1.0\n",
        None,
        ["hidden_weight compares hidden states", "teacher's width is 384 and the student's 192", "[stages.task_adaptive] hidden_weight"],
    ),
    "missing-data-file": ("validate", '[task]\ndataset = "nope.csv"\n', None, ["data file not found", "nope.csv"]),
    "missing-column": (
        "validate",
        GOOD_TASK + 'text_column = "sentence"\n',
        None,
        ["column 'sentence' not found", "columns: text, pair, label", "text_column"],
    ),
    "empty-data-file": ("validate", GOOD_TASK, b"", ["data file has no rows", "data.csv"]),
    "non-utf8-data": (
        "validate",
        GOOD_TASK,
        b"text,label\nfine,a\nok,b\ncaf\xe9,b\n",
        ["not UTF-8", "line 4", "data.csv"],
    ),
    "single-class": (
        "validate",
        GOOD_TASK,
        b"text,label\na,pos\nb,pos\nc,pos\n",
        ["single class (pos)", "label_column"],
    ),
}

# the data problems again, through `distill run`, which must leave no half-written stage behind
DATA_PROBLEMS = ["missing-data-file", "missing-column", "empty-data-file", "non-utf8-data", "single-class"]


def write_case(folder: Path, case: str) -> Path:
    _, body, data, _ = BAD_INPUT[case]
    if data is None:
        write_rows(folder / "data.csv", tiny_rows())
    else:
        (folder / "data.csv").write_bytes(data)
    recipe = folder / "bad.toml"
    recipe.write_text(body + "\n[export]\nenabled = false\n[report]\nenabled = false\n", encoding="utf-8")
    return recipe


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, run_cli, case):
    command, _, _, expected = BAD_INPUT[case]
    recipe = write_case(tmp_path, case)
    result = run_cli(command, recipe.name)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_missing_recipe_file_is_one_error_line(tmp_path, run_cli):
    result = run_cli("validate", "missing.toml")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: recipe file not found: missing.toml; pass the path of a .toml recipe"
    ]


def error_line(err: str) -> str:
    """The single `error:` line, which must be the last thing on stderr (after any progress log)."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.mark.parametrize("case", DATA_PROBLEMS)
def test_failing_run_leaves_nothing_half_written(tmp_path, monkeypatch, distill_main, case):
    """The prepare stage itself meets the problem, as when the data file changes after the checks."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("distill.validate.check_recipe", lambda recipe, augment=False: [])
    recipe = write_case(tmp_path, case)
    code, out, err = distill_main("run", recipe.name)
    assert code == 2
    line = error_line(err)
    for text in BAD_INPUT[case][3]:
        assert text in line
    run_dir = tmp_path / "runs" / "bad"
    assert not (run_dir / ".prepare.partial").exists()
    assert not (run_dir / "data").exists()
    assert not (run_dir / "done" / "prepare.json").exists()
    assert [path.name for path in run_dir.iterdir() if path.name.startswith(".")] == []


EARLY_PROBLEMS = {
    "report-without-batch-size-1": (GOOD_TASK + "[report]\nbatch_sizes = [8, 32]\n", ["report.batch_sizes", "include 1"]),
    "relation-heads": (
        GOOD_TASK + "[stages.task_adaptive]\nrelation_heads = 7\n[export]\nenabled = false\n",
        ["relation_heads = 7 must divide", "[stages.task_adaptive] relation_heads"],
    ),
    "pos-swap-without-spacy": (
        GOOD_TASK + "[stages.data_distill]\naugment = { pos_swap = 0.1 }\n[export]\nenabled = false\n",
        ["needs spaCy", "augment.pos_swap"],
    ),
    "data": ('[task]\ndataset = "nope.csv"\n', ["data file not found"]),
}


@pytest.mark.parametrize("command", ["run", "augment", "label"])
@pytest.mark.parametrize("case", list(EARLY_PROBLEMS))
def test_run_augment_and_label_check_the_whole_recipe_before_any_stage(tmp_path, monkeypatch, distill_main, command, case):
    from distill.data.augment import ENGLISH_PIPELINES

    monkeypatch.chdir(tmp_path)
    for name in ENGLISH_PIPELINES:  # the spaCy pipeline lookup finds none
        monkeypatch.setitem(sys.modules, name, None)
    write_rows(tmp_path / "data.csv", tiny_rows())
    body, expected = EARLY_PROBLEMS[case]
    (tmp_path / "r.toml").write_text(body, encoding="utf-8")
    code, out, err = distill_main(command, "r.toml")
    assert code == 2
    assert err.strip().splitlines() == [error_line(err)]  # nothing ran, so nothing else was logged
    for text in expected:
        assert text in error_line(err)
    assert not (tmp_path / "runs").exists()  # no stage ran: no data/, no done/ marker


def test_augment_prepares_the_data_but_leaves_the_teacher_untrained(tmp_path, monkeypatch, distill_main):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "data.csv", tiny_rows())
    recipe = tmp_path / "aug.toml"
    recipe.write_text(
        GOOD_TASK + "[stages.finetune]\n[stages.data_distill]\naugment = { pos_swap = 0.0, multiplier = 2 }\n", encoding="utf-8"
    )
    code, out, err = distill_main("augment", recipe.name)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["train_texts"] == 40 and summary["augmented_texts"] > 0
    assert len(Path(summary["file"]).read_text(encoding="utf-8").splitlines()) == summary["augmented_texts"]
    run_dir = tmp_path / "runs" / "aug"
    assert sorted(path.name for path in (run_dir / "done").iterdir()) == ["prepare.json"]
    assert not (run_dir / "teacher").exists()


def test_teacher_path_that_does_not_exist(tmp_path, distill_main):
    write_rows(tmp_path / "data.csv", tiny_rows())
    recipe = tmp_path / "r.toml"
    recipe.write_text(GOOD_TASK + '[teacher]\nmodel = "models/none"\n', encoding="utf-8")
    code, out, err = distill_main("validate", recipe)
    assert code == 2
    line = error_line(err)
    assert "does not exist" in line and str(tmp_path / "models" / "none") in line and "[teacher] model" in line


def test_stages_option_naming_a_disabled_stage(tmp_path, monkeypatch, distill_main):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "data.csv", tiny_rows())
    recipe = tmp_path / "r.toml"
    recipe.write_text(GOOD_TASK + "[export]\nenabled = false\n[report]\nenabled = false\n", encoding="utf-8")
    code, out, err = distill_main("run", recipe.name, "--stages", "finetune")
    assert code == 2
    assert "--stages names finetune" in error_line(err) and "pick from: prepare" in error_line(err)


def test_validate_accepts_a_good_recipe(tmp_path, distill_main):
    write_rows(tmp_path / "data.csv", tiny_rows())
    recipe = tmp_path / "good.toml"
    recipe.write_text(GOOD_TASK + "[stages.finetune]\n", encoding="utf-8")
    code, out, err = distill_main("validate", recipe)
    assert code == 0, err
    assert "ok: data: 40/5/5 train/dev/test rows, classification task, outputs negative, neutral, positive" in out
    assert out.strip().splitlines()[-1].endswith("valid; stages: prepare, finetune, export, report")


def test_validate_checks_minilm_attention_heads(tmp_path, distill_main):
    write_rows(tmp_path / "data.csv", tiny_rows())
    teacher = tiny_teacher_dir(tmp_path / "teacher")  # width 32, 4 attention heads, 64 positions
    task = GOOD_TASK + "max_length = 64\n"
    recipe = tmp_path / "qk.toml"
    recipe.write_text(task + f'[teacher]\nmodel = "{teacher}"\n[stages.task_adaptive]\nrelations = ["qk", "vv"]\n')
    code, out, err = distill_main("validate", recipe)
    assert code == 0, err
    assert "ok: task_adaptive: 4 relation heads (qk, vv) for widths 32 and 32" in out
    code, out, err = distill_main("validate", recipe, "--set", "student.heads=2")
    line = error_line(err)
    assert code == 2 and "teacher has 4 heads and the student 2 (in [stages.task_adaptive] relations)" in line
    assert "set [student] heads = 4" in line
    code, out, err = distill_main("validate", recipe, "--set", "stages.task_adaptive.relation_heads=8")
    assert code == 2 and "relation_heads = 8" in error_line(err) and "remove relation_heads" in error_line(err)
    # TSD computes relations only with relation_weight > 0, and only then needs matching heads.
    tsd = f'[teacher]\nmodel = "{teacher}"\n[student]\nheads = 2\n[stages.task_specific]\nrelations = ["qk", "vv"]\n'
    recipe.write_text(task + tsd)
    code, out, err = distill_main("validate", recipe)
    assert code == 0 and "task_specific:" not in out, err
    code, out, err = distill_main("validate", recipe, "--set", "stages.task_specific.relation_weight=0.5")
    assert code == 2 and "(in [stages.task_specific] relations)" in error_line(err)


def test_run_set_overrides_a_key_and_the_run_records_it(tmp_path, monkeypatch, distill_main):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "data.csv", tiny_rows())
    recipe = tmp_path / "r.toml"
    recipe.write_text(GOOD_TASK + "[run]\nseed = 1\n[export]\nenabled = false\n[report]\nenabled = false\n", encoding="utf-8")
    code, out, err = distill_main("run", recipe.name, "--set", "run.seed=5", "--set", "task.split=[0.6, 0.2, 0.2]")
    assert code == 0, err
    recorded = tomllib.loads((tmp_path / "runs" / "r" / "recipe.toml").read_text(encoding="utf-8"))
    assert recorded["run"]["seed"] == 5 and recorded["task"]["split"] == [0.6, 0.2, 0.2]
    code, out, err = distill_main("run", recipe.name, "--set", "run.sede=5")
    assert code == 2 and "unknown key 'run.sede'" in error_line(err) and "--set run.sede=5" in error_line(err)


def test_validate_checks_the_recipe_with_its_overrides(tmp_path, distill_main):
    write_rows(tmp_path / "data.csv", tiny_rows())
    recipe = tmp_path / "good.toml"
    recipe.write_text(GOOD_TASK + "[stages.finetune]\n", encoding="utf-8")
    code, out, err = distill_main("validate", recipe, "--set", "export.enabled=false")
    assert code == 0, err
    assert out.strip().splitlines()[-1].endswith("valid; stages: prepare, finetune, report")
    code, out, err = distill_main("validate", recipe, "--set", "task.label_column=nope")
    assert code == 2 and "nope" in error_line(err)


def test_validate_finds_the_english_pipeline_for_pos_swap(tmp_path, monkeypatch, distill_main):
    from distill.data.augment import ENGLISH_PIPELINES

    write_rows(tmp_path / "data.csv", tiny_rows())
    recipe = tmp_path / "pos.toml"
    recipe.write_text(GOOD_TASK + "[stages.data_distill]\naugment = { pos_swap = 0.1 }\n", encoding="utf-8")
    installed = [name for name in ENGLISH_PIPELINES if importlib.util.find_spec(name)]
    if installed:  # the spacy extra ships the pipeline under its own module name
        code, out, err = distill_main("validate", recipe)
        assert code == 0, err
        assert f"ok: English POS tags from spaCy's {installed[0]}" in out
    for name in ENGLISH_PIPELINES:
        monkeypatch.setitem(sys.modules, name, None)
    code, out, err = distill_main("validate", recipe)
    assert code == 2
    assert "needs spaCy" in error_line(err) and "augment.pos_swap" in error_line(err) and "distill[spacy]" in error_line(err)


@pytest.mark.parametrize("command", ["augment", "label"])
def test_augment_and_label_take_overrides(tmp_path, distill_main, command):
    write_rows(tmp_path / "data.csv", tiny_rows())
    recipe = tmp_path / "good.toml"
    recipe.write_text(GOOD_TASK, encoding="utf-8")
    code, out, err = distill_main(command, recipe, "--set", "stages.data_distill.augment.unk=2")
    assert code == 2 and "stages.data_distill.augment.unk" in error_line(err)


def test_validate_refuses_what_the_task_family_rules_out(tmp_path, distill_main):
    write_rows(tmp_path / "data.csv", [{**row, "label": str(i / 10)} for i, row in enumerate(tiny_rows())])
    recipe = tmp_path / "scores.toml"
    recipe.write_text(GOOD_TASK + 'type = "regression"\n[report]\nseeds = [1, 2]\n', encoding="utf-8")
    code, _, err = distill_main("validate", recipe)
    assert code == 2 and "[report] seeds repeats students of single-label tasks only, not regression" in error_line(err)
    recipe.write_text(GOOD_TASK + 'type = "regression"\ntext_pair_column = "pair"\n[stages.data_distill]\n', encoding="utf-8")
    code, _, err = distill_main("validate", recipe)
    assert code == 2 and "data distillation trains single-text students, but the task has text pairs" in error_line(err)
    recipe.write_text(GOOD_TASK + 'type = "regression"\n', encoding="utf-8")
    code, out, err = distill_main("validate", recipe)
    assert code == 0, err
    assert "regression task, outputs score" in out and "decisions: the output score; primary metric pearson" in out


@pytest.mark.parametrize(
    ("raised", "code", "says"),
    [
        (OSError(28, "No space left on device", "runs/r/teacher"), 1, "cannot read or write a file (runs/r/teacher): No space left on device"),
        (KeyboardInterrupt(), 130, "interrupted; run the same command again to resume"),
    ],
)
def test_a_failing_disk_exits_1_and_an_interrupt_130_each_with_one_line(raised, code, says, tmp_path, monkeypatch, distill_main):
    import distill.recipe

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(distill.recipe, "load_recipe", fail)
    recipe = tmp_path / "r.toml"
    recipe.write_text("", encoding="utf-8")
    exit_code, _, err = distill_main("validate", recipe)
    assert exit_code == code and err.strip().splitlines() == [err.strip()] and says in err
