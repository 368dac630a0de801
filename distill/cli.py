"""The `distill` command line: parse, call, print. Every user mistake is one line, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from distill.errors import UserError


def _stage_list(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distill")
def cli() -> None:
    """Distil fine-tuned BERT-style teachers into tiny students that serve fast on a CPU."""


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--stages", "stages", help="Comma-separated stages to run (others must be done already).")
@click.option("--resume/--fresh", default=True, help="Skip finished stages and continue from checkpoints (default), or start over.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Parent folder of the run directory (default: the recipe's run.out_dir).")
def run(recipe: Path, stages: str | None, resume: bool, out_dir: Path | None) -> None:
    """Run the recipe's stages in order; finished stages are skipped."""
    from distill.pipeline import Run
    from distill.recipe import load_recipe

    parsed = load_recipe(recipe)
    job = Run(parsed, out_dir)
    job.execute(only=_stage_list(stages), fresh=not resume)
    click.echo(f"run directory: {job.dir}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
def validate(recipe: Path) -> None:
    """Check a recipe (keys, types, data files, teacher) without training."""
    from distill.recipe import load_recipe
    from distill.validate import check_recipe

    parsed = load_recipe(recipe)
    for line in check_recipe(parsed):
        click.echo(f"ok: {line}")
    click.echo(f"{recipe}: valid; stages: {', '.join(parsed.enabled_stages())}")


def main() -> None:
    """Console entry point: user errors become one line and exit code 2."""
    try:
        code = cli.main(standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc.line()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
