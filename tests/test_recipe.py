import re
import tomllib
from pathlib import Path

import pytest

from distill.errors import UserError
from distill.recipe import STAGE_ORDER, DataFiles, Recipe, load_recipe, override_recipe, parse_recipe

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "recipes").glob("*.toml"))
TRAINING_STAGES = [name for name in STAGE_ORDER if name not in ("prepare", "export", "report")]


def error_of(data: dict) -> str:
    with pytest.raises(UserError) as info:
        parse_recipe(data, "r.toml")
    return info.value.line()


# --------------------------------------------------------------------------- shipped recipes


@pytest.mark.parametrize(
    "path",
    SHIPPED or [pytest.param(None, marks=pytest.mark.skip(reason="recipes/ holds no recipe yet"))],
    ids=lambda path: path.name if path else "none",
)
def test_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.enabled_stages()[0] == "prepare"
    assert parse_recipe(tomllib.loads(recipe.to_toml())).model_dump() == recipe.model_dump()


def test_tiny_recipe_is_shipped_with_the_others():
    if not SHIPPED:
        pytest.skip("recipes/ holds no recipe yet")
    assert REPO / "recipes" / "tiny.toml" in SHIPPED


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "data, dotted, close",
    [
        ({"rnu": {}}, "rnu", "run"),
        ({"run": {"sede": 1}}, "run.sede", "seed"),
        ({"task": {"text_colum": "t"}}, "task.text_colum", "text_column"),
        ({"task": {"dataset": {"train": "a.csv", "tset": "b.csv"}}}, "task.dataset.tset", "test"),
        ({"stages": {"finetun": {}}}, "stages.finetun", "finetune"),
        ({"stages": {"finetune": {"epoch": 2}}}, "stages.finetune.epoch", "epochs"),
        ({"stages": {"task_specific": {"temprature": 2.0}}}, "stages.task_specific.temprature", "temperature"),
        ({"stages": {"data_distill": {"augment": {"unkk": 0.1}}}}, "stages.data_distill.augment.unkk", "unk"),
        ({"export": {"quantise": "int8"}}, "export.quantise", "quantize"),
    ],
)
def test_unknown_key_names_dotted_path_and_close_match(data, dotted, close):
    line = error_of(data)
    assert f"'{dotted}'" in line
    assert f"'{close}'" in line
    assert "r.toml" in line


def test_unknown_key_without_close_match_lists_known_keys():
    line = error_of({"report": {"zzzzzz": 1}})
    assert "'report.zzzzzz'" in line
    assert "batch_sizes" in line and "repeats" in line


@pytest.mark.parametrize("data, dotted", [({"Run": {}}, "Run"), ({"task": {"Text_column": "t"}}, "task.Text_column")])
def test_unknown_capitalised_key_is_named(data, dotted):
    assert f"unknown key '{dotted}'" in error_of(data)


# --------------------------------------------------------------------------- wrong types and values


@pytest.mark.parametrize(
    "data, key, value, expectation",
    [
        ({"run": {"seed": "42"}}, "run.seed", "'42'", "integer"),
        ({"run": {"seed": 4.5}}, "run.seed", "4.5", "integer"),
        ({"task": {"max_length": "long"}}, "task.max_length", "'long'", "integer"),
        ({"task": {"dataset": 3}}, "task.dataset", "3", "string"),
        ({"teacher": {"pooling": "max"}}, "teacher.pooling", "'max'", "'cls'"),
        ({"stages": {"finetune": {"lr": "fast"}}}, "stages.finetune.lr", "'fast'", "number"),
        ({"stages": {"finetune": {"enabled": "no"}}}, "stages.finetune.enabled", "'no'", "boolean"),
        ({"report": {"batch_sizes": [1, "x"]}}, "report.batch_sizes.1", "'x'", "integer"),
        ({"report": {"batch_sizes": [8, 32]}}, "report.batch_sizes", "[8, 32]", "include 1"),
        ({"report": {"batch_sizes": [1, 0]}}, "report.batch_sizes", "[1, 0]", "must be positive"),
        ({"task": {"split": [0.5, 0.5]}}, "task.split", "[0.5, 0.5]", "three positive fractions"),
        ({"run": {"device": "tpu"}}, "run.device", "'tpu'", "auto, cpu, cuda"),
        ({"task": {"max_length": 4}}, "task.max_length", "4", "greater than or equal to 8"),
        (
            {"stages": {"data_distill": {"augment": {"n_sampling_span": [3, 2]}}}},
            "stages.data_distill.augment.n_sampling_span",
            "[3, 2]",
            "1 <= min <= max",
        ),
        (
            {"stages": {"data_distill": {"augment": {"n_sampling_span": [0, 5]}}}},
            "stages.data_distill.augment.n_sampling_span",
            "[0, 5]",
            "1 <= min <= max",
        ),
        (
            {"stages": {"data_distill": {"augment": {"pos_swap_sampling": "zipf"}}}},
            "stages.data_distill.augment.pos_swap_sampling",
            "'zipf'",
            "'frequency' or 'uniform'",
        ),
    ],
)
def test_wrong_value_names_key_value_and_expectation(data, key, value, expectation):
    line = error_of(data)
    assert f"'{key}' = {value}" in line
    assert expectation in line


