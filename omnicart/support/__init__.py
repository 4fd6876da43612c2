"""The support family's model code: answer a customer's question from past answers, or hand it over to a person.

- ``dataset``: ``SupportDataset`` (pairs to learn from, questions to evaluate on, further knowledge-base entries),
  PII scrubbing of it, and the benchmark protocols' split of canonical pairs
- ``bm25``: the tokenizer (stop words, Snowball stems) and the BM25 index
- ``encoder``: MiniLM sentence embeddings by torch or onnxruntime; ONNX export, int8 quantisation, throughput
- ``intents``: the intent classifier (logistic regression on question embeddings)
- ``knowledge``: the knowledge base (unique answers, their questions, dense and BM25 indexes), product scopes
- ``fusion``: the weighted sum of the five scores of each doc and the tuning of its weights on validation data
- ``calibration``: the confidence that the top answer is right and the threshold that meets a target precision
- ``finetune``: MultipleNegativesRankingLoss fine-tuning of MiniLM, both towers or the query tower only
- ``fit``: the whole model fitted from a scrubbed dataset into a directory of plain files (no Ray)
- ``predictor``: ``SupportModel``, the MLflow pyfunc serving loads (the model directory as an artifact)
"""

NAME = "support"
