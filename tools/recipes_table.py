"""Write the table of shipped recipes in docs/recipes.md from the recipe files themselves.

    python tools/recipes_table.py                      # rewrites the `recipes` section of docs/recipes.md
    python tools/recipes_table.py --check              # exit 1 when the section is out of date

Each row reads one `recipes/*.toml`: the first sentence of its header comment, and from the
validated recipe the data, teacher, stages, student shape and data-distillation setting, so
the table cannot drift from what the recipes run.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

import click

from distill.recipe import Recipe, load_recipe
from distill.report.sections import update_section

REPO = Path(__file__).resolve().parent.parent
SECTION = "recipes"
STAGE_NAMES = {
    "pretrain": "MLM pretraining",
    "finetune": "fine-tune",
    "general": "GD",
    "general_enhanced": "GED",
    "task_adaptive": "TAD",
    "task_specific": "TSD",
    "data_distill": "data distillation",
}


def first_sentence(path: Path) -> str:
    """The header comment's first sentence (up to the first period followed by a space, or its end)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(part for part in lines if part)
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


def row(path: Path, recipe: Recipe) -> str:
    task, student = recipe.task, recipe.student
    data = task.dataset + (f" (first {task.limit_train:,} training rows)" if task.limit_train else "")
    stages = " → ".join(STAGE_NAMES[name] for name in recipe.enabled_stages() if name in STAGE_NAMES)
    shape = f"{student.layers} layers" + (f" × {student.hidden}" if student.hidden else "") + f", init {student.init}"
    words = "—"
    if recipe.stage_enabled("data_distill"):
        section = recipe.stages.data_distill
        words = f"{', '.join(section.students).upper()}, {section.labels} labels, ×{section.augment.multiplier} augmented, {section.epochs:g} epochs"
    # the teacher as written (a resolved path would name this machine's folders)
    teacher = f"`{tomllib.loads(path.read_text(encoding='utf-8')).get('teacher', {}).get('model', recipe.teacher.model)}`"
    if recipe.stage_enabled("pretrain") and recipe.stages.pretrain.from_scratch:
        teacher = "from scratch (MLM pretraining)"
    cells = [f"`recipes/{path.name}`", first_sentence(path), data, teacher, stages, shape, words]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def table(recipe_dir: Path) -> str:
    lines = [
        "| recipe | what it is | data | teacher | stages | transformer student | word-level students |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(recipe_dir.glob("*.toml")):
        lines.append(row(path, load_recipe(path)))
    lines += ["", "Written by `python tools/recipes_table.py` from the recipe files; run times and figures are in each file's header and in [results.md](results.md)."]
    return "\n".join(lines)


@click.command()
@click.option("--check", is_flag=True, help="Only compare: exit 1 when the section differs from the recipes.")
def main(check: bool) -> None:
    doc = REPO / "docs" / "recipes.md"
    if not check:
        update_section(doc, SECTION, table(REPO / "recipes"), "Shipped recipes")
        return
    with tempfile.TemporaryDirectory() as scratch:  # the check never touches the document
        copy = Path(scratch) / doc.name
        shutil.copy(doc, copy)
        update_section(copy, SECTION, table(REPO / "recipes"), "Shipped recipes")
        if copy.read_text(encoding="utf-8") != doc.read_text(encoding="utf-8"):
            sys.exit("docs/recipes.md: the shipped-recipes table is out of date; run python tools/recipes_table.py")


if __name__ == "__main__":
    main()
