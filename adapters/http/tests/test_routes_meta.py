"""GET /plugins, /models, /health, /openapi.json, /docs, and routes added by plugins."""

from __future__ import annotations


def test_plugins_lists_installed_methods(server) -> None:
    with server.client() as client:
        plugins = {p["name"]: p for p in client.get("/plugins").json()}
    assert "attention" in plugins["attention"]["methods"]
    assert plugins["attention"]["error"] is None
    assert "register_commands" in plugins["http"]["hooks"]  # this adapter's own `lmlens serve`


def test_models_are_the_allowlist(make_server, plain_host) -> None:
    srv = make_server(plain_host, models=["tiny-gpt2", "tiny-bert"])
    with srv.client() as client:
        rows = client.get("/models").json()
    assert [r["name"] for r in rows] == ["tiny-gpt2", "tiny-bert"]
    gpt2 = rows[0]
    assert gpt2["loaded"] is True and gpt2["default"] is True and gpt2["installed"] is True
    assert rows[1]["loaded"] is False


def test_default_allowlist_is_the_registered_aliases(make_server, plain_host) -> None:
    srv = make_server(plain_host, models=None)
    assert set(srv.service.allowed) == set(plain_host.aliases)


def test_health_reports_models_cache_and_plugins(server) -> None:
    with server.client() as client:
        health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["models_loaded"] == ["tiny-gpt2"]
    assert health["cache"] == {"backend": "memory", "healthy": True, "error": None}
    assert any(p["name"] == "attention" for p in health["plugins"])


def test_openapi_describes_the_running_server(make_server, test_host) -> None:
    srv = make_server(test_host)
    with srv.client() as client:
        doc = client.get("/openapi.json").json()
        page = client.get("/docs")
    assert doc["openapi"] == "3.1.0"
    assert {"/analyze", "/analyze/batch", "/plugins", "/models", "/health", "/echo/upper"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    request = schemas["AnalyzeRequest"]["properties"]
    assert set(request["methods"]["items"]["enum"]) == set(test_host.methods)
    assert {"attention", "sleepy", "recorder"} <= set(test_host.methods)
    params = schemas["MethodParams"]["properties"]
    assert params["sleepy"]["anyOf"][0]["$ref"] == "#/components/schemas/SleepyParams"
    assert "SleepyResult" in schemas and "AttentionResult" in schemas
    assert "#/$defs/" not in str(doc)
    assert page.status_code == 200 and "POST /analyze" in page.text and "/echo/upper" in page.text
    repeat = doc["paths"]["/echo/{word}/{times}"]["get"]
    assert [p["name"] for p in repeat["parameters"]] == ["word", "times"] and "requestBody" not in repeat


def test_plugin_route_is_served(make_server, test_host) -> None:
    srv = make_server(test_host)
    with srv.client() as client:
        response = client.post("/echo/upper", json={"word": "loud"})
        packed = client.post("/echo/upper", json={"word": "x"}, headers={"accept": "application/msgpack"})
    assert response.json() == {"word": "LOUD"}
    assert client_get(srv, "/echo/ab/3") == {"word": "ababab"}
    assert packed.headers["content-type"] == "application/msgpack"


def test_a_plugin_taking_a_served_path_is_reported(make_server, greedy_host) -> None:
    srv = make_server(greedy_host)
    with srv.client() as client:
        health = client.get("/health").json()
        still_ours = client.post("/analyze", json={"text": "mine"})
    greedy = next(p for p in health["plugins"] if p["name"] == "greedy")
    assert "register_routes" in greedy["error"] and "/analyze" in greedy["error"]
    assert health["status"] == "degraded"
    assert still_ours.status_code == 200


def client_get(srv, path: str) -> object:
    with srv.client() as client:
        return client.get(path).json()


def test_artifacts_lists_fitted_artifacts_without_paths(server) -> None:
    import numpy as np

    from lmlens import Artifact, model_fingerprint

    analyzer = server.service.analyzer
    loaded = analyzer.load_model()
    analyzer.save_artifact(
        Artifact(kind="probe", name="http-probe", model=model_fingerprint(loaded), model_name=loaded.name,
                 tensors={"w": np.ones(3, dtype=np.float32)}, metrics={"auroc": 0.75})
    )
    try:
        with server.client() as client:
            rows = client.get("/artifacts", params={"kind": "probe"}).json()
            assert client.get("/artifacts", params={"kind": "nothing"}).json() == []
            assert "/artifacts" in client.get("/openapi.json").json()["paths"]
        assert [(r["name"], r["metrics"], r["path"]) for r in rows] == [("http-probe", {"auroc": 0.75}, "")]
    finally:
        analyzer.delete_artifact("probe", "http-probe")
