"""`distill run` on a tiny CSV recipe that only prepares the data: files, resume, --fresh, --out."""

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

import distill
from distill import provenance
from distill.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent

TASK = '[task]\ndataset = "tiny.csv"\n'


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_csv):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def done_record(run_dir):
    return json.loads((run_dir / "done" / "prepare.json").read_text(encoding="utf-8"))


def log_lines(run_dir, text):
    return [line for line in (run_dir / "run.log").read_text(encoding="utf-8").splitlines() if text in line]


def test_run_writes_the_prepared_data_and_the_run_files(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK + "[run]\nseed = 3\n")
    code, out, err = distill_main("run", recipe.name)
    assert code == 0, err
    run_dir = workdir / "runs" / "tiny"
    assert out.strip() == f"run directory: {run_dir.relative_to(workdir)}"

    data = run_dir / "data"
    rows = {name: (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() for name in ("train", "dev", "test")}
    assert {name: len(lines) for name, lines in rows.items()} == {"train": 40, "dev": 5, "test": 5}
    first = json.loads(rows["train"][0])
    assert set(first) == {"text", "label"} and first["label"] in ("negative", "neutral", "positive")
    texts = [json.loads(line)["text"] for lines in rows.values() for line in lines]
    assert len(set(texts)) == 50

    assert json.loads((data / "labels.json").read_text(encoding="utf-8")) == ["negative", "neutral", "positive"]
    stats = json.loads((data / "stats.json").read_text(encoding="utf-8"))
    assert stats["sizes"] == {"train": 40, "dev": 5, "test": 5}
    assert stats["cleaning"]["all"]["read"] == 50

    resolved = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    assert resolved["run"]["seed"] == 3
    assert resolved["task"]["dataset"] == str(workdir.resolve() / "tiny.csv")
    assert resolved["export"]["enabled"] is False

    done = done_record(run_dir)
    assert done["stage"] == "prepare"
    assert done["metrics"] == {"train": 40, "dev": 5, "test": 5, "labels": 3}
    assert {"config_hash", "seconds", "finished"} <= set(done)
    assert log_lines(run_dir, "[prepare] starting") and log_lines(run_dir, "[prepare] done in")
    assert sorted(path.name for path in run_dir.iterdir()) == ["data", "done", "recipe.toml", "run.log"]


def test_done_marker_records_the_code_and_the_resolved_recipe(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK)
    code, _, err = distill_main("run", recipe.name, "--set", "run.seed=9")
    assert code == 0, err
    run_dir = workdir / "runs" / "tiny"
    made = done_record(run_dir)["provenance"]
    resolved = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    assert made == {**provenance.code(), "recipe": resolved} and made["recipe"]["run"]["seed"] == 9
    assert made["package_version"] == distill.__version__
    if (REPO / ".git").exists():  # a git checkout, not an installed copy
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

        assert made["git_commit"] == git("rev-parse", "HEAD") and re.fullmatch("[0-9a-f]{40}", made["git_commit"])
        assert made["code_tree"] == git("rev-parse", "HEAD:distill") and isinstance(made["git_dirty"], bool)


def test_reusing_a_stage_made_by_other_code_warns_once_naming_both_commits(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK)
    assert distill_main("run", recipe.name)[0] == 0
    run_dir = workdir / "runs" / "tiny"
    code, _, err = distill_main("run", recipe.name)
    assert code == 0 and "WARNING" not in err  # the same code: reused quietly
    marker = done_record(run_dir)
    marker["provenance"].update(git_commit="f" * 40, code_tree="e" * 40)
    (run_dir / "done" / "prepare.json").write_text(json.dumps(marker), encoding="utf-8")
    code, _, err = distill_main("run", recipe.name)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    now = provenance.code()["git_commit"] or "unknown"
    assert len(warnings) == 1 and "[prepare]" in warnings[0] and "f" * 40 in warnings[0] and now in warnings[0]
    assert "--fresh" in warnings[0] and "[prepare] done already, skipped" in err  # still reused
    assert len(log_lines(run_dir, "WARNING: [prepare]")) == 1
    code, _, err = distill_main("run", recipe.name, "--fresh")
    assert code == 0 and "WARNING" not in err
    assert done_record(run_dir)["provenance"]["git_commit"] == provenance.code()["git_commit"]


def test_second_run_skips_prepare(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK)
    assert distill_main("run", recipe.name)[0] == 0
    run_dir = workdir / "runs" / "tiny"
    before = done_record(run_dir)
    train = (run_dir / "data" / "train.jsonl").read_bytes()
    code, _, err = distill_main("run", recipe.name)
    assert code == 0
    assert "[prepare] done already, skipped" in err
    assert len(log_lines(run_dir, "[prepare] done already, skipped")) == 1
    assert len(log_lines(run_dir, "[prepare] starting")) == 1
    assert done_record(run_dir) == before
    assert (run_dir / "data" / "train.jsonl").read_bytes() == train


def test_changing_the_seed_reruns_prepare(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK)
    assert distill_main("run", recipe.name)[0] == 0
    run_dir = workdir / "runs" / "tiny"
    before = done_record(run_dir)
    train = (run_dir / "data" / "train.jsonl").read_bytes()
    make_recipe(TASK + "[run]\nseed = 1234\n")
    assert distill_main("run", recipe.name)[0] == 0
    assert done_record(run_dir)["config_hash"] != before["config_hash"]
    assert len(log_lines(run_dir, "[prepare] starting")) == 2
    assert not log_lines(run_dir, "skipped")
    assert (run_dir / "data" / "train.jsonl").read_bytes() != train
    assert tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))["run"]["seed"] == 1234


