"""Answering a question: the pipeline and its steps (``pipeline``, ``stages``), the answer cache, the
generators (llama.cpp in a worker process, an OpenAI-compatible server such as vLLM, the extractive fallback)
behind the fallback chain, and the guard that reads an answer while it streams."""
