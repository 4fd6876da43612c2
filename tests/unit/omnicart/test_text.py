"""MiniLM text vectors: the CPU path runs the bundled model's fp32 ONNX export, which must give torch's vectors."""

from __future__ import annotations

import numpy as np

from omnicart import text

TEXTS = [
    "Stainless steel kettle. 1.7 litre, boils in three minutes. Kitchen. Acme",
    "Where is my order? It was due on Monday.",
    "a",
    "word " * 400,  # past the model's 256 tokens: both truncate the same way
]


def test_the_onnx_path_gives_torch_s_vectors(tmp_path):
    onnx = text.encode(TEXTS + [""], tmp_path / "cache")
    model = text.encoder()
    model.max_seq_length = text.MAX_LENGTH
    torch_vectors = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert onnx.shape == (5, text.DIM) and not onnx[-1].any()  # an empty text is the zero vector
    assert np.abs(onnx[:-1] - torch_vectors).max() < 1e-4
    assert np.allclose(np.linalg.norm(onnx[:-1], axis=1), 1.0, atol=1e-5)
    assert np.array_equal(text.encode(TEXTS[:2], tmp_path / "cache"), onnx[:2])  # read back from the cache
    assert text.onnx_encoder().onnx_file.is_file()