def test_fresh_starts_over(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK)
    assert distill_main("run", recipe.name)[0] == 0
    run_dir = workdir / "runs" / "tiny"
    (run_dir / "leftover.txt").write_text("from an earlier run", encoding="utf-8")
    code, _, err = distill_main("run", recipe.name, "--fresh")
    assert code == 0
    assert "skipped" not in err
    assert not (run_dir / "leftover.txt").exists()
    assert len(log_lines(run_dir, "[prepare] starting")) == 1
    assert (run_dir / "done" / "prepare.json").is_file()


def test_out_puts_the_run_under_the_given_folder(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK + '[run]\nname = "named"\n')
    code, out, _ = distill_main("run", recipe.name, "--out", "elsewhere/runs")
    assert code == 0
    run_dir = workdir / "elsewhere" / "runs" / "named"
    assert (run_dir / "done" / "prepare.json").is_file()
    assert (run_dir / "data" / "train.jsonl").is_file()
    assert not (workdir / "runs").exists()
    assert out.strip() == "run directory: elsewhere/runs/named"


def test_stages_option_runs_only_the_named_stage(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK)
    code, _, err = distill_main("run", recipe.name, "--stages", "prepare")
    assert code == 0, err
    assert (workdir / "runs" / "tiny" / "done" / "prepare.json").is_file()


def test_run_from_another_folder_finds_the_data_next_to_the_recipe(workdir, make_recipe, distill_main, monkeypatch):
    recipe = make_recipe(TASK)
    (workdir / "sub").mkdir()
    monkeypatch.chdir(workdir / "sub")
    code, _, err = distill_main("run", f"../{recipe.name}")
    assert code == 0, err
    assert (workdir / "sub" / "runs" / "tiny" / "data" / "train.jsonl").is_file()


def test_recipe_in_the_run_dir_loads_again(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK)
    assert distill_main("run", recipe.name)[0] == 0
    again = load_recipe(workdir / "runs" / "tiny" / "recipe.toml")
    original = load_recipe(recipe)
    for section in ("task", "teacher", "student", "stages", "export", "report"):
        assert getattr(again, section) == getattr(original, section)
    assert again.run.seed == original.run.seed


