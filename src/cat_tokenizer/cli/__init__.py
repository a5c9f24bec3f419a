"""Entry points: ``lightning`` (training) and ``cat-tokenizer`` (tools)."""
