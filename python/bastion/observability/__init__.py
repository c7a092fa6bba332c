"""Tracing, metrics and logging setup; nothing here logs prompts or completions."""
