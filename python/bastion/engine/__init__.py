"""The engine seam (protocol.py) and its vLLM implementation. Importing this package imports no vllm."""
