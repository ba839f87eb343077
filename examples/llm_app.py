"""An LLM app without an LLM: a fake chat completion traced as GenAI spans, priced by mallard at ingest.

    mallard serve --data ./data                      # another terminal
    python examples/llm_app.py --endpoint localhost:4317 --questions 20

Each question is a trace: an `answer` span, a `chat gpt-4o-mini` call (tokens from the fake
completion, part of the prompt served from the provider's cache), sometimes an `embeddings` call,
and one question in ten fails with a timeout (status ERROR, `error.type` = `TimeoutError`). Then:

    mallard sql "select gen_ai_model, count(*) calls, sum(gen_ai_input_tokens) input,
                 sum(gen_ai_output_tokens) output, sum(gen_ai_cost_usd) usd
                 from spans where gen_ai_model is not null group by all"
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

from opentelemetry import trace

from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.llm import current_llm_span, llm_call, llm_span


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """What a chat completion API answers, reduced to what is traced."""

    model: str
    text: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    finish_reason: str


def fake_completion(prompt: str, rng: random.Random) -> Completion:
    """Stands in for the provider: a short pause, an answer and its token usage."""
    time.sleep(rng.uniform(0.01, 0.05))
    if rng.random() < 0.1:
        raise TimeoutError("the provider did not answer in 30 s")
    prompt_tokens = 400 + 4 * len(prompt)  # a long system prompt, mostly cached after the first call
    completion_tokens = rng.randint(20, 300)
    return Completion(
        model="gpt-4o-mini-2024-07-18",
        text=f"An answer to {prompt!r}.",
        prompt_tokens=prompt_tokens,
        cached_tokens=384 if rng.random() < 0.8 else 0,
        completion_tokens=completion_tokens,
        finish_reason="length" if completion_tokens == 300 else "stop",
    )


@llm_call(provider="openai", model="text-embedding-3-small", operation="embeddings")
def embed(text: str) -> list[float]:
    call = current_llm_span()  # the span @llm_call opened for this call
    assert call is not None
    call.record_response(input_tokens=len(text.split()) + 2)
    return [0.0] * 8


def ask(question: str, rng: random.Random) -> str:
    with llm_span("gpt-4o-mini", provider="openai", temperature=0.2, max_tokens=300) as call:
        answer = fake_completion(question, rng)
        call.record_response(
            model=answer.model,
            input_tokens=answer.prompt_tokens,
            output_tokens=answer.completion_tokens,
            cached_tokens=answer.cached_tokens,
            finish_reasons=[answer.finish_reason],
        )
        return answer.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="localhost:4317", help="mallard's OTLP/gRPC address")
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    configure(service_name="llm-app", endpoint=args.endpoint)
    rng = random.Random(args.seed)
    tracer = trace.get_tracer("llm-app")
    failed = 0
    for i in range(args.questions):
        with tracer.start_as_current_span("answer") as span:
            question = f"question {i}: what is {rng.randint(1, 99)} squared?"
            if rng.random() < 0.3:
                embed(question)
            try:
                span.set_attribute("app.answer", ask(question, rng))
            except TimeoutError:
                failed += 1
    shutdown()  # flushes every span and metric before exiting
    print(f"{args.questions} questions sent to {args.endpoint}, {failed} failed")


if __name__ == "__main__":
    main()