def test_recipe_in_the_run_dir_keeps_the_run_name(workdir, make_recipe, distill_main):
    recipe = make_recipe(TASK)
    assert distill_main("run", recipe.name)[0] == 0
    assert load_recipe(workdir / "runs" / "tiny" / "recipe.toml").run_name() == "tiny"


def test_a_disk_write_error_is_one_line_and_the_run_resumes(workdir, make_recipe, distill_main, monkeypatch):
    import errno

    import distill.stages.prepare as prepare

    def full_disk(examples, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    recipe = make_recipe(TASK)
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "write_split", full_disk)
        code, _, err = distill_main("run", recipe.name)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err
    run_dir = workdir / "runs" / "tiny"
    assert not (run_dir / "done" / "prepare.json").exists() and not (run_dir / "data").exists()

    code, _, err = distill_main("run", recipe.name)
    assert code == 0, err
    assert (run_dir / "done" / "prepare.json").is_file()


def _hashes(**stages) -> dict[str, str]:
    from distill.pipeline import stage_hashes
    from distill.recipe import parse_recipe

    tables = {"finetune": {"lr": 1e-4}, "task_specific": {"lr": 1e-4}, "data_distill": {"labels": "soft"}}
    for name, settings in stages.items():
        tables[name] = {**tables.get(name, {}), **settings}
    return stage_hashes(parse_recipe({"task": {"dataset": "tiny.csv"}, "stages": tables}))


def test_a_stage_reruns_with_every_stage_after_it_except_data_distillation_which_reads_only_the_teacher():
    base = _hashes()
    assert list(base) == ["prepare", "finetune", "task_specific", "data_distill", "export", "report"]
    changed = {name for name, digest in _hashes(task_specific={"lr": 2e-4}).items() if digest != base[name]}
    assert changed == {"task_specific", "export", "report"}  # the word-level students are not retrained
    changed = {name for name, digest in _hashes(data_distill={"labels": "hard"}).items() if digest != base[name]}
    assert changed == {"data_distill", "export", "report"}
    changed = {name for name, digest in _hashes(finetune={"lr": 3e-4}).items() if digest != base[name]}
    assert changed == {"finetune", "task_specific", "data_distill", "export", "report"}  # a new teacher: all


def test_task_adaptive_distillation_reruns_on_augmentation_settings_only_when_it_reads_the_augmented_texts():
    tables = {"task_specific": {}, "data_distill": {}}
    plain = {"task_adaptive": {"augment": False}, **tables}
    more = {"augment": {"multiplier": 4}}
    base = _hashes(**plain)
    changed = {name for name, digest in _hashes(**{**plain, "data_distill": more}).items() if digest != base[name]}
    assert changed == {"data_distill", "export", "report"}  # TAD and TSD are kept
    reading = {"task_adaptive": {"augment": True}, **tables}
    base = _hashes(**reading)
    changed = {name for name, digest in _hashes(**{**reading, "data_distill": more}).items() if digest != base[name]}
    assert changed == {"task_adaptive", "task_specific", "data_distill", "export", "report"}


def test_a_teacher_ensemble_refits_the_teacher_but_keeps_the_pretrained_encoder():
    from distill.pipeline import stage_hashes
    from distill.recipe import parse_recipe

    def hashes(teacher: dict) -> dict[str, str]:
        stages = {"pretrain": {"max_steps": 10}, "finetune": {}, "task_specific": {}}
        return stage_hashes(parse_recipe({"task": {"dataset": "tiny.csv"}, "teacher": teacher, "stages": stages}))

    base = hashes({})
    changed = {name for name, digest in hashes({"ensemble": {"seeds": 3}}).items() if digest != base[name]}
    assert changed == {"finetune", "task_specific", "export", "report"}
    changed = {name for name, digest in hashes({"pooling": "mean"}).items() if digest != base[name]}
    assert "pretrain" in changed  # other teacher keys still count for it
