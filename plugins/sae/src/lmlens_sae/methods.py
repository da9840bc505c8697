"""Methods: ``sae_features`` (alias ``sae``, the seed's name) and ``sae_feature``.

Which SAE a request uses is the ``sae`` param (an artifact name of kind ``sae``); left
out, it is the shipped default for SmolLM2-135M. The kernel checks the artifact against
the loaded model before any work (``artifact_model_mismatch``).

The SAE's hook point is only known once its artifact is read, and a plan sees the params
and the model's shape facts only, so the methods run their own stopped-early pass to the
SAE's point (``run_forward`` with one ``Need``). When ``sae_features`` is the only method
the shared pass has nothing to do, so the request costs a pass up to the SAE's layer plus
the encoding: less than one full forward pass for a middle layer.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import torch

from lmlens import InvalidParamsError, LoadedModel, Method, Need, Plan, Result, Trace, run_forward
from lmlens.wire import Float32Array
from lmlens_sae import __version__
from lmlens_sae.activations import flat, make_windows, stream_activations
from lmlens_sae.record import KIND, SAERecord

Int32Array = npt.NDArray[np.int32]
DEFAULT_SAE = "smollm2-135m-res15-topk"
# the SAE a request uses when it names none, per model (all ship in this plugin's wheel)
DEFAULTS = {
    "smollm2-135m": DEFAULT_SAE,
    "tiny-gpt2": "tiny-gpt2-res1-topk",
    "tiny-llama": "tiny-llama-res1-topk",
    "tiny-bert": "tiny-bert-res1-topk",
}


class SAEFeaturesParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sae: str | None = None  # artifact name; None: the shipped default
    top: int = 8  # features listed per token, strongest first


class FeatureSummary(msgspec.Struct, frozen=True, kw_only=True):
    feature: int
    max_activation: float
    mean_activation: float  # over the tokens where it fires
    n_tokens: int  # tokens of this text where it fires
    density: float | None  # share of held-out tokens it fires on when the SAE was evaluated


class SAEFeaturesResult(Result, frozen=True, kw_only=True, tag="sae_features"):
    sae: str
    point: str
    architecture: str
    d_sae: int
    feature_ids: Int32Array  # [pos, top]: active features, strongest first; -1 pads
    activations: Float32Array  # [pos, top]: their activations; 0 pads
    l0: Int32Array  # [pos]: how many features fire on the token
    reconstruction_error: Float32Array  # [pos]: ||x - x_hat||^2 / ||x||^2
    excluded: list[bool]  # [pos]: positions the SAE was not trained on (first position, special tokens)
    top_features: list[FeatureSummary]  # the text's strongest features


class SAEResult(SAEFeaturesResult, frozen=True, kw_only=True, tag="sae"):
    """The same result under the seed's method name ``sae``."""


class SAEFeatureParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    feature: int
    sae: str | None = None
    corpus: list[str] | None = None  # texts to search; None: the SAE plugin's bundled sample + the analysed text
    top_contexts: int = 10
    window: int = 8  # tokens of context either side
    bins: int = 20
    logit_tokens: int = 10


class FeatureContext(msgspec.Struct, frozen=True, kw_only=True):
    before: str
    token: str
    after: str
    activation: float
    text_index: int  # -1: the analysed text


