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


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory):
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
    torch.manual_seed(0)
    model = build_shallow(config).eval()
    return export_shallow(
        model, config, vocab, tmp_path_factory.mktemp("onnx"), "bow", TEXTS
    ).manifest_path


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

    def fail(texts):
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
