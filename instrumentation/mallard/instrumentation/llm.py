"""LLM calls as OpenTelemetry GenAI spans and metrics: `llm_span()` and the `@llm_call` decorator.

A call is a CLIENT span named `"{operation} {model}"` (the GenAI semantic conventions) with:

- at the start: `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model` and the
  request parameters given (`gen_ai.request.temperature`, `.max_tokens`, `.top_p`, `.top_k`,
  `.frequency_penalty`, `.presence_penalty`, `.seed`, `.stop_sequences`);
- from `record_response()`: `gen_ai.response.model`, `gen_ai.response.id`,
  `gen_ai.usage.input_tokens` (all input tokens, cached ones included),
  `gen_ai.usage.output_tokens`, `gen_ai.usage.cache_read.input_tokens`,
  `gen_ai.response.finish_reasons` (string array);
- on an exception: `error.type` (the exception's class name), an `exception` event and status ERROR;
  the exception propagates unchanged.

The latency is the span's duration. Each call also records the GenAI client metrics:
`gen_ai.client.operation.duration` (histogram, s) and, for the counts recorded,
`gen_ai.client.token.usage` (histogram, `{token}`, `gen_ai.token.type` = `input` or `output`), with
the buckets the conventions advise. Everything goes through OpenTelemetry's global providers (those
`mallard.instrumentation.configure()` sets); before any is set, calls run untraced. Arguments are
checked: a negative or non-integer token count, or a bad operation or model, raises `ValueError` or
`TypeError` at the call that passed it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Final, ParamSpec, TypeVar, cast

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

OPERATION: Final = "gen_ai.operation.name"
PROVIDER: Final = "gen_ai.provider.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
RESPONSE_ID: Final = "gen_ai.response.id"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
TOKEN_TYPE: Final = "gen_ai.token.type"
ERROR_TYPE: Final = "error.type"
TOKEN_USAGE: Final = "gen_ai.client.token.usage"
OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
# the well-known values of gen_ai.operation.name; others are allowed (a custom operation)
OPERATIONS: Final = (
    "chat",
    "text_completion",
    "embeddings",
    "generate_content",
    "execute_tool",
    "create_agent",
    "invoke_agent",
)
# bucket boundaries the GenAI metric conventions advise
TOKEN_BUCKETS: Final = tuple(4**i for i in range(14))  # 1, 4, 16, … 67108864
DURATION_BUCKETS: Final = tuple(0.01 * 2**i for i in range(14))  # 0.01, 0.02, … 81.92 s

_SCOPE: Final = "mallard.instrumentation.llm"
_REQUEST_NUMBERS: Final = ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty")
_CURRENT: ContextVar[LlmSpan | None] = ContextVar("mallard_llm_span", default=None)

P = ParamSpec("P")
R = TypeVar("R")
AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]


class LlmSpan:
    """The handle of one LLM call: `record_response()` once the answer is in, `span` for the rest."""

    def __init__(self, span: trace.Span, metric_attributes: dict[str, str]) -> None:
        self.span = span
        self._metric_attributes = metric_attributes
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def record_response(
        self,
        *,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_tokens: int | None = None,
        finish_reasons: Sequence[str] | None = None,
        response_id: str | None = None,
    ) -> None:
        """Sets what the response says; None leaves a value unset. `input_tokens` counts every input
        token, `cached_tokens` (read from the provider's cache) included."""
        counts = {
            INPUT_TOKENS: _count("input_tokens", input_tokens),
            OUTPUT_TOKENS: _count("output_tokens", output_tokens),
            CACHE_READ_INPUT_TOKENS: _count("cached_tokens", cached_tokens),
        }
        if isinstance(finish_reasons, str) or (
            finish_reasons is not None and not all(isinstance(r, str) for r in finish_reasons)
        ):
            raise TypeError(f"finish_reasons is a sequence of str, not {finish_reasons!r}")
        if model is not None:
            _check_text("model", model)
            self.span.set_attribute(RESPONSE_MODEL, model)
            self._metric_attributes[RESPONSE_MODEL] = model
        if response_id is not None:
            self.span.set_attribute(RESPONSE_ID, response_id)
        for key, value in counts.items():
            if value is not None:
                self.span.set_attribute(key, value)
        if finish_reasons is not None:
            self.span.set_attribute(FINISH_REASONS, list(finish_reasons))
        self.input_tokens = counts[INPUT_TOKENS] if input_tokens is not None else self.input_tokens
        self.output_tokens = counts[OUTPUT_TOKENS] if output_tokens is not None else self.output_tokens

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Any other attribute of the call (e.g. `server.address`, `gen_ai.conversation.id`)."""
        self.span.set_attribute(key, value)


def current_llm_span() -> LlmSpan | None:
    """The innermost LLM call running in this context (inside `llm_span` or an `@llm_call` function)."""
    return _CURRENT.get()


@contextlib.contextmanager
def llm_span(
    model: str | None,
    *,
    provider: str | None = None,
    operation: str = "chat",
    temperature: float | None = None,
    max_tokens: int | None = None,
    top_p: float | None = None,
    top_k: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    seed: int | None = None,
    stop_sequences: Sequence[str] | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[LlmSpan]:
    """Traces the LLM call made inside the block as the current span (see the module docstring).

    `model` is the requested model (None: not known before the response), `provider` the
    `gen_ai.provider.name` (`openai`, `anthropic`, `aws.bedrock`, `gcp.vertex_ai`, …).
    """
    _check_text("operation", operation)
    if model is not None:
        _check_text("model", model)
    numbers = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "frequency_penalty": frequency_penalty,
        "presence_penalty": presence_penalty,
    }
    start: dict[str, AttributeValue] = {OPERATION: operation}
    if provider is not None:
        start[PROVIDER] = provider
    if model is not None:
        start[REQUEST_MODEL] = model
    for name in _REQUEST_NUMBERS:
        value = numbers[name]
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} is a number, not {value!r}")
            start[f"gen_ai.request.{name}"] = float(value)
    for name, count in (("max_tokens", max_tokens), ("seed", seed)):
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(f"{name} is an int, not {count!r}")
            start[f"gen_ai.request.{name}"] = count
    if stop_sequences is not None:
        start["gen_ai.request.stop_sequences"] = [str(s) for s in stop_sequences]
    metric_attributes = {k: str(v) for k, v in start.items() if k in (OPERATION, PROVIDER, REQUEST_MODEL)}
    start.update(attributes or {})
    name = operation if model is None else f"{operation} {model}"
    tracer = trace.get_tracer(_SCOPE)
    began = time.perf_counter()
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes=start,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        handle = LlmSpan(span, metric_attributes)
        token = _CURRENT.set(handle)
        try:
            yield handle
        except BaseException as exc:
            error = type(exc).__qualname__
            span.record_exception(exc)
            span.set_attribute(ERROR_TYPE, error)
            span.set_status(Status(StatusCode.ERROR, f"{error}: {exc}"))
            metric_attributes[ERROR_TYPE] = error
            raise
        finally:
            _CURRENT.reset(token)
            _record_metrics(handle, metric_attributes, time.perf_counter() - began)


def llm_call(
    model: str | None = None,
    *,
    provider: str | None = None,
    operation: str = "chat",
    on_result: Callable[[LlmSpan, Any], None] | None = None,
    **request: Any,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorates a function (sync or async) that makes one LLM call: each call runs in `llm_span`.

    `request` takes `llm_span`'s request parameters (`temperature=…`, `attributes=…`). The function
    records usage through `current_llm_span().record_response(...)`, or `on_result(span, result)`
    does it from the return value. An exception propagates after it is recorded.
    """
    _check_text("operation", operation)

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                with llm_span(model, provider=provider, operation=operation, **request) as span:
                    result = await cast(Callable[P, Awaitable[Any]], function)(*args, **kwargs)
                    if on_result is not None:
                        on_result(span, result)
                    return result

            return cast(Callable[P, R], run_async)

        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with llm_span(model, provider=provider, operation=operation, **request) as span:
                result = function(*args, **kwargs)
                if on_result is not None:
                    on_result(span, result)
                return result

        return run

    return decorate


def _record_metrics(handle: LlmSpan, attributes: dict[str, str], seconds: float) -> None:
    meter = metrics.get_meter(_SCOPE)
    meter.create_histogram(
        OPERATION_DURATION,
        unit="s",
        description="GenAI operation duration.",
        explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
    ).record(seconds, attributes)
    counts = (("input", handle.input_tokens), ("output", handle.output_tokens))
    if all(count is None for _, count in counts):
        return
    usage = meter.create_histogram(
        TOKEN_USAGE,
        unit="{token}",
        description="Number of input and output tokens used.",
        explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS),
    )
    for kind, count in counts:
        if count is not None:
            usage.record(count, {**attributes, TOKEN_TYPE: kind})


def _count(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} is an int, not {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, not {value}")
    return value


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