class TokenScore(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    id: int
    score: float


class SAEFeatureResult(Result, frozen=True, kw_only=True, tag="sae_feature"):
    sae: str
    point: str
    feature: int
    n_tokens: int  # corpus tokens searched
    density: float  # share of those tokens where the feature fires
    eval_density: float | None  # share of the SAE's held-out evaluation tokens (from the artifact)
    max_activation: float
    contexts: list[FeatureContext]
    histogram_counts: list[int]  # of the non-zero activations
    histogram_edges: list[float]
    promoted: list[TokenScore]  # logit lens of the decoder direction: most raised next tokens
    suppressed: list[TokenScore]
    activations: Float32Array  # [pos]: this feature on the analysed text


def default_sae(model_name: str) -> str:
    """The shipped SAE for a model; ``artifact_not_found`` naming the way out when there is none."""
    from lmlens import ArtifactNotFoundError

    name = DEFAULTS.get(model_name)
    if name is None:
        raise ArtifactNotFoundError(
            f"no default SAE ships for {model_name}; train one (analyzer.train_sae(...), `lmlens sae train`, "
            "the job sae.train) or import one (`lmlens sae import`), then pass params {'sae': NAME}",
            field="sae",
        )
    return name


def _sae_name(params: Any, trace: Trace) -> str:
    return params.sae or default_sae(trace.model.name)


def _artifacts(params: Any, loaded: LoadedModel) -> list[tuple[str, str]]:
    # the named SAE, or this model's shipped default: checked by the kernel before any work,
    # and its content hash keys the result cache
    return [(KIND, params.sae or default_sae(loaded.name))]


_records: OrderedDict[str, SAERecord] = OrderedDict()
_lock = threading.Lock()


def load_record(trace: Trace, name: str) -> SAERecord:
    artifact = trace.artifact(KIND, name)
    key = artifact.content_hash or f"{artifact.name}:{id(artifact)}"
    with _lock:
        found = _records.get(key)
        if found is not None:
            _records.move_to_end(key)
            return found
    record = SAERecord.from_artifact(artifact)
    with _lock:
        _records[key] = record
        while len(_records) > 4:
            _records.popitem(last=False)
    return record


def _excluded(trace: Trace) -> list[bool]:
    specials = set(getattr(trace.model.tokenizer, "all_special_ids", []) or [])
    return [i == 0 or t.id in specials for i, t in enumerate(trace.tokens)]


def _features_plan(info: Any, params: SAEFeaturesParams) -> Plan:
    if not 1 <= params.top <= 64:
        raise InvalidParamsError("top must be in 1..64", field="params.sae_features.top")
    return Plan(needs=())


@torch.no_grad()
def point_activations(trace: Trace, point: str) -> torch.Tensor:
    """[pos, d] at ``point`` for the analysed text (the shared pass's, or a stopped-early one)."""
    if point in trace.activations:
        return flat(trace.activations[point])[0].float()
    out = run_forward(trace.model, [Need(point)], input_ids=trace.input_ids)
    return flat(out[point])[0].float()


def _run_features(trace: Trace, params: SAEFeaturesParams, result: type[SAEFeaturesResult]) -> SAEFeaturesResult:
    record = load_record(trace, _sae_name(params, trace))
    sae = record.sae
    x = point_activations(trace, record.point)
    with torch.no_grad():
        f = sae.encode(x)  # [pos, d_sae]
        recon = sae.decode(f)
    top = min(params.top, sae.d_sae)
    values, ids = f.topk(top, dim=-1)
    active = values > 0
    ids = torch.where(active, ids, torch.full_like(ids, -1))
    values = torch.where(active, values, torch.zeros_like(values))
    err = ((x - recon).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-12)).numpy()
    excluded = _excluded(trace)
    # summary over the positions the SAE is meant for
    keep = torch.tensor([not e for e in excluded])
    fk = f[keep] if bool(keep.any()) else f
    fires = (fk > 0).sum(0)
    order = torch.argsort(fk.max(0).values, descending=True)[: 2 * top]
    density = record.sae_density
    summary = [
        FeatureSummary(
            feature=int(j),
            max_activation=float(fk[:, j].max()),
            mean_activation=float(fk[:, j][fk[:, j] > 0].mean()) if int(fires[j]) else 0.0,
            n_tokens=int(fires[j]),
            density=float(density[j]) if density is not None else None,
        )
        for j in order.tolist()
        if int(fires[j]) > 0
    ]
    return result(
        sae=record.name,
        point=record.point,
        architecture=sae.cfg.architecture,
        d_sae=sae.d_sae,
        feature_ids=ids.numpy().astype(np.int32),
        activations=values.numpy().astype(np.float32),
        l0=(f > 0).sum(-1).numpy().astype(np.int32),
        reconstruction_error=err.astype(np.float32),
        excluded=excluded,
        top_features=summary,
    )


# --- sae_feature -------------------------------------------------------------------------------

_corpus_cache: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()


def _bundled_corpus() -> list[str]:
    from importlib.resources import files

    path = files("lmlens_sae") / "default" / "corpus.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return []
    return [p for p in text.split("\n\n\n") if p.strip()]


