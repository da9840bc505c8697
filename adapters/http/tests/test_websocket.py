"""WS /ws with a real WebSocket client: progress, completion, errors, MessagePack frames."""

from __future__ import annotations

import json

import numpy as np
from websockets.sync.client import connect

from lmlens import wire


def receive_until_done(ws) -> list[dict]:
    messages = []
    while True:
        message = json.loads(ws.recv(timeout=30))
        messages.append(message)
        if message["type"] in ("complete", "error"):
            return messages


def test_progress_then_complete(make_server, test_host) -> None:
    srv = make_server(test_host)
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps({"type": "analyze", "text": "hello there", "methods": ["attention", "recorder"],
                            "params": {"attention": {"patterns": True}}, "id": "r1"}))
        messages = receive_until_done(ws)
    progress = [(m["data"]["stage"], m["data"]["method"]) for m in messages[:-1]]
    assert progress == [("start", None), ("end", None), ("start", "attention"), ("end", "attention"),
                        ("start", "recorder"), ("end", "recorder")]
    assert all(m["type"] == "progress" and m["id"] == "r1" and m["data"]["message"] for m in messages[:-1])
    complete = messages[-1]
    assert complete["type"] == "complete" and complete["id"] == "r1"
    assert complete["data"]["methods"]["recorder"]["n_tokens"] == len("hello there")
    with srv.client() as client:  # the same answer as over HTTP (which is now a cache hit)
        http = client.post("/analyze", json={"text": "hello there", "methods": ["attention", "recorder"],
                                             "params": {"attention": {"patterns": True}}})
    assert http.json()["cached"] is True
    np.testing.assert_allclose(http.json()["methods"]["attention"]["patterns"],
                               complete["data"]["methods"]["attention"]["patterns"])


def test_errors_leave_the_socket_usable(server) -> None:
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "analyze", "text": "x", "methods": ["nope"]}))
        unknown = receive_until_done(ws)
        ws.send("{not json")
        malformed = receive_until_done(ws)
        ws.send(json.dumps({"type": "dance"}))
        wrong_type = receive_until_done(ws)
        ws.send(json.dumps({"type": "analyze", "text": "x", "model": "gpt2"}))
        not_allowed = receive_until_done(ws)
        ws.send(json.dumps({"type": "analyze", "text": "still here"}))
        ok = receive_until_done(ws)
    assert unknown == [{"type": "error", "data": {"code": "unknown_method", "message": unknown[0]["data"]["message"],
                                                  "field": "methods"}, "id": None}]
    assert malformed[0]["data"]["code"] == "malformed_body"
    assert wrong_type[0]["data"]["code"] == "unknown_message_type"
    assert not_allowed[0]["data"]["code"] == "model_not_allowed"
    assert ok[-1]["type"] == "complete" and ok[-1]["data"]["text"] == "still here"


def test_cache_hit_sends_one_progress_event_then_complete(server) -> None:
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "analyze", "text": "twice"}))
        first = receive_until_done(ws)
        ws.send(json.dumps({"type": "analyze", "text": "twice"}))
        second = receive_until_done(ws)
    assert len(first) == 5 and first[-1]["data"]["cached"] is False
    assert len(second) == 2 and second[-1]["data"]["cached"] is True
    assert second[0]["data"]["stage"] == "cached" and second[0]["data"]["message"] == "found in the cache"


def test_msgpack_frames_get_msgpack_answers(server) -> None:
    with connect(server.ws_url) as ws:
        ws.send(wire.to_msgpack({"type": "analyze", "text": "packed", "params": {"attention": {"patterns": True}}}))
        frames = []
        while True:
            frame = ws.recv(timeout=30)
            assert isinstance(frame, bytes)
            message = wire.from_msgpack(frame, dict)
            frames.append(message)
            if message["type"] != "progress":
                break
    assert frames[-1]["type"] == "complete"
    patterns = frames[-1]["data"]["methods"]["attention"]["patterns"]
    array = np.frombuffer(patterns["data"], dtype=patterns["dtype"]).reshape(patterns["shape"])
    assert array.shape == (2, 4, 6, 6)
    np.testing.assert_allclose(array.sum(-1), 1.0, rtol=1e-5)  # each row a distribution


def test_progress_messages_for_every_stage() -> None:
    from lmlens_http.websocket import progress_message

    assert progress_message("start", "").message == "forward pass started"
    assert progress_message("end", "attention").method == "attention"
    window = progress_message("window", "2/5")
    assert (window.stage, window.message, window.method) == ("window", "window 2/5", None)
