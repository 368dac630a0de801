"""Ablate the student paths: which distillation stages, relations and labels pay off.

    distill run recipes/tweets.toml     # once: the split, the teacher and its cached labels
    python tools/ablate.py recipes/tweets.toml --seeds 1,2,3 --variants gold_only,tsd
    python tools/ablate.py recipes/tweets.toml --variants data_gold,data_hard,data_soft
    python tools/ablate.py recipes/tweets.toml --variants data_soft,data_soft_typos
    python tools/ablate.py recipes/tweets.toml --set stages.task_specific.epochs=1 --set run.threads=1
    python tools/ablate.py recipes/tweets.toml --variants teacher_plain,teacher_swa,teacher_ensemble
    python tools/ablate.py recipes/tweets.toml --variants born_again --seeds 42

Every variant runs at every seed on the base run's split and teacher (`distill.seeds`), in
its own run directory (RUNS/NAME-ablation/VARIANT-seedN/). Export, report and the stages a
variant does not name are off. Writes ablation.json and ablation.md: the task's test metrics
(accuracy and macro-F1; micro-F1, macro-F1 and subset accuracy; Pearson and Spearman),
agreement with the teacher and minutes of the variant's stages (mean ± std over seeds), and
each model's difference in the primary metric to the same student trained on gold labels only (`gold_only`
for the transformer, `data_gold` for the word-level students; `data_soft_typos` against
`data_soft`, to test nlpaug's typo copies): per seed with a paired
bootstrap interval and an exact McNemar p-value, and pooled over seeds with a bootstrap
interval over seeds and test texts (its `interval` names it); a gain is called significant
only when the interval excludes zero. `born_again` distils into a student of the teacher's depth
and width started from the encoder the teacher was fine-tuned from, and is paired with the base
run's teacher itself (its own row).

Teacher variants (`teacher_*`) fine-tune the teacher again on the base run's split, at teacher
seeds (`[teacher] seed`; `--seeds` are then teacher seeds), and compare it with `teacher_plain`
(the recipe's fine-tuning without SWA, mixup or R-Drop) at the same seeds; a variant whose
settings and seed equal the base run's reuses its teacher. `teacher_ensemble` is the mean of
the `teacher_plain` teachers' probabilities over the seeds, compared with its best member on dev. `--set KEY=VALUE` runs the recipe at other settings
(shared stages must still match the base run); the table names them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from transformers import AutoConfig

from distill import provenance
from distill.errors import UserError
from distill.export.runtime import TRANSFORMER_KIND
from distill.pipeline import Run
from distill.recipe import Recipe, load_recipe
from distill.report.schema import METRIC_TITLES
from distill.report.sections import update_section
from distill.models.architectures import architecture
from distill.models.ensemble import combine_logits
from distill.seeds import SHARED_STAGES, TWIN_NAME, SeedRun, run_repeat, seed_run, seeded_recipe, summary, trained_students, versus
from distill.stages.common import model_logits, student_seed
from distill.stages.run_models import RunModel, torch_predictions

MINILM_V2 = ["qq", "kk", "vv"]
MINILM = ["qk", "vv"]
# keyboard typos in a tenth of the words (at least one per text), as noisy user text has them
TYPOS = {"augmenter": "keyboard", "rate": 0.1, "copies": 1}


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    stages: dict[str, dict[str, Any]]  # stage -> settings laid over the base recipe's table
    reference: str  # the variant every model of this one is compared with (itself for a reference; "teacher")
    student: Callable[[Run], dict[str, Any]] | None = None  # [student] keys from the base run, laid over the recipe's


TEACHER = "teacher"  # a reference: the base run's teacher, the same at every seed


def _relations(stages: tuple[str, ...], relations: list[str]) -> dict[str, dict[str, Any]]:
    return {stage: {"relations": relations} for stage in stages}


def teacher_shaped(base: Run) -> dict[str, Any]:
    """[student] of a born-again student: the teacher's depth and width, started from the encoder
    the teacher was fine-tuned from (the further-pretrained one when the recipe pretrains)."""
    config = AutoConfig.from_pretrained(base.teacher_dir(), local_files_only=True)
    source = str(base.require("mlm", "pretrain")) if base.recipe.stage_enabled("pretrain") else base.recipe.teacher.model
    return {"layers": architecture(config).shape(config).layers, "init": source, "layer_map": None}


VARIANTS = (
    Variant(
        "gold_only",
        "TSD on gold labels only",
        {"task_specific": {"soft_weight": 0.0, "hard_weight": 1.0, "relation_weight": 0.0}},
        "gold_only",
    ),
    Variant("tsd", "TSD (the recipe's soft/hard weights)", {"task_specific": {}}, "gold_only"),
    Variant("tad_tsd", "TAD (qq,kk,vv) + TSD", _relations(("task_adaptive", "task_specific"), MINILM_V2), "gold_only"),
    Variant(
        "ged_tad_tsd",
        "GED + TAD (qq,kk,vv) + TSD",
        _relations(("general_enhanced", "task_adaptive", "task_specific"), MINILM_V2),
        "gold_only",
    ),
    Variant("tad_tsd_qk_vv", "TAD (qk,vv) + TSD", _relations(("task_adaptive", "task_specific"), MINILM), "gold_only"),
    Variant(
        "tad_tsd_hidden",
        "TAD (qq,kk,vv + hidden-state MSE, weight 1) + TSD",
        {"task_adaptive": {"relations": MINILM_V2, "hidden_weight": 1.0}, "task_specific": {"relations": MINILM_V2}},
        "tad_tsd",
    ),
    Variant("data_gold", "word-level students on gold labels only", {"data_distill": {"labels": "gold"}}, "data_gold"),
    Variant("data_hard", "data distillation, teacher argmax labels", {"data_distill": {"labels": "hard"}}, "data_gold"),
    Variant("data_soft", "data distillation, teacher soft labels", {"data_distill": {"labels": "soft"}}, "data_gold"),
    Variant(
        "data_soft_typos",
        "data_soft with one of the multiplier's copies made by nlpaug keyboard typos",
        {"data_distill": {"labels": "soft", "augment": {"nlpaug": [TYPOS]}}},
        "data_soft",
    ),
    Variant(
        "born_again",
        "TSD into a student of the teacher's shape from the teacher's own starting encoder (born-again)",
        {"task_specific": {}},
        TEACHER,
        teacher_shaped,
    ),
)
# the recipe's fine-tuning with SWA, mixup and R-Drop taken out (EMA and the rest as the recipe has them)
PLAIN_TEACHER = {"swa_start": None, "mixup_alpha": None, "rdrop_alpha": None, "label_smoothing": 0.0}
TEACHER_VARIANTS = (
    Variant("teacher_plain", "teacher without SWA, mixup or R-Drop", {"finetune": PLAIN_TEACHER}, "teacher_plain"),
    Variant(
        "teacher_swa",
        "teacher with SWA from 75% of the steps (no EMA)",
        {"finetune": {**PLAIN_TEACHER, "ema": None, "swa_start": 0.75}},
        "teacher_plain",
    ),
    Variant(
        "teacher_mixup_ls",
        "teacher with embedding mixup (α 0.4) and label smoothing 0.1",
        {"finetune": {**PLAIN_TEACHER, "mixup_alpha": 0.4, "label_smoothing": 0.1}},
        "teacher_plain",
    ),
    Variant("teacher_rdrop", "teacher with R-Drop (α 1)", {"finetune": {**PLAIN_TEACHER, "rdrop_alpha": 1.0}}, "teacher_plain"),
)
ENSEMBLE = "teacher_ensemble"  # not a training variant: the teacher_plain seeds' mean probabilities
BEST_MEMBER = "teacher_best_member"
DEFAULT_SEED_COUNT = 3  # one seed cannot tell a gain from noise
DEFAULT_VARIANTS = ("gold_only", "tsd", "tad_tsd", "ged_tad_tsd", "tad_tsd_qk_vv")  # the transformer path


def is_teacher(variant: Variant) -> bool:
    return "finetune" in variant.stages


def variant_recipe(base: Run, variant: Variant, seed: int, out_dir: Path) -> Recipe:
    """The base recipe with only the variant's stages, the student (or teacher) seed and its own run name."""
    stages = {stage: dict(settings) for stage, settings in variant.stages.items()}
    if "task_specific" in stages:
        stages["task_specific"]["baseline_twin"] = False  # gold_only is every variant's twin
    # the base run's own teacher seed stays unset, so a variant that fine-tunes as the base run did reuses its teacher
    teacher_seed = seed if is_teacher(variant) and seed != base.recipe.teacher_seed() else None
    student = variant.student(base) if variant.student is not None else None
    return seeded_recipe(base.recipe, seed, out_dir, f"{variant.name}-seed{seed}", stages, teacher_seed, student)


