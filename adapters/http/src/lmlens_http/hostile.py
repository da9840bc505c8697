"""A corpus of hostile request bodies, for the tests and ``bench/fuzz_service.py``.

Each entry is ``(name, content_type, body)``; the bodies are bytes as a client could
send them. None of them may get a 5xx from any body-taking route or the WebSocket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import msgspec

JSON = "application/json"
MSGPACK = "application/msgpack"


def _j(obj: object) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def _m(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


def bodies(text_field: str = "text", wrap_job: bool = False) -> Iterator[tuple[str, str, bytes]]:
    """Hostile bodies for a route whose text lives in ``text_field`` (``text`` or ``texts``);
    ``wrap_job`` puts the analyze fields inside ``{"kind": "analyze_batch", "params": ...}``."""

    def shape(fields: dict[str, object]) -> dict[str, object]:
        if text_field == "texts" and "text" in fields:
            fields = dict(fields)
            fields["texts"] = [fields.pop("text")]
        return {"kind": "analyze_batch", "params": fields} if wrap_job else fields

    def body(fields: dict[str, object]) -> bytes:
        return _j(shape(dict(fields)))

    def raw(fragment: bytes) -> bytes:
        """``fragment`` is the bytes of the text value (quotes included)."""
        texts = b"[" + fragment + b"]" if text_field == "texts" else fragment
        fields = b'{"' + text_field.encode() + b'":' + texts + b"}"
        return b'{"kind":"analyze_batch","params":' + fields + b"}" if wrap_job else fields

    yield "invalid utf-8 in a string", JSON, raw(b'"a\xff"'.replace(b"\\xff", b"\xff"))
    yield "invalid utf-8 outside strings", JSON, b"\xff\xfe{}"
    yield "lone surrogate escape", JSON, raw(b'"\\ud800 x"')
    yield "utf-16 body", JSON, json.dumps(shape({"text": "hi"})).encode("utf-16")
    yield "msgpack invalid utf-8", MSGPACK, _m(shape({"text": "a@"})).replace(b"a@", b"a\xff")
    for depth in (100, 1000, 100_000):
        yield f"nested arrays {depth}", JSON, b'{"text":"a","params":' + b"[" * depth + b"]" * depth + b"}"
        yield f"nested objects {depth}", JSON, (b'{"kind":"analyze_batch","params":' + b'{"a":' * depth + b"1"
                                                + b"}" * depth + b"}")
    nested = b"\x91" * 3000 + b"\x01"  # MessagePack: 3000 one-element arrays around 1
    prefix = _m(shape({"text": "a", "params": 0}))
    yield "msgpack nested 3000", MSGPACK, prefix[:-1] + nested  # the params value is the last byte
    yield "empty body", JSON, b""
    yield "not json", JSON, b"{text: a}"
    yield "truncated", JSON, b'{"text": "a'
    yield "json null", JSON, b"null"
    yield "json array", JSON, b"[1,2,3]"
    yield "json string", JSON, b'"text"'
    yield "huge number", JSON, body({"text": "a", "params": {"attention": {"top_k": 2**70}}})
    yield "huge negative", JSON, body({"text": "a", "params": {"attention": {"layers": [-(2**70)]}}})
    yield "huge batch_size", JSON, _j({"texts": ["a"], "batch_size": 2**70}) if text_field == "texts" else body(
        {"text": "a", "params": {"head_importance": {"batch_size": 2**64}}})
    yield "NaN", JSON, b'{"text": "a", "params": {"head_patterns": {"threshold": NaN}}}'
    yield "Infinity", JSON, b'{"text": "a", "params": {"head_patterns": {"threshold": Infinity}}}'
    yield "1e999", JSON, b'{"text": "a", "params": {"head_patterns": {"threshold": 1e999}}}'
    yield "float for int", JSON, body({"text": "a", "params": {"attention": {"top_k": 2.5}}})
    yield "integral float for int", JSON, body({"text": "a", "params": {"attention": {"top_k": 2.0}}})
    yield "negative top_k", JSON, body({"text": "a", "params": {"attention": {"top_k": -1}}})
    yield "text number", JSON, body({"text": 5})
    yield "text null", JSON, body({"text": None})
    yield "text object", JSON, body({"text": {"a": 1}})
    yield "methods string", JSON, body({"text": "a", "methods": "attention"})
    yield "methods numbers", JSON, body({"text": "a", "methods": [1, 2]})
    yield "methods empty", JSON, body({"text": "a", "methods": []})
    yield "methods unknown", JSON, body({"text": "a", "methods": ["sae", "../../etc"]})
    yield "model path", JSON, body({"text": "a", "model": "/etc"})
    yield "model hub", JSON, body({"text": "a", "model": "gpt2"})
    yield "model number", JSON, body({"text": "a", "model": 7})
    yield "params list", JSON, body({"text": "a", "params": [1]})
    yield "params unknown method", JSON, body({"text": "a", "params": {"nope": {}}})
    yield "params not requested", JSON, body({"text": "a", "params": {"head_importance": {}}})
    yield "layers out of range", JSON, body({"text": "a", "params": {"attention": {"layers": [99]}}})
    yield "heads out of range", JSON, body({"text": "a", "params": {"attention": {"heads": [-99]}}})
    yield "unknown field", JSON, body({"text": "a", "surprise": 1})
    yield "empty text", JSON, body({"text": ""})
    yield "whitespace text", JSON, body({"text": " \n\t "})
    yield "NUL text", JSON, body({"text": "\x00\x00"})
    yield "long text", JSON, body({"text": "word " * 40_000})
    yield "many tokens", JSON, body({"text": "a " * 3000})
    yield "control chars", JSON, body({"text": "".join(chr(i) for i in range(1, 32)) + "x"})
    yield "rtl and emoji", JSON, body({"text": "\u202e\U0001f600\u200b" * 50})
    yield "duplicate keys", JSON, b'{"text": "a", "text": "b"}'
    yield "5 MB", JSON, body({"text": "a" * (5 * 2**20)})
    if text_field == "texts":
        yield "texts empty", JSON, _j(shape({"texts": []}) if wrap_job else {"texts": []})
        yield "texts 20000", JSON, _j(shape({"texts": ["a"] * 20_000}) if wrap_job else {"texts": ["a"] * 20_000})
        yield "texts with empty", JSON, _j(shape({"texts": ["a", "b", "", "c"]}) if wrap_job else
                                          {"texts": ["a", "b", "", "c"]})
    if wrap_job:
        yield "kind unknown", JSON, _j({"kind": "rm -rf", "params": {}})
        yield "kind number", JSON, _j({"kind": 1, "params": {}})
        yield "params string", JSON, _j({"kind": "analyze_batch", "params": "x"})
        yield "no kind", JSON, _j({"params": {}})


def wrong_content_types(body: bytes) -> Iterator[tuple[str, str | None, bytes]]:
    yield "text/plain", "text/plain", body
    yield "no content type", None, body
    yield "form", "application/x-www-form-urlencoded", body
    yield "multipart", "multipart/form-data; boundary=x", body
    yield "xml", "application/xml", body


def _as_analyze(body: bytes, msgpack: bool) -> bytes:
    """The same hostile bytes with ``"type": "analyze"`` added to the top-level object."""
    if msgpack:
        if body[:1] and 0x80 <= body[0] < 0x8F:  # a fixmap: one more entry, first
            return bytes([body[0] + 1]) + b"\xa4type\xa7analyze" + body[1:]
        return body
    stripped = body.lstrip()
    if stripped.startswith(b"{"):
        rest = stripped[1:].lstrip()
        comma = b"" if rest.startswith(b"}") else b","
        return b'{"type":"analyze"' + comma + stripped[1:]
    return body


def ws_frames() -> Iterator[tuple[str, str | bytes]]:
    """Text frames (str) are JSON, binary frames (bytes) MessagePack."""
    for name, content_type, body in bodies():
        if content_type == MSGPACK:
            yield name, _as_analyze(body, True)
        else:
            framed = _as_analyze(body, False)
            try:
                yield name, framed.decode("utf-8")
            except UnicodeDecodeError:
                yield name + " (as binary)", framed
    yield "type unknown", '{"type": "subscribe"}'
    yield "type number", '{"type": 5}'
    yield "no type", '{"text": "a"}'
    yield "follow no job", '{"type": "follow"}'
    yield "follow bad id", '{"type": "follow", "job": "x:result"}'
    yield "follow deep", '{"type": "follow", "job": ' + "[" * 5000 + "]" * 5000 + "}"
    yield "analyze deep", '{"type": "analyze", "text": "a", "params": ' + "{\"a\":" * 2000 + "1" + "}" * 2000 + "}"
