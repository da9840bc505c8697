"""POST /analyze and /analyze/batch over real HTTP, against the in-process analyzer."""

from __future__ import annotations

import numpy as np
import pytest

from lmlens import Analyzer, wire
from lmlens.settings import Settings


@pytest.fixture
def reference(tiny_models, plain_host, tmp_path):
    """The same analysis in process: what the server must send back."""
    settings = Settings(cache_dir=str(tmp_path), default_model="tiny-gpt2")
    return Analyzer(tiny_models["gpt2"], settings=settings, plugins=plain_host)


def test_json_result_matches_in_process_analysis(server, reference) -> None:
    text = "The cat sat on the mat"
    with server.client() as client:
        response = client.post("/analyze", json={"text": text, "methods": ["attention"],
                                                 "params": {"attention": {"layers": [1], "patterns": True}}})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    expected = reference.analyze(text, methods=["attention"], params={"attention": {"layers": [1]}})
    assert body["text"] == text and body["model"]["name"] == "tiny-gpt2"
    assert [t["text"] for t in body["tokens"]] == [t.text for t in expected.tokens]
    attention = body["methods"]["attention"]
    assert attention["kind"] == "attention" and attention["layers"] == [1]
    np.testing.assert_allclose(np.array(attention["patterns"]), expected.methods["attention"].patterns,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.array(attention["entropy"]), expected.methods["attention"].entropy,
                               rtol=1e-6, atol=1e-7)


