"""Content complexity -> compression ratio: describe an image, score it 1..9, map the score to a ratio.

Parts (each usable alone, chosen in YAML by class_path/init_args):
  describers: ``ProbeDescriber`` (offline default), ``VLMDescriber``, ``CaptionerDescriber``,
              ``DistilledDescriber`` (a tokenizer's trained ratio head; ``from_config("distilled:D")``)
  scorers:    ``FittedScorer`` (a logistic model over probe facts, fitted by ``cat-tokenizer fit-rubric``),
              ``RubricScorer`` (rules), ``LLMScorer`` (digit odds of a causal LM),
              ``TextStudentScorer`` (a distilled text encoder + head for prompts; ``"distilled-text:D"``)
  by name:    ``EvaluatorSpec`` (presets ``default``, ``rubric``, ``smollm2``, ``distilled:D``, ``auto:D``, or a YAML)
  mapping:    ``RatioMapper`` (thresholds, or calibrated to a token budget)
  cache:      ``ScoreCache`` (SQLite, keyed by content hash + evaluator fingerprint)
"""

from cat_tokenizer.complexity.base import Describer, Description, Scorer, text_description
from cat_tokenizer.complexity.cache import ScoreCache, config_hash, content_hash
from cat_tokenizer.complexity.distilled import DistilledDescriber
from cat_tokenizer.complexity.evaluator import ComplexityEvaluator, ScoreResult, summarize
from cat_tokenizer.complexity.fitted import FittedScorer
from cat_tokenizer.complexity.llm import LLMScorer
from cat_tokenizer.complexity.probe import ProbeDescriber
from cat_tokenizer.complexity.ratio_map import RatioMapper
from cat_tokenizer.complexity.rubric import RubricScorer
from cat_tokenizer.complexity.spec import EvaluatorSpec
from cat_tokenizer.complexity.text_student import TextStudentScorer
from cat_tokenizer.complexity.vlm import CaptionerDescriber, VLMDescriber

__all__ = [
    "ComplexityEvaluator", "EvaluatorSpec", "ScoreResult", "summarize", "Describer", "Description", "Scorer", "text_description",
    "ProbeDescriber", "VLMDescriber", "CaptionerDescriber", "DistilledDescriber",
    "RubricScorer", "FittedScorer", "LLMScorer", "TextStudentScorer", "RatioMapper",
    "ScoreCache", "content_hash", "config_hash",
]