def test_ints_are_accepted_where_floats_are_expected():
    assert parse_recipe({"stages": {"finetune": {"epochs": 2}}}).stages.finetune.epochs == 2.0


@pytest.mark.parametrize("name", TRAINING_STAGES)
def test_max_grad_norm_zero_is_accepted_and_reaches_the_loop_as_no_clipping(name):
    from distill.stages.common import train_config

    section = getattr(parse_recipe({"stages": {name: {"max_grad_norm": 0}}}).stages, name)
    assert train_config(section, seed=1).max_grad_norm == 0  # the loop clips only when > 0
    assert "greater than or equal to 0" in error_of({"stages": {name: {"max_grad_norm": -1.0}}})


def test_augment_sampling_keys_default_to_tang_et_al_and_change_the_data_distill_hash():
    from distill.pipeline import stage_hashes

    def recipe(**augment):
        return parse_recipe({"task": {"dataset": "tiny.csv"}, "stages": {"data_distill": {"augment": augment}}})

    augment = recipe().stages.data_distill.augment
    assert augment.n_sampling_span == [1, 5] and augment.pos_swap_sampling == "frequency"
    # the augmented-texts cache key and the stage hash both hash the table's model_dump
    assert {"n_sampling_span", "pos_swap_sampling"} <= set(augment.model_dump(mode="json"))
    base = stage_hashes(recipe())["data_distill"]
    assert stage_hashes(recipe(n_sampling_span=[1, 3]))["data_distill"] != base
    assert stage_hashes(recipe(pos_swap_sampling="uniform"))["data_distill"] != base
    assert stage_hashes(recipe(n_sampling_span=[1, 5], pos_swap_sampling="frequency"))["data_distill"] == base


def test_a_teacher_seed_changes_the_fine_tuning_but_not_the_split_or_the_pretraining():
    from distill.models.ensemble import planned_members
    from distill.pipeline import stage_hashes

    def recipe(**teacher):
        stages = {"pretrain": {"max_steps": 2}, "finetune": {}}
        return parse_recipe({"run": {"seed": 42}, "task": {"dataset": "tiny.csv"}, "teacher": teacher, "stages": stages})

    base, seeded = stage_hashes(recipe()), stage_hashes(recipe(seed=7))
    assert recipe().teacher_seed() == 42 and recipe(seed=7).teacher_seed() == 7
    assert seeded["prepare"] == base["prepare"] and seeded["pretrain"] == base["pretrain"]
    assert seeded["finetune"] != base["finetune"]
    assert stage_hashes(recipe(seed=None)) == base  # the default leaves earlier runs' hashes alone
    members = planned_members(recipe(seed=7, ensemble={"seeds": 3}))
    assert [member.seed for member in members] == [7, 8, 9]



def test_the_fused_graph_is_the_default_and_runs_exported_before_it_export_again():
    from distill.pipeline import stage_hashes

    def recipe(**export):
        return parse_recipe({"task": {"dataset": "tiny.csv"}, "export": export})

    assert recipe().export.graph == "fused"
    # runs made before the key existed exported the plain graph: a recipe saying so keeps their hashes
    assert "graph" not in recipe(graph="plain").export.model_dump(mode="json")
    assert recipe().export.model_dump(mode="json")["graph"] == "fused"
    plain, fused = stage_hashes(recipe(graph="plain")), stage_hashes(recipe())
    assert plain["export"] != fused["export"]
    assert plain["prepare"] == fused["prepare"]  # the stages before the export are not made again

