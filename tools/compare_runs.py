"""Compare two runs model by model on their shared test split, paired text by text.

    python tools/compare_runs.py runs/tweets runs/tweets-ensemble --out results/x.json

Two runs of one split that differ in what teaches the students (one teacher against an ensemble,
another teacher recipe, other stage settings) train models of the same names: the teacher, the
transformer student and its gold-only twin, the word-level students. For every name both runs
have, this scores each model's torch decisions on the test split and tests the difference in the
task's primary metric, B minus A: a paired bootstrap interval over test texts and, where the task
family has one, the exact McNemar p-value. Refuses runs whose test splits differ.

One seed per run cannot tell a difference inside a point from noise. `--pair RUN_A2 RUN_B2`
(repeatable) adds the same two settings at another student seed (e.g. the variant runs of
tools/ablate.py on each base run): every model is then also compared pair by pair and pooled over
the pairs, with a bootstrap interval over seeds and test texts, as the ablations do.

What each run's training cost is compared too, stage by stage (fine-tuning and the transformer
distillation stages both runs finished): the training loop's seconds per epoch, steps per second,
its seconds by phase and the dev figure it reached, from each stage's metrics.json, and A's seconds
per epoch over B's, so that a change of training settings (precision, batching) shows its speed-up
beside what it did to accuracy.

Writes a JSON file (each run's stage commits and resolved recipe beside the figures) and a Markdown
table next to it; `--readme FILE --section NAME` also places the table in a marked section.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from distill import provenance
from distill.errors import UserError
from distill.export.runtime import TRANSFORMER_KIND
from distill.pipeline import STAGES, STUDENT_STAGES, Run
from distill.report.schema import METRIC_TITLES
from distill.report.sections import update_section
from distill.report.stats import significant
from distill.seeds import TWIN_NAME, SeedRun, seed_run, summary, trained_students, versus
from distill.stages.common import student_seed
from distill.stages.run_models import TWIN_DIR, RunModel, torch_predictions


def compared_models(run: Run) -> dict[str, RunModel]:
    """The teacher (the relation member of an ensemble is `teacher`; the ensemble is not one model)
    and every student the run trained, by name."""
    teacher = RunModel("teacher", TRANSFORMER_KIND, "teacher", run.teacher_dir())
    return {model.name: model for model in [teacher, *trained_students(run)]}


def stage_provenance(markers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per finished stage (its done marker): the commit and code tree that made it, and its seconds."""
    stages = {}
    for stage, record in markers.items():
        made = record.get("provenance", {})
        stages[stage] = {"git_commit": made.get("git_commit"), "code_tree": made.get("code_tree"), "seconds": record.get("seconds")}
    return stages


TRAINING_STAGES = ("finetune", *STUDENT_STAGES)  # the stages whose cost is their training loop


def _dev_figure(metrics: dict[str, Any], primary: str) -> dict[str, Any] | None:
    """The dev figure a stage's loop reached: the primary metric where it evaluates on dev (the
    teacher's `dev` block, a student's `dev_<metric>`), else the dev relation loss of a
    relation-only stage."""
    if primary in metrics.get("dev", {}):
        return {"name": f"dev {primary}", "value": metrics["dev"][primary]}
    for key in (f"dev_{primary}", "dev_relation_loss_after"):
        if key in metrics:
            return {"name": key.replace("_", " "), "value": metrics[key]}
    return None


def _loop_cost(metrics: dict[str, Any], epochs: float | None) -> dict[str, Any]:
    """One training loop's seconds, steps and their rates; per epoch unless `max_steps` set its length."""
    seconds, steps = metrics["seconds"], metrics["steps"]
    return {
        "seconds": seconds,
        "steps": steps,
        "epochs": epochs,
        "seconds_per_epoch": None if epochs is None else seconds / epochs,
        "steps_per_second": steps / seconds,
        "seconds_by_phase": metrics.get("seconds_by_phase", {}),
    }


