"""Provider process: OpenAI-compatible HTTP API over one MLX engine thread."""
