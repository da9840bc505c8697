"""``POST /predict/failure {"text", "threshold"}``, served by lmlens-http (``register_routes``).

It runs the ``failure`` method through the service (validation, allowlist, cache, the
bounded pool, time limit), so it answers exactly what ``/analyze`` with
``methods=["failure"]`` answers, only the method's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from lmlens.errors import InvalidParamsError


class PredictFailureRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: str
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    predictor: str | None = None  # artifact name; default: the newest fitted on the model, else "default"
    top_k: Annotated[int, msgspec.Meta(ge=0, le=32)] = 5
    model: str | None = None


async def predict_failure(request: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    from lmlens_failure.api import resolve_name

    body = await request.body()
    try:
        payload = msgspec.json.decode(body, type=PredictFailureRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidParamsError(f"the body is not a valid failure prediction request: {exc}", field="body") from None
    service = request.app.state.service
    params: dict[str, Any] = {"threshold": payload.threshold, "top_k": payload.top_k}
    if payload.predictor is not None:
        params["predictor"] = payload.predictor
    prep = service.prepare(payload.text, payload.model, ["failure"], {"failure": params})
    if payload.predictor is None:
        loaded = await run_in_threadpool(service.load, prep.model)
        name = await run_in_threadpool(resolve_name, service.analyzer, loaded, None)
        prep = service.prepare(payload.text, payload.model, ["failure"], {"failure": {**params, "predictor": name}})
    result = await service.analyze(prep)
    return result.methods["failure"]


def register(register_route: Callable[..., None]) -> None:
    from lmlens_failure.method import FailureResult

    register_route(
        "/predict/failure",
        predict_failure,
        methods=("POST",),
        request=PredictFailureRequest,
        response=FailureResult,
        summary="How likely the model is to get this text wrong (the failure method)",
    )