def stage_costs(run: Run, primary: str) -> dict[str, dict[str, Any]]:
    """Per training stage the run finished: its loop's cost (`_loop_cost`), the dev figure, the
    whole stage's seconds (with a teacher pass, a twin), and the gold-only twin's loop if any."""
    costs = {}
    for name in TRAINING_STAGES:
        done = run.dir / "done" / f"{name}.json"
        out = run.path(STAGES[name].output)
        if not done.is_file() or not (out / "metrics.json").is_file():
            continue
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        if "steps" not in metrics:  # an ensemble's fine-tuning: its members' and their combination's figures
            continue
        section = getattr(run.recipe.stages, name)
        epochs = section.epochs if section.max_steps is None else None
        cost = {**_loop_cost(metrics, epochs), "dev": _dev_figure(metrics, primary)}
        cost["stage_seconds"] = json.loads(done.read_text(encoding="utf-8"))["seconds"]
        if (out / TWIN_DIR / "metrics.json").is_file():
            cost["twin"] = _loop_cost(json.loads((out / TWIN_DIR / "metrics.json").read_text(encoding="utf-8")), epochs)
        costs[name] = cost
    return costs


def compare_costs(a: Run, b: Run, primary: str) -> list[dict[str, Any]]:
    """Each training stage both runs finished, with B's speed-up: A's seconds per epoch over B's
    (None where `max_steps` set a loop's length), and per optimiser step."""
    costs_a, costs_b = stage_costs(a, primary), stage_costs(b, primary)
    rows = []
    for name in (name for name in TRAINING_STAGES if name in costs_a and name in costs_b):
        cost_a, cost_b = costs_a[name], costs_b[name]
        known = cost_a["epochs"] is not None and cost_b["epochs"] is not None
        per_epoch = cost_a["seconds_per_epoch"] / cost_b["seconds_per_epoch"] if known else None
        per_step = cost_b["steps_per_second"] / cost_a["steps_per_second"]
        rows.append({"stage": name, "a": cost_a, "b": cost_b, "speedup_per_epoch": per_epoch, "speedup_per_step": per_step})
    return rows


def compare(run_a: Path, run_b: Path, names: list[str] | None = None, pairs: list[tuple[Path, Path]] | None = None) -> dict[str, Any]:
    """Scores of every model both runs have (or of `names`) and the paired difference B − A; with
    further `pairs` (A and B at other seeds) each model's difference per pair and pooled over all."""
    runs = [(Run.from_dir(a), Run.from_dir(b)) for a, b in [(run_a, run_b), *(pairs or [])]]
    a, b = runs[0]
    data_a = a.data()
    test = data_a.test
    split = [(e.text, e.text_pair, e.label) for e in test]
    for run in (run for pair in runs for run in pair):
        if [(e.text, e.text_pair, e.label) for e in run.data().test] != split:
            raise UserError(f"{run_a} and {run.dir} have different test splits", "compare", "compare runs of one split ([run] seed, [task])")
    family = data_a.family
    models = [(compared_models(pair_a), compared_models(pair_b)) for pair_a, pair_b in runs]
    shared = [name for name in models[0][0] if all(name in side for pair in models for side in pair)]
    names = names or shared
    missing = sorted(set(names) - set(shared))
    if missing:
        raise UserError(f"not trained in every compared run: {', '.join(missing)}", "--models", f"choose from {', '.join(shared)}")
    teacher_a = torch_predictions(a, models[0][0]["teacher"], test)
    gold = [example.label for example in test]
    rows = []
    for name in names:
        scored = [
            (seed_run(pair_a, sides[0][name], student_seed(pair_a.recipe), teacher_a),
             seed_run(pair_b, sides[1][name], student_seed(pair_b.recipe), teacher_a))
            for (pair_a, pair_b), sides in zip(runs, models)
        ]
        first_a, first_b = scored[0]
        paired = family.paired(gold, first_b.predictions, first_a.predictions, a.recipe.run.seed)
        row = {"model": name, "a": first_a.figures, "b": first_b.figures, "b_minus_a": paired}
        if len(runs) > 1:
            row.update(pooled_over_pairs(scored, test, a.recipe.run.seed, family))
        rows.append(row)
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": list(family.metrics),
        "test_size": len(test),
        "models": rows,
        "stages": compare_costs(a, b, family.primary),
        "runs": {label: _run_record(run) for label, run in (("a", a), ("b", b))},
        "pairs": [{"a": _run_record(pair_a), "b": _run_record(pair_b)} for pair_a, pair_b in runs[1:]],
    }