def _feature_plan(info: Any, params: SAEFeatureParams) -> Plan:
    field = "params.sae_feature"
    if params.feature < 0:
        raise InvalidParamsError("feature must be >= 0", field=f"{field}.feature")
    if not 1 <= params.top_contexts <= 100:
        raise InvalidParamsError("top_contexts must be in 1..100", field=f"{field}.top_contexts")
    if not 0 <= params.window <= 64:
        raise InvalidParamsError("window must be in 0..64", field=f"{field}.window")
    if not 2 <= params.bins <= 200:
        raise InvalidParamsError("bins must be in 2..200", field=f"{field}.bins")
    if not 1 <= params.logit_tokens <= 100:
        raise InvalidParamsError("logit_tokens must be in 1..100", field=f"{field}.logit_tokens")
    if params.corpus is not None and (len(params.corpus) > 256 or sum(len(t) for t in params.corpus) > 400_000):
        raise InvalidParamsError("corpus: at most 256 texts and 400,000 characters", field=f"{field}.corpus")
    return Plan(needs=())


@torch.no_grad()
def _encode_corpus(trace: Trace, record: SAERecord, texts: list[str]) -> dict[str, Any]:
    """Per corpus token: its window/position and the SAE's codes (kept sparse: top 64)."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    key = (record.content_hash or record.name, digest)
    with _lock:
        hit = _corpus_cache.get(key)
    if hit is not None:
        return hit
    loaded = trace.model
    windows = make_windows(loaded, texts, context=128)
    # which text each window came from (make_windows keeps text order)
    sources: list[int] = []
    for i, text in enumerate(texts):
        if not text or not text.strip():
            continue
        n = len(make_windows(loaded, [text], context=128).windows)
        sources += [i] * n
    ids_list, vals_list, where = [], [], []
    special = set(getattr(loaded.tokenizer, "all_special_ids", []) or [])
    for _, acts in stream_activations(loaded, windows, record.point, batch_windows=16):
        f = record.sae.encode(acts)
        k = min(64, f.shape[1])
        vals, idx = f.topk(k, dim=-1)
        ids_list.append(idx.to(torch.int32))
        vals_list.append(vals)
        del f
    for w_index, window in enumerate(windows.windows):
        for p, tok in enumerate(window):
            if p == 0 or tok in special:
                continue
            where.append((w_index, p))
    entry = {
        "windows": windows.windows,
        "sources": sources,
        "where": where,
        "ids": torch.cat(ids_list) if ids_list else torch.zeros((0, 1), dtype=torch.int32),
        "vals": torch.cat(vals_list) if vals_list else torch.zeros((0, 1)),
    }
    with _lock:
        _corpus_cache[key] = entry
        while len(_corpus_cache) > 4:
            _corpus_cache.popitem(last=False)
    return entry


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=True)) if ids else ""


@torch.no_grad()
def logit_lens(loaded: Any, direction: torch.Tensor, n: int) -> tuple[list[TokenScore], list[TokenScore]]:
    """Tokens a residual direction raises and lowers through the final norm's gain and the unembedding."""
    head = loaded.model.get_output_embeddings() if hasattr(loaded.model, "get_output_embeddings") else None
    if head is None or not loaded.info.has_lm_head:
        return [], []
    w_u = head.weight.float()  # [vocab, d]
    try:
        norm = loaded.modules.resolve("final").module
        gain = getattr(norm, "weight", None)
    except Exception:
        gain = None
    d = direction.float() * (gain.float() if gain is not None and gain.shape == direction.shape else 1.0)
    scores = w_u @ d
    tok = loaded.tokenizer

    def rows(values: torch.Tensor, idx: torch.Tensor) -> list[TokenScore]:
        return [TokenScore(token=_decode(tok, [int(i)]), id=int(i), score=float(v)) for v, i in zip(values, idx,
                                                                                                       strict=True)]

    up = scores.topk(min(n, scores.numel()))
    down = (-scores).topk(min(n, scores.numel()))
    return rows(up.values, up.indices), rows(-down.values, down.indices)