def test_msgpack_in_and_out_keeps_float32_exactly(server, reference) -> None:
    text = "bytes on the wire"
    request = wire.to_msgpack({"text": text, "model": "tiny-llama", "params": {"attention": {"patterns": True}}})
    with server.client() as client:
        response = client.post("/analyze", content=request, headers={
            "content-type": "application/msgpack", "accept": "application/msgpack"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/msgpack"
    typed = wire.result_type(m.result for m in server.service.host.methods.values())
    result = wire.from_msgpack(response.content, typed)
    patterns = result.methods["attention"].patterns
    assert patterns.dtype == np.float32 and patterns.shape[:2] == (2, 4)
    llama = Analyzer(reference.load_model("tiny-llama"), settings=reference.settings,
                     plugins=reference.plugins).analyze(text, methods=["attention"])
    np.testing.assert_array_equal(patterns, llama.methods["attention"].patterns)


def test_second_request_is_a_cache_hit(server) -> None:
    with server.client() as client:
        first = client.post("/analyze", json={"text": "cache me"}).json()
        second = client.post("/analyze", json={"text": "cache me"}).json()
        other = client.post("/analyze", json={"text": "cache me",
                                              "params": {"attention": {"patterns": True}}}).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["methods"] == first["methods"]
    assert first["methods"]["attention"]["patterns"] is None  # over HTTP: summaries unless asked
    assert other["cached"] is False and other["methods"]["attention"]["patterns"] is not None


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({}, 422, "invalid_request", "text"),
        ({"text": 3}, 422, "invalid_request", "text"),
        ({"text": "x", "surprise": 1}, 422, "invalid_request", "surprise"),
        ({"text": "x", "params": {"attention": {"layers": ["a"]}}}, 422, "invalid_request",
         "params.attention.layers[0]"),
        ({"text": "x", "params": {"attention": {"layers": [7]}}}, 422, "invalid_params",
         "params.attention.layers"),
        ({"text": "x", "params": {"nope": {}}}, 422, "invalid_request", "params.nope"),
        ({"text": "   "}, 400, "empty_text", "text"),
        ({"text": "x", "methods": ["nope"]}, 400, "unknown_method", "methods"),
        ({"text": "x", "methods": []}, 422, "invalid_params", "methods"),
        ({"text": "x" * 600}, 413, "text_too_long", "text"),
    ],
)
def test_bad_input_gets_code_and_field(server, body, status, code, field) -> None:
    with server.client() as client:
        response = client.post("/analyze", json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["field"] == field


@pytest.mark.parametrize("model", ["gpt2", "openai-community/gpt2", "/tmp", "./model.gguf",
                                   "smollm2-135m", "tiny:gpt2"])
def test_only_allowlisted_models(server, model) -> None:
    with server.client() as client:
        response = client.post("/analyze", json={"text": "x", "model": model})
    assert response.status_code == 403
    assert response.json()["code"] == "model_not_allowed" and response.json()["field"] == "model"
    assert model not in server.service.loaded_models()


def test_malformed_and_oversized_bodies(make_server, plain_host) -> None:
    srv = make_server(plain_host, max_body_bytes=1000)
    with srv.client() as client:
        malformed = client.post("/analyze", content=b'{"text": ', headers={"content-type": "application/json"})
        big = client.post("/analyze", json={"text": "x" * 2000})
        xml = client.post("/analyze", content=b"<text/>", headers={"content-type": "application/xml"})
        bad_msgpack = client.post("/analyze", content=b"\xc1", headers={"content-type": "application/msgpack"})
    assert (malformed.status_code, malformed.json()["code"]) == (400, "malformed_body")
    assert (big.status_code, big.json()["code"]) == (413, "body_too_large")
    assert (xml.status_code, xml.json()["code"]) == (415, "unsupported_media_type")
    assert (bad_msgpack.status_code, bad_msgpack.json()["code"]) == (400, "malformed_body")


def test_unknown_route_and_method(server) -> None:
    with server.client() as client:
        missing = client.get("/nowhere")
        wrong = client.get("/analyze")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert (wrong.status_code, wrong.json()["code"]) == (405, "method_not_allowed")


def test_batch_matches_single_requests(server) -> None:
    texts = ["one", "two words", "three little words"]
    with server.client() as client:
        full = {"attention": {"patterns": True}}
        batch = client.post("/analyze/batch", json={"texts": texts, "batch_size": 2,
                                                    "methods": ["attention"], "params": full})
        singles = [client.post("/analyze", json={"text": t, "params": full}).json() for t in texts]
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert [r["text"] for r in results] == texts
    for got, single in zip(results, singles, strict=True):
        np.testing.assert_allclose(got["methods"]["attention"]["patterns"],
                                   single["methods"]["attention"]["patterns"], rtol=1e-6)


def test_batch_limits_and_field_paths(make_server, plain_host) -> None:
    srv = make_server(plain_host, max_batch_size=3)
    with srv.client() as client:
        too_many = client.post("/analyze/batch", json={"texts": ["a"] * 4})
        empty_one = client.post("/analyze/batch", json={"texts": ["a", " "]})
        no_texts = client.post("/analyze/batch", json={"texts": []})
        big_chunk = client.post("/analyze/batch", json={"texts": ["a"], "batch_size": 9})
    assert (too_many.status_code, too_many.json()["code"], too_many.json()["field"]) == (
        413, "batch_too_large", "texts")
    assert (empty_one.status_code, empty_one.json()["field"]) == (400, "texts[1]")
    assert (no_texts.status_code, no_texts.json()["field"]) == (422, "texts")
    assert (big_chunk.status_code, big_chunk.json()["field"]) == (422, "batch_size")


def test_integer_beyond_64_bits_is_a_422_not_a_500(server) -> None:
    # found by the schemathesis fuzz: JSON allows it, the cache key cannot hold it
    with server.client() as client:
        response = client.post("/analyze", json={"text": "x", "params": {"attention": {"layers": [2**70]}}})
    assert response.status_code == 422
    assert response.json()["field"] == "params.attention"


def test_the_kernel_enforces_the_same_allowlist(server) -> None:
    # defence in depth: even code that reaches the analyzer directly cannot load others
    from lmlens.errors import UnknownModelError

    assert server.service.analyzer.settings.allowed_models == server.service.allowed
    with pytest.raises(UnknownModelError):
        server.service.analyzer.load_model("openai-community/gpt2")
