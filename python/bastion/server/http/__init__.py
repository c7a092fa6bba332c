"""The OpenAI-compatible HTTP API (``[http]``): a second front end over the shared core of the gRPC API."""