def _run_feature(trace: Trace, params: SAEFeatureParams) -> SAEFeatureResult:
    record = load_record(trace, _sae_name(params, trace))
    sae = record.sae
    if params.feature >= sae.d_sae:
        raise InvalidParamsError(f"feature {params.feature} does not exist: {record.name} has {sae.d_sae} features "
                                 f"(0..{sae.d_sae - 1})", field="params.sae_feature.feature")
    j = params.feature
    x = point_activations(trace, record.point)
    with torch.no_grad():
        text_acts = sae.encode(x)[:, j].numpy().astype(np.float32)
    excluded = _excluded(trace)
    texts = list(params.corpus) if params.corpus is not None else _bundled_corpus()
    corpus = _encode_corpus(trace, record, texts) if texts else None
    tok = trace.model.tokenizer
    candidates: list[tuple[float, int, int, int]] = []  # (activation, text index, window, position)
    all_acts: list[np.ndarray] = []
    n_tokens = 0
    if corpus is not None and corpus["ids"].numel():
        hit = corpus["ids"] == j
        acts = torch.where(hit, corpus["vals"], torch.zeros_like(corpus["vals"])).sum(-1)  # [n_tok]
        n_tokens = int(acts.shape[0])
        all_acts.append(acts.numpy())
        order = torch.argsort(acts, descending=True)[: params.top_contexts]
        for t in order.tolist():
            if float(acts[t]) <= 0:
                break
            w, p = corpus["where"][t]
            candidates.append((float(acts[t]), corpus["sources"][w], w, p))
    # the analysed text counts too
    text_ids = trace.input_ids[0].tolist()
    kept = np.array([not e for e in excluded])
    all_acts.append(text_acts[kept])
    n_tokens += int(kept.sum())
    for p in np.argsort(-text_acts)[: params.top_contexts].tolist():
        if excluded[p] or text_acts[p] <= 0:
            continue
        candidates.append((float(text_acts[p]), -1, -1, p))
    candidates.sort(key=lambda c: -c[0])
    contexts = []
    for act, source, w, p in candidates[: params.top_contexts]:
        ids = text_ids if w < 0 else corpus["windows"][w]  # type: ignore[index]
        contexts.append(FeatureContext(
            before=_decode(tok, ids[max(0, p - params.window):p]),
            token=_decode(tok, [ids[p]]),
            after=_decode(tok, ids[p + 1:p + 1 + params.window]),
            activation=act,
            text_index=source,
        ))
    values = np.concatenate(all_acts) if all_acts else np.zeros(0, dtype=np.float32)
    positive = values[values > 0]
    if positive.size:
        counts, edges = np.histogram(positive, bins=params.bins)
    else:
        counts, edges = np.zeros(params.bins, dtype=np.int64), np.linspace(0, 1, params.bins + 1)
    promoted, suppressed = logit_lens(trace.model, sae.W_dec[j].detach() / sae.scale, params.logit_tokens)
    density = record.sae_density
    return SAEFeatureResult(
        sae=record.name,
        point=record.point,
        feature=j,
        n_tokens=int(values.size),
        density=float(positive.size / max(values.size, 1)),
        eval_density=float(density[j]) if density is not None else None,
        max_activation=float(positive.max()) if positive.size else 0.0,
        contexts=contexts,
        histogram_counts=[int(c) for c in counts],
        histogram_edges=[float(e) for e in edges],
        promoted=promoted,
        suppressed=suppressed,
        activations=text_acts,
    )


_TOKEN_FIELDS = {"feature_ids": 0, "activations": 0, "l0": 0, "reconstruction_error": 0, "excluded": 0}

SAE_FEATURES = Method(
    name="sae_features",
    description="sparse autoencoder features per token: active features, activations, reconstruction error",
    params=SAEFeaturesParams,
    result=SAEFeaturesResult,
    needs=lambda info, params: (),
    plan=_features_plan,
    run=lambda trace, params: _run_features(trace, params, SAEFeaturesResult),
    version=__version__,
    token_fields=_TOKEN_FIELDS,
    artifacts=_artifacts,
)

SAE = Method(
    name="sae",
    description="the seed's name for sae_features: SAE features per token",
    params=SAEFeaturesParams,
    result=SAEResult,
    needs=lambda info, params: (),
    plan=_features_plan,
    run=lambda trace, params: _run_features(trace, params, SAEResult),
    version=__version__,
    token_fields=_TOKEN_FIELDS,
    artifacts=_artifacts,
)

SAE_FEATURE = Method(
    name="sae_feature",
    description="what one SAE feature means: top-activating contexts, histogram, logit lens, density",
    params=SAEFeatureParams,
    result=SAEFeatureResult,
    needs=lambda info, params: (),
    plan=_feature_plan,
    run=_run_feature,
    version=__version__,
    token_fields={"activations": 0},
    artifacts=_artifacts,
)

METHODS = (SAE_FEATURES, SAE, SAE_FEATURE)
