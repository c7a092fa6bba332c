"""The gRPC front door: listener, servicers, validation, admission and shutdown."""
