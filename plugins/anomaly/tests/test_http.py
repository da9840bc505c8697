"""The anomaly method over HTTP and the WebSocket, with the shipped tiny default."""

from __future__ import annotations

import json

import pytest

from lmlens.plugins import PluginHost

http_testing = pytest.importorskip("lmlens_http.testing", reason="the HTTP adapter (lmlens-http) is not installed")
websockets_client = pytest.importorskip("websockets.sync.client", reason="websockets is not installed")


def test_anomaly_over_http_and_websocket() -> None:
    from lmlens_http import create_app

    host = PluginHost(load=["anomaly", "http"])
    odd = "zq#x@@ 9f9f9f $$%% kkqq zz!! ##88 {{~~}} 0x1f 77&&"
    with http_testing.running(create_app(http_testing.tiny_config(), host=host)) as srv:
        with srv.client() as client:
            answer = client.post("/analyze", json={"text": odd, "methods": ["anomaly"]})
            bad = client.post(
                "/analyze", json={"text": odd, "methods": ["anomaly"], "params": {"anomaly": {"detector": "nope"}}}
            )
        with websockets_client.connect(srv.ws_url) as ws:
            ws.send(json.dumps({"type": "analyze", "text": odd, "methods": ["anomaly"], "id": "a1",
                                "params": {"anomaly": {"check_attention": False}}}))
            while True:
                message = json.loads(ws.recv(timeout=60))
                if message["type"] in ("complete", "error"):
                    break
    assert answer.status_code == 200, answer.text
    found = answer.json()["methods"]["anomaly"]
    assert found["detector"] == "tiny-gpt2-default" and found["is_anomaly"] is True
    assert {s["name"] for s in found["anomaly_types"]} and len(found["token_scores"]) == len(answer.json()["tokens"])
    assert bad.status_code == 404 and bad.json()["code"] == "artifact_not_found"
    assert message["type"] == "complete", message
    over_ws = message["data"]["methods"]["anomaly"]
    assert {s["group"] for s in over_ws["signals"]} == {"activations", "surprisal", "text"}