def base_students_are(base: Run, variant: Variant, seed: int, out_dir: Path) -> bool:
    """Whether the base run's word-level students are what `variant` would train at `seed`: the
    same data-distillation settings and student seed, and the base run finished that stage."""
    recipe = variant_recipe(base, variant, seed, out_dir)
    mine, theirs = recipe.stages.data_distill, base.recipe.stages.data_distill
    return (
        set(variant.stages) == {"data_distill"}
        and theirs is not None
        and mine.model_dump() == theirs.model_dump()
        and student_seed(recipe) == student_seed(base.recipe)
        and (base.dir / "done" / "data_distill.json").is_file()
    )


def run_variant(
    base: Run, variant: Variant, seed: int, out_dir: Path, teacher_predictions: list, reuse_base: bool = False
) -> dict[str, SeedRun]:
    """Run one variant at one seed; per model: test metrics, predictions and minutes of its stages.
    With `reuse_base` the base run's own word-level students stand for the variant (refused unless
    `base_students_are` them), so a recipe's data distillation is not trained twice."""
    if reuse_base:
        if not base_students_are(base, variant, seed, out_dir):
            raise UserError(
                f"the base run's word-level students are not {variant.name} at seed {seed}",
                "--base-as",
                "name the variant whose data-distillation settings and seed the base run has, or drop --base-as",
            )
        run = base
        done = {"data_distill": json.loads((base.dir / "done" / "data_distill.json").read_text(encoding="utf-8"))}
    else:
        required = ("prepare", "pretrain") if is_teacher(variant) else SHARED_STAGES
        run, done = run_repeat(base, variant_recipe(base, variant, seed, out_dir), required)
    minutes = sum(done[name]["seconds"] for name in variant.stages) / 60
    # stages linked from the base run or resumed may come from other code than the variant's own
    mixed = provenance.mixed_code(provenance.stage_markers(run.dir))
    made_by = {"mixed_code": mixed} if mixed else {}
    if is_teacher(variant):
        models = [RunModel("teacher", TRANSFORMER_KIND, "teacher", run.dir / "teacher")]
    else:  # the base run also holds its transformer student, which a data variant does not train
        models = [model for model in trained_students(run) if not (reuse_base and model.kind == TRANSFORMER_KIND)]
    results = {}
    for model in models:
        if model.name != TWIN_NAME:
            measured = seed_run(run, model, seed, teacher_predictions)
            results[model.name] = SeedRun({**measured.figures, "minutes": minutes, "run_dir": str(run.dir), **made_by}, measured.predictions)
    return results


