"""Content complexity -> compression ratio (issue 3; in progress: ratio mapping and the score cache)."""

from cat_tokenizer.complexity.cache import ScoreCache, content_hash, config_hash
from cat_tokenizer.complexity.ratio_map import RatioMapper

__all__ = ["RatioMapper", "ScoreCache", "content_hash", "config_hash"]
