"""Settings layers: defaults < config.yaml < environment < flags."""

from __future__ import annotations

import pytest

from lmlens_http.config import ConfigError, ServiceConfig, kernel_settings, load_config


def test_defaults_without_anything(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml here
    assert load_config(env={}) == ServiceConfig()


def test_layers_override_in_order(tmp_path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("port: 9000\nhost: 0.0.0.0\ncache_ttl: 10\nmodels: [tiny-gpt2]\n")
    env = {"API_PORT": "9100", "CACHE_TTL": "2.5", "REDIS_URL": "redis://r:6379/1",
           "LMLENS_MODELS": "tiny-gpt2, tiny-bert", "MAX_BATCH_SIZE": "4", "MEMORY_LIMIT_GB": "3"}
    config = load_config(file, env=env, port=9200, host=None)
    assert config.port == 9200  # flag beats environment beats file
    assert config.host == "0.0.0.0"  # file (the flag was not given)
    assert config.cache_ttl == 2.5 and config.redis_url == "redis://r:6379/1"
    assert config.models == ["tiny-gpt2", "tiny-bert"]
    assert config.max_batch_size == 4 and config.memory_limit_gb == 3.0


def test_config_path_from_environment(tmp_path) -> None:
    file = tmp_path / "elsewhere.yaml"
    file.write_text("workers: 3\n")
    assert load_config(env={"LMLENS_CONFIG": str(file)}).workers == 3


@pytest.mark.parametrize(
    ("env", "field"),
    [({"API_PORT": "eighty"}, "port"), ({"API_WORKERS": "0"}, "workers"), ({"CACHE_TTL": "-1"}, "cache_ttl")],
)
def test_bad_values_name_their_field(env, field) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert f"$.{field}" in info.value.message


def test_unknown_file_setting_is_an_error(tmp_path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("prot: 80\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(file, env={})


def test_kernel_settings_follow_the_service(tmp_path) -> None:
    config = ServiceConfig(model_device="cpu", model_cache_dir=str(tmp_path), max_sequence_length=128,
                           default_model="tiny-bert", memory_limit_gb=2)
    settings = kernel_settings(config)
    assert (settings.device, settings.cache_dir, settings.max_sequence_length) == ("cpu", str(tmp_path), 128)
    assert settings.default_model == "tiny-bert" and settings.memory_limit_gb == 2
