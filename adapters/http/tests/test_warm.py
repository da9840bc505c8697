"""The default model loads in the background at startup (``warm_default``)."""

from __future__ import annotations

from collections.abc import Callable

from lmlens import ModelAlias, hookimpl
from lmlens.plugins import PluginHost
from lmlens_http.config import load_config

BODY = {"text": "hello world", "methods": ["attention"]}


class MissingModel:
    """An alias whose weights are not installed: its load fails with ``model_not_installed``."""

    @hookimpl
    def register_models(self, register: Callable[[ModelAlias], None]) -> None:
        register(ModelAlias(name="missing-model", description="not installed", source="nowhere",
                            locate=lambda: None, install_hint="pip install missing-model"))


def test_default_model_loads_before_any_request(make_server, plain_host) -> None:
    srv = make_server(plain_host, default_model="tiny-llama", preload=[])
    service = srv.service
    assert service.warming is not None
    service.warming.join(timeout=120)
    assert not service.warming.is_alive()
    assert service.loaded_models() == ["tiny-llama"]  # no request has been made
    warmed = service.analyzer.load_model("tiny-llama")
    with srv.client() as client:
        response = client.post("/analyze", json=BODY)
    assert response.status_code == 200, response.text
    assert response.json()["model"]["name"] == "tiny-llama"
    assert service.analyzer.load_model("tiny-llama") is warmed  # the request used the warm model


def test_no_warm_load_when_off_or_preloaded(make_server, plain_host) -> None:
    off = make_server(plain_host, default_model="tiny-llama", preload=[], warm_default=False)
    assert off.service.warming is None
    assert off.service.loaded_models() == []
    with off.client() as client:  # the first request loads it, as before
        assert client.post("/analyze", json=BODY).status_code == 200
    assert off.service.loaded_models() == ["tiny-llama"]
    preloaded = make_server(plain_host, default_model="tiny-llama", preload=["tiny-llama"])
    assert preloaded.service.warming is None and preloaded.service.loaded_models() == ["tiny-llama"]
    other = make_server(plain_host, default_model="tiny-llama", preload=["tiny-gpt2"])  # the operator's choice
    assert other.service.warming is None and other.service.loaded_models() == ["tiny-gpt2"]


def test_a_failed_warm_load_answers_requests_as_before(make_server) -> None:
    """The warm load's error is logged; a request gets the same status and code as without it."""
    answers = []
    for warm in (True, False):
        host = PluginHost(load=["attention", "http"])
        host.register(MissingModel(), name="missing")
        srv = make_server(host, default_model="missing-model", models=["missing-model"], preload=[],
                          warm_default=warm)
        if warm:
            assert srv.service.warming is not None
            srv.service.warming.join(timeout=120)
        assert srv.service.loaded_models() == []
        with srv.client() as client:
            response = client.post("/analyze", json=BODY)
        answers.append((response.status_code, response.json()["code"]))
    assert answers[0] == answers[1]
    assert answers[0][1] == "model_not_installed"


def test_warm_default_from_the_environment() -> None:
    assert load_config(env={}).warm_default is True
    assert load_config(env={"LMLENS_WARM_DEFAULT": "false"}).warm_default is False
    assert load_config(env={"LMLENS_WARM_DEFAULT": "0"}).warm_default is False
