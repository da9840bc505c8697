"""The plugin contract: one function per hook, and its docstring is the contract.

Hooks are called with keyword arguments only. An implementation may take a subset of
the arguments. Returning ``None`` means "no opinion". Collect-style hooks are named
``register_*`` and receive a ``register`` callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    import click

    from lmlens.architectures import Architecture
    from lmlens.artifacts import ArtifactStoreProtocol
    from lmlens.jobs import Job, JobQueue
    from lmlens.method import Method
    from lmlens.models import LoadedModel, LoadOptions, ModelAlias
    from lmlens.settings import Settings

hookspec = pluggy.HookspecMarker("lmlens")
hookimpl = pluggy.HookimplMarker("lmlens")


@hookspec
def register_methods(register: Callable[[Method], None]) -> None:
    """Call ``register(Method(...))`` once for each analysis method this plugin offers.

    Method names are global: two plugins registering the same name is reported as a
    load error of the second plugin, and the first one wins.
    """


@hookspec
def register_models(register: Callable[[ModelAlias], None]) -> None:
    """Call ``register(ModelAlias(...))`` for each model alias this plugin knows.

    An alias names where the weights live (a wheel, a directory, a hub id, a recipe)
    and the exact command that installs them when they are missing.
    """


@hookspec(firstresult=True)
def load_model(spec: str, options: LoadOptions) -> LoadedModel | None:
    """Turn a model spec (alias, hub id, directory, ``.gguf`` file) into a loaded model.

    The first non-``None`` answer wins. The kernel's own loader is ``trylast``, so a
    plugin can take over a spec (a remote model, a custom format) by answering first.
    Return ``None`` for specs you do not handle.
    """


@hookspec
def register_architectures(register: Callable[[Architecture], None]) -> None:
    """Call ``register(Architecture(...))`` to map a model family's modules onto the
    canonical hook point names (``embed``, ``blocks.{i}.attn.pattern``, ...).

    The kernel registers GPT-2, Llama-family and BERT; a plugin adds more.
    """


@hookspec
def register_jobs(register: Callable[[Job], None]) -> None:
    """Call ``register(Job(kind, description, params, run))`` for long-running work a
    worker can run (analyse a batch, train an SAE, fit a detector).

    ``params`` is a msgspec Struct, validated when the job is submitted, so a malformed
    payload never reaches a worker. ``run(params, context)`` reports progress, records
    finished items (a retried job resumes from them) and returns an encodable result.
    """


@hookspec(firstresult=True)
def job_queue() -> JobQueue | None:
    """Return the queue that ``Analyzer.submit`` sends jobs to (the worker adapter's
    Redis-backed queue when ``REDIS_URL`` is set), or ``None``.
    """


@hookspec
def register_panels(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Call ``register(method_name, make_figure)`` with a function that turns that
    method's Result into a Bokeh layout, for the dashboard and saved pictures.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``lmlens`` command line: ``@cli.command()``."""


@hookspec
def register_artifacts(register: Callable[[str | Path], None]) -> None:
    """Call ``register(directory)`` for each fitted artifact this plugin ships (a
    directory holding ``artifact.json`` and ``tensors.safetensors``, as
    ``ArtifactStore.save`` writes them), usually package data inside the wheel.

    Shipped artifacts are listed as ``builtin`` and are read-only; a user's artifact of
    the same kind and name takes precedence.
    """


@hookspec(firstresult=True)
def artifact_store(settings: Settings, builtins: list[Path]) -> ArtifactStoreProtocol | None:
    """Return the store that holds fitted artifacts (a shared directory, an object store)
    for every process that uses these settings, or ``None`` for the kernel's default:
    ``ArtifactStore(LMLENS_ARTIFACT_DIR or <cache dir>/artifacts, builtins)``.
    """


@hookspec
def register_verbs(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Call ``register(name, function)`` to add a convenience verb to ``Analyzer``:
    ``analyzer.<name>(*args, **kwargs)`` calls ``function(analyzer, *args, **kwargs)``.

    For the product's own names (``train_sae``, ``detect_anomalies``,
    ``predict_failure_probability``). Verb names are global; the first plugin wins.
    """
