import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from distill.data.words import WordTokenizer, WordVocab
from distill.export.onnx import export_shallow
from distill.export.runtime import OnnxPredictor
from distill.export.serve import create_app
from distill.models.shallow import ShallowConfig, build_shallow

LABELS = ["negative", "positive"]
TEXTS = [
    "a good film",
    "bad plot",
    "the acting was awful and the plot was bad",
    "good good good",
    "fine",
    "",
]
MAX_BATCH = 4
MAX_CHARS = 50


def export_bow(out_dir, name: str, seed: int = 0):
    """A random BOW student exported as out_dir/NAME.onnx + NAME.json; returns the manifest path."""
    splitter = WordTokenizer("en")
    vocab = WordVocab.build(splitter.split(text) for text in TEXTS)
    config = ShallowConfig(
        kind="bow",
        vocab_size=len(vocab),
        num_labels=2,
        embed_dim=16,
        hidden=16,
        max_len=16,
        id2label=dict(enumerate(LABELS)),
    )
    torch.manual_seed(seed)
    model = build_shallow(config).eval()
    return export_shallow(model, config, vocab, out_dir, name, TEXTS).manifest_path


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory):
    return export_bow(tmp_path_factory.mktemp("onnx"), "bow")


@pytest.fixture(scope="module")
def predictor(manifest_path):
    return OnnxPredictor(manifest_path, threads=1, batch_size=2)


@pytest.fixture(scope="module")
def client(predictor):
    """A real uvicorn server on a free local port, stopped after the module's tests."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(predictor, MAX_BATCH, MAX_CHARS), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start within 10 s")
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        yield http
    server.should_exit = True
    thread.join(timeout=10)
    listener.close()
    assert not thread.is_alive()


def test_health(client):
    response = client.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_metadata(client):
    metadata = client.get("/metadata").json()
    assert (metadata["name"], metadata["kind"], metadata["labels"]) == ("bow", "bow", LABELS)
    assert metadata["limits"] == {"max_batch": MAX_BATCH, "max_text_chars": MAX_CHARS}


def test_predict_equals_predictor(client, predictor):
    response = client.post("/predict", json={"texts": TEXTS[:MAX_BATCH]})
    assert response.status_code == 200
    assert response.json() == {"predictions": predictor.predict(TEXTS[:MAX_BATCH])}


def test_malformed_json_is_400(client):
    response = client.post(
        "/predict", content=b'{"texts": ["a"', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"texts": [1, 2]},
        {"texts": "one text"},
        {"text": ["a"]},
        {"texts": ["a"], "extra": 1},
        ["a"],
        {"texts": []},
    ],
    ids=["numbers", "string", "misspelt-key", "unknown-key", "bare-list", "empty-list"],
)
def test_wrong_shape_is_422(client, body):
    assert client.post("/predict", json=body).status_code == 422


def test_too_many_texts_is_413(client):
    response = client.post("/predict", json={"texts": ["good"] * (MAX_BATCH + 1)})
    assert response.status_code == 413
    assert f"at most {MAX_BATCH}" in response.json()["detail"]


def test_too_long_text_is_413(client):
    response = client.post("/predict", json={"texts": ["good", "x" * (MAX_CHARS + 1)]})
    assert response.status_code == 413
    assert "text 1" in response.json()["detail"]


def test_concurrent_requests_agree_with_predictor(client, predictor):
    requests = [[TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % MAX_BATCH)] for i in range(200)]
    expected = [predictor.predict(texts) for texts in requests]

    def ask(texts):
        response = client.post("/predict", json={"texts": texts})
        response.raise_for_status()
        return response.json()["predictions"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, requests, timeout=60))
    assert answers == expected


def test_internal_failure_is_logged_and_500_without_details(manifest_path, monkeypatch, caplog):
    broken = OnnxPredictor(manifest_path)

    def fail(texts, pairs=None):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(broken, "predict", fail)
    with TestClient(create_app(broken), raise_server_exceptions=False) as local:
        response = local.post("/predict", json={"texts": ["good"]})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "secret internals" in caplog.text


def test_serve_module_does_not_import_torch():
    code = "import sys, distill.export.serve; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with two exported models in onnx/, its report recommending the second."""
    run = tmp_path_factory.mktemp("run")
    export_bow(run / "onnx", "bow", seed=0)
    export_bow(run / "onnx", "fast", seed=1)
    recommended = {"name": "fast", "manifest": "onnx/fast.json", "why": "the fastest"}
    (run / "report.json").write_text(json.dumps({"recommended": recommended}), encoding="utf-8")
    return run


def test_predict_on_a_run_directory_uses_the_recommended_model(run_dir, distill_main):
    code, out, err = distill_main("predict", run_dir, "--text", "a good film", "--text", "bad plot")
    assert code == 0, err
    assert err == f"model: {run_dir / 'onnx' / 'fast.json'}\n"
    expected = OnnxPredictor(run_dir / "onnx" / "fast.json").predict(["a good film", "bad plot"])
    assert [json.loads(line) for line in out.splitlines()] == [
        {"text": text, **prediction} for text, prediction in zip(["a good film", "bad plot"], expected)
    ]
    code, out, err = distill_main("predict", run_dir / "onnx" / "bow.json", "--text", "a good film")
    assert code == 0 and err == ""  # a manifest still picks any model


def test_serve_on_a_run_directory_serves_the_recommended_model(run_dir, distill_main, monkeypatch):
    served = []
    monkeypatch.setattr("distill.export.serve.serve", lambda model, *args, **kwargs: served.append(model))
    code, _, err = distill_main("serve", run_dir)
    assert code == 0, err
    assert served == [run_dir / "onnx" / "fast.json"]


def test_an_export_folder_with_several_models_points_to_the_run_directory(run_dir, distill_main):
    code, _, err = distill_main("predict", run_dir / "onnx", "--text", "a")
    assert code == 2
    assert "several exported models found (bow.json, fast.json)" in err and "the run directory" in err


def test_a_report_without_a_recommendation_is_one_error_line(run_dir, tmp_path, distill_main):
    shutil.copytree(run_dir / "onnx", tmp_path / "onnx")
    (tmp_path / "report.json").write_text("{}", encoding="utf-8")
    code, _, err = distill_main("predict", tmp_path, "--text", "a")
    assert code == 2 and err.startswith("error: the report recommends no model") and err.count("\n") == 1