def pooled_over_pairs(scored: list[tuple[SeedRun, SeedRun]], test: list, seed: int, family: Any) -> dict[str, Any]:
    """One model over every pair: A's and B's mean and spread over seeds, and B − A per pair and
    pooled (`distill.seeds.versus`, the ablations' test)."""
    runs_a, runs_b = [pair[0] for pair in scored], [pair[1] for pair in scored]
    keys = (*family.metrics, "agreement")
    return {
        "a_over_seeds": summary(runs_a, keys),
        "b_over_seeds": summary(runs_b, keys),
        "b_minus_a_over_seeds": versus(runs_b, runs_a, test, seed, family),
    }


def _run_record(run: Run) -> dict[str, Any]:
    """Where a run is, the commits of its stages, `mixed_code` when they differ, and its resolved recipe."""
    markers = provenance.stage_markers(run.dir)
    record = {"run_dir": str(run.dir), "stages": stage_provenance(markers), "recipe": provenance.record(run.recipe)["recipe"]}
    mixed = provenance.mixed_code(markers)
    if mixed:
        record["mixed_code"] = mixed
    return provenance.shareable(record)


def mixed_code_lines(result: dict[str, Any]) -> list[str]:
    """A warning per compared run whose stages were made by different code: its figures are not one code's."""
    runs = [*result["runs"].values(), *(record for pair in result["pairs"] for record in pair.values())]
    return [provenance.mixed_code_warning(run["run_dir"], run["mixed_code"]) for run in runs if run.get("mixed_code")]


def markdown(result: dict[str, Any], title_a: str, title_b: str) -> str:
    """The comparison as a table: each model's metrics in A and B, then B − A with its interval."""
    metrics = result["metrics"]
    primary = METRIC_TITLES[metrics[0]]
    head = [f"{METRIC_TITLES[name]} {side}" for name in metrics for side in ("A", "B")]
    lines = [
        f"A = {title_a}, B = {title_b}; test split, {result['test_size']} texts (measured {result['created'][:10]} by `tools/compare_runs.py`).",
        "",
        f"| model | {' | '.join(head)} | agreement with A's teacher (A / B) | B − A {primary} (points, 95% CI) | exact McNemar p |",
        "| --- |" + " --- |" * (len(head) + 3),
    ]
    for row in result["models"]:
        test = row["b_minus_a"]
        mark = "significant" if significant(test["low"], test["high"]) else "not significant"
        cells = [f"{row[side][name]:.4f}" for name in metrics for side in ("a", "b")]
        agreement = f"{row['a']['agreement']:.4f} / {row['b']['agreement']:.4f}"
        interval = f"{100 * test['diff']:+.2f} [{100 * test['low']:+.2f}, {100 * test['high']:+.2f}], {mark}"
        exact = f"{test['p_value']:.3g}" if "p_value" in test else "—"
        lines.append(f"| {' | '.join([row['model'], *cells, agreement, interval, exact])} |")
    if any(row["model"] == TWIN_NAME for row in result["models"]):
        lines += ["", f"`{TWIN_NAME}`: the transformer student trained on gold labels only, with each run's student initialisation."]
    lines += ["", "This table: one seed per run, the interval over test texts (paired bootstrap, 1,000 resamples), not over seeds."]
    lines += [line for warning in mixed_code_lines(result) for line in ("", warning)]
    if result["pairs"]:
        lines += ["", *seeds_table(result)]
    if result["stages"]:
        lines += ["", *cost_table(result["stages"])]
    return "\n".join(lines) + "\n"