def ensemble_runs(base: Run, members: list[SeedRun], teacher_predictions: list) -> tuple[SeedRun, SeedRun]:
    """The mean of the member teachers' probabilities (equal weights) and its best member on dev."""
    data = base.data()
    directories = [Path(member.figures["run_dir"]) / "teacher" for member in members]
    logits = [model_logits(base.recipe, directory, data.test, data, base.device) for directory in directories]
    predictions = data.family.decide(combine_logits(data.family, logits, [1.0] * len(logits), "probabilities"), data.labels)
    metrics = data.family.score([e.label for e in data.test], predictions, data.labels)
    figures = {
        "seed": members[0].figures["seed"],
        **{name: metrics[name] for name in data.family.metrics},
        "agreement": data.family.agreement(teacher_predictions, predictions),
        "minutes": sum(member.figures["minutes"] for member in members),
        "members": [str(directory) for directory in directories],
    }

    def dev_score(member: SeedRun) -> float:
        return json.loads((Path(member.figures["run_dir"]) / "teacher" / "metrics.json").read_text(encoding="utf-8"))["dev"][data.family.primary]

    best = max(members, key=dev_score)
    return SeedRun(figures, predictions), best


def row_name(variant: str, model: str) -> str:
    """`tsd` for the transformer student (`teacher_swa` for a teacher); `data_soft/cnn` for a word-level
    student of a data variant."""
    return variant if model in ("student", "teacher") else f"{variant}/{model}"


