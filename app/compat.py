"""Routes for clients that already speak another protocol: TEI's `POST /predict` and the HF Inference API's `POST /`.

Both translate their grammar into a ClassifyRequest and run it through the /classify handler, so a long
input is chunked and aggregated, never truncated. Their errors keep longdoc's status codes but use TEI's
body `{"error": "...", "error_type": "..."}`; `CompatRoute` is the one place that maps them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import GuardedRoute, ServiceDep, classify_until_disconnect, error_responses
from app.errors import (
    BODY_REJECTIONS,
    REJECTION_STATUSES,
    InvalidInput,
    LongdocError,
    http_error_message,
    validation_message,
)
from app.schemas import ClassifyBatchResult, ClassifyRequest, ClassifyResult
from app.service import ClassifierService

log = logging.getLogger(__name__)

# Smallest positive float: keeps the log of a probability that underflowed to 0 finite (JSON has no -inf).
_TINY = 5e-324


def tei_error_type(status: int) -> str:
    """TEI's error vocabulary (its ErrorType enum) for a longdoc status code."""
    if status == 429:
        return "Overloaded"
    if status == 503:
        return "Unhealthy"
    if status >= 500 or status == 499:
        return "Backend"
    return "Validation"


def tei_error(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None, reason: str | None = None
) -> JSONResponse:
    """TEI's error body; rejections are counted under the same reasons as on /classify."""
    if reason is not None and status in REJECTION_STATUSES:
        request.app.state.metrics.rejected.labels(reason=reason).inc()
    return JSONResponse({"error": message, "error_type": tei_error_type(status)}, status, headers=headers)


class CompatRoute(GuardedRoute):
    """A guarded route whose every error (auth, validation, limits, overload, bugs) answers in TEI's body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LongdocError as exc:
                return tei_error(request, exc.status_code, exc.message, exc.headers, exc.reason)
            except RequestValidationError as exc:
                status, _, message = validation_message(exc)
                return tei_error(request, status, message)
            except StarletteHTTPException as exc:
                reason = BODY_REJECTIONS.get(exc.status_code)
                message = http_error_message(exc, request)
                return tei_error(request, exc.status_code, message, exc.headers, reason)
            except Exception as exc:
                log.exception("unhandled error")
                return tei_error(request, 500, f"{type(exc).__name__}: {exc}")

        return route


class Prediction(BaseModel):
    score: float
    label: str


class TeiPredictRequest(BaseModel):
    """TEI's classifier input; a pair of sequences is refused since a document is one text."""

    inputs: StrictStr | list[StrictStr] | list[list[StrictStr]] = Field(
        description='A string, `["string"]`, or a batch of single-element lists `[["a"], ["b"]]`.',
        examples=["A long article ...", [["first article"], ["second article"]]],
    )
    truncate: StrictBool | None = Field(
        None, description="Accepted and ignored: nothing is truncated, long inputs are chunked."
    )
    truncation_direction: str | None = Field(None, description="Accepted and ignored, like `truncate`.")
    raw_scores: StrictBool = Field(False, description="Scores before the activation (see docs/clients.md).")


FunctionToApply = Literal["sigmoid", "softmax", "none"]


class TextClassificationParameters(BaseModel):
    top_k: Annotated[StrictInt, Field(ge=1)] | None = Field(None, description="Only the k best labels.")
    function_to_apply: FunctionToApply | None = Field(
        None, description="Default: the model's own (softmax, or sigmoid for a multi-label model)."
    )


class TextClassificationRequest(BaseModel):
    """What `huggingface_hub.InferenceClient.text_classification` posts."""

    inputs: StrictStr | list[StrictStr] = Field(description="One text, or several.")
    parameters: TextClassificationParameters | None = None


_PAIR_MESSAGE = (
    "sentence pairs are not supported: longdoc classifies single documents of any length; send one text, "
    'or a batch of single-element lists [["a"], ["b"]]'
)


