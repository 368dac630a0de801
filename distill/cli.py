"""The `distill` command line: parse, call, print. Every user mistake is one line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from distill.errors import UserError

if TYPE_CHECKING:  # imported lazily at run time, so the command line starts fast
    from distill.pipeline import Run
    from distill.recipe import Recipe


def _stage_list(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. --set run.threads=1 (repeatable; the run's recipe.toml records it).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distill")
def cli() -> None:
    """Distil fine-tuned BERT-style teachers into tiny students that serve fast on a CPU."""


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--stages", "stages", help="Comma-separated stages to run (others must be done already).")
@click.option("--resume/--fresh", default=True, help="Skip finished stages and continue from checkpoints (default), or start over.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Parent folder of the run directory (default: the recipe's run.out_dir).")
@_set_option
def run(recipe: Path, stages: str | None, resume: bool, out_dir: Path | None, overrides: tuple[str, ...]) -> None:
    """Run the recipe's stages in order; finished stages are skipped."""
    from distill.pipeline import Run

    job = Run(_checked_recipe(recipe, overrides), out_dir)
    job.execute(only=_stage_list(stages), fresh=not resume)
    click.echo(f"run directory: {job.dir}")


@cli.command()
@click.argument("data_file", type=click.Path(path_type=Path))
@click.option("--teacher", help="The teacher (builtin:NAME or a model directory; default builtin:minilm-l6); its tokenizer measures the texts.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="Recipe to write (default: DATA_FILE's name with .toml, here).")
@click.option("--force", is_flag=True, help="Overwrite an existing recipe.")
def init(data_file: Path, teacher: str | None, out: Path | None, force: bool) -> None:
    """Write a commented starter recipe for a CSV/TSV/JSONL file, then validate it."""
    from distill.recipe import load_recipe
    from distill.starter import starter_recipe
    from distill.validate import check_recipe

    out = out or Path(data_file.name).with_suffix(".toml")
    if out.exists() and not force:
        raise UserError(f"{out} exists", "--out", "pass --force to overwrite it, or --out another path")
    out.write_text(starter_recipe(data_file, teacher, out), encoding="utf-8")
    click.echo(f"wrote {out}")
    for line in check_recipe(load_recipe(out)):
        click.echo(f"ok: {line}")
    click.echo(f"next: read the comments in {out}, then `distill run {out}`")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
def validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check a recipe (keys, types, data files, teacher) without training."""
    from distill.recipe import load_recipe
    from distill.validate import check_recipe

    parsed = load_recipe(recipe, overrides)
    for line in check_recipe(parsed):
        click.echo(f"ok: {line}")
    click.echo(f"{recipe}: valid; stages: {', '.join(parsed.enabled_stages())}")


def _checked_recipe(recipe: Path, overrides: tuple[str, ...], augment: bool = False) -> Recipe:
    """The recipe with its overrides, through every `distill validate` check before any stage runs."""
    from distill.recipe import load_recipe
    from distill.validate import check_recipe

    parsed = load_recipe(recipe, overrides)
    check_recipe(parsed, augment=augment)
    return parsed


def _run_through(recipe: Path, overrides: tuple[str, ...], stages: tuple[str, ...]) -> Run:
    """The checked recipe's run with those of `stages` it enables done (finished ones are skipped)."""
    from distill.pipeline import Run

    job = Run(_checked_recipe(recipe, overrides, augment=True))
    job.execute(only=[name for name in stages if job.recipe.stage_enabled(name)])
    return job


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
def augment(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Write the augmented training texts of the data-distillation path (cached in the run)."""
    from distill.stages.augmentation import run_augment

    job = _run_through(recipe, overrides, ("prepare",))  # augmentation reads the split, never the teacher
    summary = run_augment(job)
    click.echo(json.dumps(summary, indent=2))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
def label(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Let the fine-tuned teacher label the augmented texts (resumable, cached in the run)."""
    from distill.stages.augmentation import run_label

    job = _run_through(recipe, overrides, ("prepare", "pretrain", "finetune"))
    summary = run_label(job)
    click.echo(json.dumps(summary, indent=2))


@cli.command(name="export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--quantize", type=click.Choice(["none", "int8"]), default=None, help="Override the recipe's [export] quantize.")
def export_command(run_dir: Path, quantize: str | None) -> None:
    """Export the teacher and every student of a run to ONNX, with parity checks."""
    from distill.pipeline import Run
    from distill.stages.export import export_run

    summary = export_run(Run.from_dir(run_dir), quantize)
    click.echo(json.dumps(summary, indent=2))


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def eval_command(run_dir: Path) -> None:
    """Evaluate the teacher and every student of a run on its test split."""
    from distill.pipeline import Run
    from distill.stages.report import evaluate_run

    click.echo(evaluate_run(Run.from_dir(run_dir)))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Measure and write report.json/md/html/png for a run, and print the table."""
    from distill.pipeline import Run
    from distill.stages.report import report_run

    click.echo(report_run(Run.from_dir(run_dir)))


def _model_manifest(model: Path) -> Path:
    """The manifest to load: `model` itself, or the one a run or export folder names (said on stderr)."""
    from distill.export.runtime import find_manifest

    manifest = find_manifest(model)
    if manifest != model:
        click.echo(f"model: {manifest}", err=True)
    return manifest


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--text", "texts", multiple=True, help="A text to classify (repeatable).")
@click.option("--pair", "pairs", multiple=True, help="The second text of a text-pair task, one per --text (repeatable).")
@click.option("--file", "text_file", type=click.Path(dir_okay=False, path_type=Path), help="A UTF-8 file, one text per line.")
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: the count the export measured fastest for the model).")
@click.option("--batch-size", type=int, default=32, show_default=True)
def predict(
    model_dir: Path, texts: tuple[str, ...], pairs: tuple[str, ...], text_file: Path | None, threads: int | None, batch_size: int
) -> None:
    """Predict with an exported model (a manifest, an export folder with one, or a run directory:
    its report's recommended model): a label, a label set, a score or the entities per text; JSON lines out."""
    from distill.export.runtime import OnnxPredictor

    inputs = list(texts)
    if text_file is not None:
        if not text_file.is_file():
            raise UserError(f"text file not found: {text_file}", "--file", "give a UTF-8 file, one text per line")
        try:
            inputs += [line for line in text_file.read_text(encoding="utf-8").split("\n") if line.strip()]
        except UnicodeDecodeError:
            raise UserError("text file is not UTF-8", str(text_file), "re-save it as UTF-8") from None
    if not inputs:
        raise UserError("no texts to classify", None, "pass --text TEXT (repeatable) or --file FILE")
    if pairs and (text_file is not None or len(pairs) != len(texts)):
        raise UserError(
            f"{len(pairs)} --pair for {len(inputs)} texts", "--pair", "give one --pair after each --text (not with --file)"
        )
    predictor = OnnxPredictor(_model_manifest(model_dir), threads=threads, batch_size=batch_size)
    second = list(pairs) or None
    for index, prediction in enumerate(predictor.predict(inputs, second)):
        shown = {"text": inputs[index], **({"text_pair": second[index]} if second else {})}
        click.echo(json.dumps({**shown, **prediction}, ensure_ascii=False))


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: the count the export measured fastest for the model).")
@click.option("--max-batch", type=int, default=64, show_default=True, help="Most texts in one request.")
@click.option("--max-text-chars", type=int, default=2000, show_default=True, help="Longest text accepted.")
def serve(model_dir: Path, host: str, port: int, threads: int | None, max_batch: int, max_text_chars: int) -> None:
    """Serve an exported model (a manifest, or a run directory: its recommended model) as HTTP JSON:
    POST /predict, GET /health, GET /metadata."""
    from distill.export.serve import serve as serve_model

    serve_model(_model_manifest(model_dir), host, port, threads=threads, max_batch=max_batch, max_text_chars=max_text_chars)


def main() -> None:
    """Console entry point: user errors become one line and exit code 2."""
    try:
        code = cli.main(standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc.line()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C into Abort (the KeyboardInterrupt is its cause) when not standalone
        interrupted = isinstance(exc.__cause__, KeyboardInterrupt)
        click.echo("interrupted; run the same command again to resume" if interrupted else "aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except OSError as exc:
        # Disk full, permissions, a vanished mount: finished stages and checkpoints stay on disk.
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(
            f"error: cannot read or write a file{where}: {exc.strerror or exc}; "
            "free space or fix permissions, then run the same command again to resume",
            err=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