def summarise(name: str, variant: Variant, runs: list[SeedRun], metrics: tuple[str, ...] = ("accuracy", "macro_f1")) -> dict[str, Any]:
    spread = summary(runs, (*metrics, "agreement", "minutes"))
    return {"name": name, "description": variant.description, "runs": [run.figures for run in runs], **spread}


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def markdown_table(
    rows: list[dict[str, Any]],
    seeds: list[int],
    source: str,
    metrics: tuple[str, ...] = ("accuracy", "macro_f1"),
    subject: str = "Student",
) -> str:
    """ablation.md: the summary table, then the per-seed paired tests; `source` names recipe and date.
    `metrics` are the task family's, primary first (the Δ column's)."""
    spread = len(seeds) > 1
    titles = [METRIC_TITLES[name] for name in metrics]
    primary = titles[0]

    def cell(row: dict[str, Any], key: str) -> str:
        mean = f"{row[key + '_mean']:.4f}"
        return f"{mean} ± {row[key + '_std']:.4f}" if spread else mean

    def versus(row: dict[str, Any]) -> str:
        if "vs_reference" not in row:
            return "—"
        versus = row["vs_reference"]
        pooled = versus["pooled"]
        mark = "significant" if pooled["significant"] else "not significant"
        interval = f"[{_points(pooled['low'])}, {_points(pooled['high'])}]"
        return f"{_points(pooled['diff'])} {interval} vs {versus['reference']}, {mark}"

    lines = [
        f"{subject} ablation of {source}, test split, {subject.lower()} seeds {', '.join(map(str, seeds))}"
        + (" (mean ± std)" if spread else ""),
        "",
        f"| variant | stages | {' | '.join(titles)} | agreement with teacher | Δ {primary} (points, 95% CI) | minutes |",
        "| --- | --- |" + " --- |" * len(titles) + " --- | --- | --- |",
    ]
    for row in rows:
        minutes = f"{row['minutes_mean']:.1f}"
        cells = [row["name"], row["description"], *(cell(row, name) for name in metrics), cell(row, "agreement")]
        lines.append(f"| {' | '.join([*cells, versus(row), minutes])} |")
    compared = [row for row in rows if "vs_reference" in row]
    if compared:
        lines += [
            "",
            f"Δ {primary}: against the same {subject.lower()} of the variant named after `vs` (for students gold labels "
            "only, unless a variant names another), the mean difference over "
            f"seeds with its 95% interval from a {compared[0]['vs_reference']['pooled']['interval']} "
            "(1,000 resamples); significant only when the interval excludes 0. Per seed, against that "
            "seed's run of that variant, with a paired bootstrap over examples:",
            "",
            f"| variant | versus | seed | Δ {primary} (points) | 95% CI | exact McNemar p |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in compared:
            for test in row["vs_reference"]["per_seed"]:
                interval = f"[{_points(test['low'])}, {_points(test['high'])}]"
                reference = row["vs_reference"]["reference"]
                exact = f"{test['p_value']:.3g}" if "p_value" in test else "—"
                cells = [row["name"], reference, str(test["seed"]), _points(test["diff"]), interval, exact]
                lines.append(f"| {' | '.join(cells)} |")
    minutes = "minutes: the variant's stages, shared by the word-level students of one data variant"
    minutes += "; an ensemble's, the sum of its members'." if subject == "Teacher" else "."
    mixed = {run["run_dir"]: run["mixed_code"] for row in rows for run in row.get("runs", []) if run.get("mixed_code")}
    warnings = [provenance.mixed_code_warning(run_dir, commits) for run_dir, commits in mixed.items()]
    return "\n".join([*lines, "", minutes, *(line for warning in warnings for line in ("", warning))]) + "\n"


def ablate(
    recipe_path: Path,
    seeds: list[int] | None,
    names: list[str],
    out_dir: Path | None = None,
    overrides: tuple[str, ...] = (),
    base_as: str | None = None,
) -> Path:
    """Run the chosen variants at every seed (default: three, from the recipe's student seed on) of the
    recipe with `overrides` (KEY=VALUE) applied; write ablation.json and .md. `base_as` names a data
    variant the base run's own word-level students stand for at the recipe's student seed."""
    every = (*VARIANTS, *TEACHER_VARIANTS)
    unknown = sorted(set(names) - {v.name for v in every} - {ENSEMBLE})
    if unknown:
        known = ", ".join([*(v.name for v in every), ENSEMBLE])
        raise UserError(f"unknown variants {', '.join(unknown)}", "--variants", f"choose from {known}")
    base = Run(load_recipe(recipe_path, overrides))
    teachers = any(name.startswith("teacher_") for name in names)
    if teachers and any(not name.startswith("teacher_") for name in names):
        raise UserError("teacher and student variants take different seeds", "--variants", "ablate them in two calls")
    first = base.recipe.teacher_seed() if teachers else student_seed(base.recipe)
    seeds = seeds or [first + offset for offset in range(DEFAULT_SEED_COUNT)]
    out_dir = out_dir or base.dir.parent / f"{base.dir.name}-ablation"
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(names) | ({"teacher_plain"} if ENSEMBLE in names else set())  # the ensemble's members
    chosen = [v for v in every if v.name in wanted]
    test = base.data().test
    teacher = RunModel("teacher", TRANSFORMER_KIND, "teacher", base.teacher_dir())
    teacher_predictions = torch_predictions(base, teacher, test)
    runs: dict[str, list[SeedRun]] = {}  # row name -> one run per seed
    origin: dict[str, tuple[Variant, str]] = {}  # row name -> (variant, model name)
    if any(variant.reference == TEACHER for variant in chosen):  # the teacher's row, repeated at every seed
        measured = seed_run(base, teacher, seeds[0], teacher_predictions)
        fine_tuned = base.dir / "done" / "finetune.json"  # none for a teacher given already fine-tuned
        minutes = json.loads(fine_tuned.read_text(encoding="utf-8"))["seconds"] / 60 if fine_tuned.is_file() else 0.0
        runs[TEACHER] = [SeedRun({**measured.figures, "seed": seed, "minutes": minutes}, measured.predictions) for seed in seeds]
        origin[TEACHER] = (Variant(TEACHER, "the base run's teacher", {}, TEACHER), "teacher")
    for variant in chosen:
        for seed in seeds:
            reuse = variant.name == base_as and seed == student_seed(base.recipe)
            for model, measured in run_variant(base, variant, seed, out_dir, teacher_predictions, reuse).items():
                name = row_name(variant.name, model)
                runs.setdefault(name, []).append(measured)
                origin[name] = (variant, model)
    if ENSEMBLE in names:
        ensemble, best = ensemble_runs(base, runs["teacher_plain"], teacher_predictions)
        runs[ENSEMBLE], runs[BEST_MEMBER] = [ensemble], [best]
        described = f"mean probabilities of teacher_plain at seeds {', '.join(map(str, seeds))}"
        origin[ENSEMBLE] = (Variant(ENSEMBLE, described, {}, BEST_MEMBER), "teacher")
        origin[BEST_MEMBER] = (Variant(BEST_MEMBER, f"its best member on dev (seed {best.figures['seed']})", {}, BEST_MEMBER), "teacher")
        if "teacher_plain" not in names:
            del runs["teacher_plain"]
    family = base.data().family
    rows = [summarise(name, origin[name][0], seed_runs, family.metrics) for name, seed_runs in runs.items()]
    for row in rows:
        variant, model = origin[row["name"]]
        reference = row_name(variant.reference, model)
        if variant.reference != variant.name and reference in runs:
            comparison = versus(runs[row["name"]], runs[reference], test, base.recipe.run.seed, family)
            row["vs_reference"] = {"reference": reference, **comparison}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = {
        "recipe": recipe_path.name, "overrides": list(overrides), "created": created, "base_run": str(base.dir),
        "seeds": seeds, "variants": rows, "provenance": provenance.shareable(provenance.record(base.recipe)),  # overrides applied
    }
    (out_dir / "ablation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    settings = f" with {', '.join(f'`{assignment}`' for assignment in overrides)}" if overrides else ""
    source = f"`{recipe_path.name}`{settings} (measured {created[:10]} by `tools/ablate.py`)"
    subject = "Teacher" if teachers else "Student"
    (out_dir / "ablation.md").write_text(markdown_table(rows, seeds, source, family.metrics, subject), encoding="utf-8")
    return out_dir


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 1,2,3") from None


@click.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", default=None, callback=_int_list, help="Student seeds, e.g. 1,2,3 (default: the recipe's student seed and the next two).")
@click.option(
    "--variants",
    default=",".join(DEFAULT_VARIANTS),
    help="Variants, e.g. gold_only,tsd or data_gold,data_hard,data_soft (default: the transformer path).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key for every variant, e.g. --set stages.task_specific.epochs=1 (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder for the variant runs.")
@click.option("--base-as", "base_as", default=None,
              help="A data variant (e.g. data_soft) whose students at the recipe's seed are the base run's own, not trained again.")
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A Markdown file whose marked section (see --section) gets ablation.md.")
@click.option("--section", default="ablation", show_default=True,
              help="The section's marker name: <!-- NAME:start --> ... <!-- NAME:end -->.")
def main(
    recipe: Path,
    seeds: list[int] | None,
    variants: str,
    overrides: tuple[str, ...],
    out: Path | None,
    base_as: str | None,
    readme: Path | None,
    section: str,
) -> None:
    """Run student-path variants of RECIPE on its run's split and teacher."""
    try:
        folder = ablate(recipe, seeds, variants.split(","), out, overrides, base_as)
    except UserError as error:
        click.echo(f"error: {error.line()}", err=True)
        sys.exit(2)
    table = (folder / "ablation.md").read_text(encoding="utf-8")
    if readme is not None:
        update_section(readme, section, table, "Ablations")
    click.echo(table)
    click.echo(f"-> {folder / 'ablation.json'}")


if __name__ == "__main__":
    main()