def seeds_table(result: dict[str, Any]) -> list[str]:
    """Each model over every pair of runs: A's and B's mean ± std over seeds, B − A per seed and
    pooled with its interval."""
    primary = result["metrics"][0]
    title = METRIC_TITLES[primary]
    pooled_rows = [row for row in result["models"] if "b_minus_a_over_seeds" in row]
    seeds = ", ".join(str(seed) for seed in pooled_rows[0]["a_over_seeds"]["seeds"])
    lines = [
        f"Over {len(result['pairs']) + 1} pairs of runs (student seeds {seeds}):",
        "",
        f"| model | {title} A (mean ± std) | {title} B (mean ± std) | B − A per seed (points) | B − A pooled (points, 95% CI) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in pooled_rows:
        test = row["b_minus_a_over_seeds"]
        pooled = test["pooled"]
        mark = "significant" if pooled["significant"] else "not significant"
        sides = [f"{row[side][f'{primary}_mean']:.4f} ± {row[side][f'{primary}_std']:.4f}" for side in ("a_over_seeds", "b_over_seeds")]
        per_seed = ", ".join(f"{100 * seed['diff']:+.2f}" for seed in test["per_seed"])
        interval = f"{100 * pooled['diff']:+.2f} [{100 * pooled['low']:+.2f}, {100 * pooled['high']:+.2f}], {mark}"
        lines.append(f"| {row['model']} | {sides[0]} | {sides[1]} | {per_seed} | {interval} |")
    return [*lines, "", f"Pooled interval: {pooled_rows[0]['b_minus_a_over_seeds']['pooled']['interval']} (1,000 resamples)."]


def cost_table(stages: list[dict[str, Any]]) -> list[str]:
    """The training stages' cost in A and B: seconds per epoch of the loop, steps per second, the
    dev figure reached, and B's speed-up per epoch."""
    lines = [
        "| stage | epochs A / B | loop s/epoch A / B | steps/s A / B | dev figure | A | B | speed-up per epoch (A / B) | per step | whole stage s A / B |",
        "| --- |" + " --- |" * 9,
    ]
    for row in stages:
        a, b = row["a"], row["b"]
        dev = a["dev"] or {"name": "—"}
        values = [f"{side['dev']['value']:.4f}" if side["dev"] else "—" for side in (a, b)]
        epochs = " / ".join("—" if side["epochs"] is None else f"{side['epochs']:g}" for side in (a, b))
        per_epoch = " / ".join("—" if side["seconds_per_epoch"] is None else f"{side['seconds_per_epoch']:.0f}" for side in (a, b))
        speedup = "—" if row["speedup_per_epoch"] is None else f"{row['speedup_per_epoch']:.2f}×"
        lines.append(
            f"| {row['stage']} | {epochs} | {per_epoch} | {a['steps_per_second']:.2f} / {b['steps_per_second']:.2f} "
            f"| {dev['name']} | {values[0]} | {values[1]} | {speedup} | {row['speedup_per_step']:.2f}× "
            f"| {a['stage_seconds']:.0f} / {b['stage_seconds']:.0f} |"
        )
    lines += ["", "Loop: the stage's training loop (steps, evaluation on dev, checkpoints), from its metrics.json; "
              "the whole stage adds what runs around it (the teacher's logits, the gold-only twin)."]
    return lines


@click.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--models", default=None, help="Comma-separated model names (default: every model both runs trained).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The JSON file to write (the .md goes beside it).")
@click.option("--pair", "pairs", type=(click.Path(exists=True, file_okay=False, path_type=Path),) * 2, multiple=True,
              metavar="RUN_A RUN_B", help="The same two settings at another student seed (repeatable): also pooled over seeds.")
@click.option("--title-a", default=None, help="What run A is, for the table (default: its directory).")
@click.option("--title-b", default=None, help="What run B is, for the table (default: its directory).")
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A Markdown file whose marked section (see --section) gets the table.")
@click.option("--section", default="comparison", show_default=True, help="The section's marker name.")
def main(run_a: Path, run_b: Path, models: str | None, out: Path, pairs: tuple[tuple[Path, Path], ...],
         title_a: str | None, title_b: str | None, readme: Path | None, section: str) -> None:
    """Compare RUN_A and RUN_B (B − A) on their shared test split."""
    try:
        result = compare(run_a, run_b, models.split(",") if models else None, list(pairs))
    except UserError as error:
        click.echo(f"error: {error.line()}", err=True)
        sys.exit(2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = markdown(result, title_a or f"`{run_a}`", title_b or f"`{run_b}`")
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    if readme is not None:
        update_section(readme, section, table, "Comparisons")
    click.echo(table)
    click.echo(f"-> {out}")


if __name__ == "__main__":
    main()