def tei_texts(inputs: str | list[str] | list[list[str]]) -> tuple[list[str], list[str], bool]:
    """The texts of a TEI `inputs` value, how errors name them, and whether it was a batch (a batch answers
    one list per input)."""
    if isinstance(inputs, str):
        return [inputs], ["inputs"], False
    if not inputs:
        raise InvalidInput("inputs must not be empty")
    if all(isinstance(item, str) for item in inputs):
        if len(inputs) == 2:
            raise InvalidInput(_PAIR_MESSAGE)
        if len(inputs) != 1:
            raise InvalidInput(f'inputs is a list of {len(inputs)} strings; a batch is [["a"], ["b"], ...]')
        return [str(inputs[0])], ["inputs[0]"], False
    texts = []
    for index, sequence in enumerate(inputs):
        if len(sequence) == 2:
            raise InvalidInput(f"inputs[{index}]: {_PAIR_MESSAGE}")
        if len(sequence) != 1:
            raise InvalidInput(f"inputs[{index}] must hold exactly one string, not {len(sequence)}")
        texts.append(str(sequence[0]))
    return texts, [f"inputs[{index}][0]" for index in range(len(texts))], True


async def _classify_texts(
    texts: list[str], names: list[str], request: Request, service: ClassifierService
) -> list[ClassifyResult]:
    body = ClassifyRequest(text=texts[0]) if len(texts) == 1 else ClassifyRequest(texts=texts)
    result = await classify_until_disconnect(body, request, service, names)
    return result.results if isinstance(result, ClassifyBatchResult) else [result]


def raw_scores(result: ClassifyResult, multi_label: bool) -> dict[str, float]:
    """Each label's score before the activation, recovered from the aggregated scores.

    Multi-label: the logit of each sigmoid score. Single-label: the log-probability, which is the aggregated
    logit less one constant shared by every label (softmax keeps only logit differences).
    """
    if multi_label:
        return {s.label: math.log(max(s.score, _TINY)) - math.log(max(1.0 - s.score, _TINY)) for s in result.scores}
    return {s.label: math.log(max(s.score, _TINY)) for s in result.scores}


def _sigmoid(value: float) -> float:
    """Overflow-free: a log-probability of a float32 zero is about -744, and exp(744) overflows a float."""
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    small = math.exp(value)
    return small / (1.0 + small)


def apply_function(result: ClassifyResult, multi_label: bool, function: FunctionToApply | None) -> list[Prediction]:
    """Scores under `function` (None: the model's own activation), best first."""
    native = "sigmoid" if multi_label else "softmax"
    if function is None or function == native:
        scores = {s.label: s.score for s in result.scores}
    else:
        raw = raw_scores(result, multi_label)
        if function == "none":
            scores = raw
        elif function == "sigmoid":
            scores = {label: _sigmoid(value) for label, value in raw.items()}
        else:
            top = max(raw.values())
            exps = {label: math.exp(value - top) for label, value in raw.items()}
            total = sum(exps.values())
            scores = {label: value / total for label, value in exps.items()}
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    return [Prediction(label=label, score=score) for label, score in ranked]


class TeiError(BaseModel):
    """TEI's error body, which every error of these routes answers with."""

    error: str
    error_type: str


router = APIRouter(
    route_class=CompatRoute, responses=error_responses(400, 401, 408, 413, 415, 422, 429, 500, 503, 504, model=TeiError)
)


@router.post(
    "/predict",
    response_model=list[Prediction] | list[list[Prediction]],
    summary="text-embeddings-inference compatible classification (long inputs are chunked, not truncated)",
)
async def predict(
    body: TeiPredictRequest, request: Request, service: ServiceDep
) -> list[Prediction] | list[list[Prediction]]:
    texts, names, batch = tei_texts(body.inputs)
    multi = service.engine.multi_label
    function: FunctionToApply | None = "none" if body.raw_scores else None
    results = await _classify_texts(texts, names, request, service)
    answers = [apply_function(result, multi, function) for result in results]
    return answers if batch else answers[0]


@router.post(
    "/",
    response_model=list[list[Prediction]],
    summary="Hugging Face Inference API text classification, for `InferenceClient(model=<this url>)`",
)
async def text_classification(
    body: TextClassificationRequest, request: Request, service: ServiceDep
) -> list[list[Prediction]]:
    if isinstance(body.inputs, str):
        texts, names = [body.inputs], ["inputs"]
    else:
        texts, names = body.inputs, [f"inputs[{index}]" for index in range(len(body.inputs))]
    if not texts:
        raise InvalidInput("inputs must not be empty")
    parameters = body.parameters or TextClassificationParameters()
    multi = service.engine.multi_label
    results = await _classify_texts(texts, names, request, service)
    return [apply_function(result, multi, parameters.function_to_apply)[: parameters.top_k] for result in results]