# --------------------------------------------------------------------------- loading and paths


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "r.toml").write_text(
        """
[task]
dataset = { train = "data/train.csv", test = "../test.csv" }
[teacher]
model = "models/teacher"
[stages.general]
corpus = ["corpus.txt", "builtin:zh-news"]
""",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(Path("..") / "recipes" / "r.toml")
    base = folder.resolve()
    assert isinstance(recipe.task.dataset, DataFiles)
    assert recipe.task.dataset.train == str(base / "data" / "train.csv")
    assert recipe.task.dataset.test == str(tmp_path.resolve() / "test.csv")
    assert recipe.task.dataset.dev is None
    assert recipe.teacher.model == str(base / "models" / "teacher")
    assert recipe.stages.general.corpus == [str(base / "corpus.txt"), "builtin:zh-news"]
    assert recipe.student.init == "teacher-layers"
    assert recipe.run.out_dir == "runs"  # relative to the caller, by design
    assert recipe.run_name() == "r"
    assert recipe.source == str(base / "r.toml")


def test_single_dataset_path_resolves_and_builtins_and_absolute_paths_stay(tmp_path):
    (tmp_path / "a.toml").write_text('[task]\ndataset = "tiny.csv"\n', encoding="utf-8")
    assert load_recipe(tmp_path / "a.toml").task.dataset == str(tmp_path.resolve() / "tiny.csv")
    absolute = tmp_path.resolve() / "x" / "t.jsonl"
    (tmp_path / "b.toml").write_text(f'[task]\ndataset = "{absolute.as_posix()}"\n', encoding="utf-8")
    assert load_recipe(tmp_path / "b.toml").task.dataset == str(absolute)
    (tmp_path / "c.toml").write_text('[run]\nname = "named"\n', encoding="utf-8")
    recipe = load_recipe(tmp_path / "c.toml")
    assert recipe.task.dataset == "builtin:tweets"
    assert recipe.teacher.model == "builtin:minilm-l6"
    assert recipe.run_name() == "named"


def test_invalid_toml_is_a_user_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[run\nseed = 1\n", encoding="utf-8")
    with pytest.raises(UserError, match="not valid TOML") as info:
        load_recipe(path)
    assert str(path) in info.value.line()


def test_missing_recipe_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")


def test_non_utf8_recipe_is_a_user_error(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes('[run]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_recipe(path)


# --------------------------------------------------------------------------- round trip


def test_to_toml_round_trips_a_full_recipe():
    recipe = parse_recipe(
        {
            "run": {"name": "x", "seed": 7, "threads": 2, "device": "cpu"},
            "task": {
                "dataset": {"train": "/data/t.csv", "dev": "/data/d.csv"},
                "text_pair_column": "question",
                "truncation": "head+tail",
                "head_tokens": 30,
                "limit_train": 10,
                "split": [0.7, 0.2, 0.1],
                "language": "zh",
            },
            "teacher": {"pooling": "mean", "dropout": 0.2},
            "student": {"layers": 3, "hidden": 128, "layer_map": [1, 3, 5]},
            "stages": {
                **{name: {} for name in TRAINING_STAGES},
                "finetune": {"adversarial": "pgd", "ema": 0.999, "lr": 3e-5},
                "task_adaptive": {"relations": ["qk", "vv"], "relation_heads": 12},
                "data_distill": {"students": ["cnn"], "labels": "hard", "augment": {"unk": 0.2, "multiplier": 3}},
                "general": {"enabled": False, "corpus": ["builtin:zh-news"]},
            },
            "export": {"quantize": "none", "opset": 18},
            "report": {"batch_sizes": [1, 8], "repeats": 5},
        }
    )
    again = parse_recipe(tomllib.loads(recipe.to_toml()))
    assert again == recipe


def test_to_toml_round_trips_the_defaults_and_drops_the_source(tmp_path):
    (tmp_path / "r.toml").write_text('[task]\ndataset = "d.csv"\n', encoding="utf-8")
    recipe = load_recipe(tmp_path / "r.toml")
    text = recipe.to_toml()
    assert "source" not in tomllib.loads(text)
    again = parse_recipe(tomllib.loads(text))
    assert again.model_dump() == recipe.model_dump()
    assert again.task.dataset == str(tmp_path.resolve() / "d.csv")
    assert parse_recipe(tomllib.loads(Recipe().to_toml())) == Recipe()


# --------------------------------------------------------------------------- stages


def test_default_recipe_runs_prepare_export_report():
    assert Recipe().enabled_stages() == ["prepare", "export", "report"]


@pytest.mark.parametrize("name", TRAINING_STAGES)
def test_stage_table_enables_the_stage_and_enabled_false_disables_it(name):
    assert name in parse_recipe({"stages": {name: {}}}).enabled_stages()
    assert name not in parse_recipe({"stages": {name: {"enabled": False}}}).enabled_stages()
    assert not parse_recipe({}).stage_enabled(name)


def test_enabled_stages_follow_the_pipeline_order_and_prepare_always_runs():
    recipe = parse_recipe(
        {
            "stages": {"task_specific": {}, "finetune": {}, "general": {"enabled": False}},
            "export": {"enabled": False},
        }
    )
    assert recipe.enabled_stages() == ["prepare", "finetune", "task_specific", "report"]
    only_prepare = parse_recipe({"export": {"enabled": False}, "report": {"enabled": False}})
    assert only_prepare.enabled_stages() == ["prepare"]


def _toml_block(document: str) -> dict:
    path = Path(__file__).resolve().parent.parent / document
    return tomllib.loads(re.search(r"```toml\n(.*?)```", path.read_text(encoding="utf-8"), re.S).group(1))


def test_the_recipe_reference_parses():
    """The recipe reference in docs/recipes.md uses only real keys and valid values."""
    recipe = parse_recipe(_toml_block("docs/recipes.md"), "docs/recipes.md")
    assert recipe.stages.task_specific.baseline_twin is False and recipe.stages.data_distill.labels == "soft"


def test_the_shipped_recipes_table_is_written_from_the_recipes():
    """docs/recipes.md lists every recipes/*.toml as tools/recipes_table.py writes it (run the tool to fix)."""
    import subprocess
    import sys

    check = subprocess.run([sys.executable, str(REPO / "tools" / "recipes_table.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    table = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert all(f"`recipes/{path.name}`" in table for path in (REPO / "recipes").glob("*.toml"))


def test_the_readme_minimal_recipe_parses():
    """The README's quickstart recipe is complete as printed: it parses with its own keys."""
    recipe = parse_recipe(_toml_block("README.md"), "README.md")
    assert recipe.task.text_column == "review" and recipe.stages.data_distill.students == ["bow", "cnn"]


# --------------------------------------------------------------------------- overrides


def test_override_sets_a_nested_key_keeps_the_rest_and_the_source(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "r.toml"
    path.write_text('[teacher]\nmodel = "teacher"\n[stages.task_specific]\nepochs = 2\nlr = 1e-4\n', encoding="utf-8")
    recipe = load_recipe(path)
    changed = override_recipe(override_recipe(recipe, "stages.task_specific.epochs=1"), "run.threads = 1")
    assert changed.stages.task_specific.epochs == 1 and changed.run.threads == 1
    assert changed.stages.task_specific.lr == recipe.stages.task_specific.lr
    assert changed.teacher.model == str(tmp_path / "teacher") and changed.source == recipe.source
    assert recipe.stages.task_specific.epochs == 2  # the original is untouched
    assert override_recipe(recipe, "task.truncation=tail").task.truncation == "tail"  # a bare word is a string
    assert override_recipe(recipe, 'stages.task_specific.relations=["qk", "vv"]').stages.task_specific.relations == ["qk", "vv"]
    monkeypatch.chdir(tmp_path / "elsewhere")  # a path typed on the command line is relative to where it is typed
    moved = override_recipe(recipe, "teacher.model=models/t")
    assert moved.teacher.model == str(tmp_path / "elsewhere" / "models" / "t")
    assert override_recipe(recipe, "teacher.model=builtin:minilm-l6").teacher.model == "builtin:minilm-l6"


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("stages.task_specific.epocs=1", "unknown key 'stages.task_specific.epocs'"),
        ("run.threads=two", "bad value for 'run.threads'"),
        ("run.threads", "bad override 'run.threads'"),
        ("run..threads=1", "bad override"),
        ("run.seed.x=1", "'run.seed.x' is not inside a table"),
    ],
)
def test_bad_override_is_a_user_error(assignment, message):
    with pytest.raises(UserError, match=re.escape(message)):
        override_recipe(parse_recipe({}), assignment)


def test_ema_and_swa_together_are_refused_in_one_line(tmp_path):
    path = tmp_path / "both.toml"
    path.write_text("[stages.finetune]\nema = 0.99\nswa_start = 0.5\n", encoding="utf-8")
    with pytest.raises(UserError, match="ema and swa_start both average the weights"):
        load_recipe(path)
