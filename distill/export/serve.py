"""HTTP JSON endpoint over an exported student (FastAPI + uvicorn, no torch).

Status codes a client can act on: 400 body is not valid JSON; 422 valid JSON of the wrong
shape (missing `texts`, not a list of strings, empty list, unknown keys, pairs for a model
that reads single texts); 413 too many texts in one request or a text longer than the
character limit. A 500 means a bug on the server side, never bad input.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from distill.errors import UserError
from distill.export.runtime import OnnxPredictor

logger = logging.getLogger(__name__)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] = Field(
        min_length=1, description="texts to classify, at most the server's max_batch"
    )
    pairs: list[StrictStr] | None = Field(
        default=None, description="the second text of each text, for a text-pair task"
    )


class LabelPrediction(BaseModel):
    """A single-label task's answer."""

    model_config = ConfigDict(extra="forbid")
    label: str
    probabilities: dict[str, float]


class LabelSetPrediction(BaseModel):
    """A multi-label task's answer, at the manifest's tuned thresholds."""

    model_config = ConfigDict(extra="forbid")
    labels: list[str]
    probabilities: dict[str, float]


class ScorePrediction(BaseModel):
    """A regression task's answer."""

    model_config = ConfigDict(extra="forbid")
    score: float


class Entity(BaseModel):
    """An entity found in a text: character offsets into it (end exclusive), so `text` is
    `text[start:end]`, and the mean probability of its tags."""

    model_config = ConfigDict(extra="forbid")
    start: int
    end: int
    type: str
    score: float
    text: str


class EntityPrediction(BaseModel):
    """A token-classification task's answer: the text's tokens, a tag per token, the entities."""

    model_config = ConfigDict(extra="forbid")
    text: str
    tokens: list[str]
    tags: list[str]
    entities: list[Entity]


class PredictResponse(BaseModel):
    predictions: list[LabelPrediction | LabelSetPrediction | ScorePrediction | EntityPrediction]


def create_app(
    predictor: OnnxPredictor, max_batch: int = 64, max_text_chars: int = 2000
) -> FastAPI:
    """A FastAPI app with `POST /predict`, `GET /health` and `GET /metadata` over `predictor`."""
    if max_batch < 1 or max_text_chars < 1:
        raise UserError(
            f"max_batch and max_text_chars must be >= 1, got {max_batch} and {max_text_chars}",
            "serve",
            "use positive limits",
        )
    app = FastAPI(title=f"distill: {predictor.name}")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    def metadata() -> dict[str, object]:
        return {
            "name": predictor.name,
            "kind": predictor.kind,
            "task": predictor.family.name,
            "labels": predictor.labels,
            "thresholds": predictor.thresholds,
            "token_split": predictor.token_split,
            "quantization": predictor.manifest.get("quantization", "none"),
            "max_length": predictor.manifest["max_length"],
            "limits": {"max_batch": max_batch, "max_text_chars": max_text_chars},
        }

    @app.post("/predict", response_model=PredictResponse)
    async def predict(request: PredictRequest) -> dict[str, object]:
        if len(request.texts) > max_batch:
            raise HTTPException(
                413, f"{len(request.texts)} texts in one request; send at most {max_batch}"
            )
        if request.pairs is not None and not predictor.reads_pairs:
            raise HTTPException(422, "this model reads single texts; send no pairs")
        if request.pairs is not None and len(request.pairs) != len(request.texts):
            raise HTTPException(422, f"{len(request.pairs)} pairs for {len(request.texts)} texts; send one pair per text")
        for name, items in (("text", request.texts), ("pair", request.pairs or [])):
            for index, text in enumerate(items):
                if len(text) > max_text_chars:
                    raise HTTPException(
                        413, f"{name} {index} has {len(text)} characters; the limit is {max_text_chars}"
                    )
        # onnxruntime's run() is thread-safe and releases the GIL: keep the event loop free.
        return {"predictions": await run_in_threadpool(predictor.predict, request.texts, request.pairs)}

    return app


async def _validation_error(request: Request, error: RequestValidationError) -> Response:
    """400 for a body that is not JSON at all, 422 for JSON of the wrong shape.

    The offending input is not echoed back (it may be bytes that are not UTF-8, or NaN), and
    keys the client sent (in `loc`) are ASCII-escaped, as they may hold lone surrogates.
    """
    errors = error.errors()
    status = 400 if any(item["type"] == "json_invalid" for item in errors) else 422
    detail = [{key: value for key, value in item.items() if key != "input"} for item in errors]
    body = json.dumps({"detail": jsonable_encoder(detail)}, ensure_ascii=True)
    return Response(body, status_code=status, media_type="application/json")


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("prediction failed on %s %s", request.method, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal server error"})


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
    batch_size: int = 32,
    max_batch: int = 64,
    max_text_chars: int = 2000,
) -> None:
    """Serves the exported student in `model_dir` (or one manifest) until interrupted."""
    predictor = OnnxPredictor(model_dir, threads=threads, batch_size=batch_size)
    uvicorn.run(create_app(predictor, max_batch, max_text_chars), host=host, port=port)
