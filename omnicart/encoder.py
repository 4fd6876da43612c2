"""Sentence encoders: L2-normalised MiniLM sentence embeddings by torch or onnxruntime, the ONNX export of the encoder,
its dynamic int8 quantisation, and encoding throughput."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384  # all-MiniLM-L6-v2's sentence vectors


class Encoder:
    """L2-normalised sentence embeddings from a sentence-transformers folder, run by torch or by onnxruntime.

    The ONNX path (``onnx_file``) exports the same transformer and does the mean pooling here; it needs neither
    torch nor sentence-transformers at serving time."""

    def __init__(
        self, directory: Path, onnx_file: Path | None = None, device: str | None = None, threads: int | None = None
    ) -> None:
        self.directory = Path(directory)
        self.onnx_file = Path(onnx_file) if onnx_file else None
        self.device = device
        self.threads = threads
        self._model: Any = None
        self._session: Any = None
        self._tokenizer: Any = None

    @property
    def backend(self) -> str:
        return "torch" if self.onnx_file is None else f"onnx:{self.onnx_file.name}"

    def torch_model(self) -> Any:
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder; never reach for a model hub
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.directory), device=self.device or "cpu")
        return self._model

    def encode(self, texts: Sequence[str], max_length: int, batch_size: int = 64) -> np.ndarray:
        texts = [t if t else " " for t in texts]
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        if self.onnx_file is None:
            model = self.torch_model()
            model.max_seq_length = max_length
            vectors = model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
            )
            return np.asarray(vectors, dtype=np.float32)
        return self._encode_onnx(texts, max_length, batch_size)

    def _encode_onnx(self, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
        if self._session is None:
            import onnxruntime as ort
            from tokenizers import Tokenizer

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(str(self.onnx_file), options, providers=["CPUExecutionProvider"])
            self._inputs = {i.name for i in self._session.get_inputs()}
            self._tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        tok = self._tokenizer
        tok.enable_truncation(max_length)
        tok.enable_padding()  # to the longest in the batch
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = tok.encode_batch([texts[i] for i in idx])
            ids = np.asarray([e.ids for e in enc], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feeds)[0]
            pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out


def export_onnx(encoder_dir: Path, path: Path) -> Path:
    """Export the transformer of a sentence-transformers folder to ONNX (dynamic batch and sequence axes)."""
    import torch

    model = Encoder(encoder_dir).torch_model()
    transformer = model[0].auto_model.to("cpu").eval()
    tokens = model.tokenizer(
        ["an example question", "a second, longer example sentence"], return_tensors="pt", padding=True
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class _Hidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001 - traced
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "hidden"]}
    with torch.no_grad():
        torch.onnx.export(
            _Hidden(transformer),
            tuple(tokens[n] for n in names),
            str(path),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, and dynamic axes as declared
        )
    return path


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantisation of the weights (per channel), activations quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    return target


def throughput(encoder: Encoder, texts: Sequence[str], max_length: int) -> float:
    """Sentences per second of ``encoder`` on ``texts`` (one warm-up batch first)."""
    encoder.encode(list(texts[:8]), max_length)
    started = time.perf_counter()
    encoder.encode(list(texts), max_length)
    return len(texts) / max(time.perf_counter() - started, 1e-9)
