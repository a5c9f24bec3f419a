"""The LLM scorer: a rubric prompt with in-context examples, scored from next-token digit odds.

Instead of generating free text and parsing it, one batched forward pass reads the model's
probabilities for the digits 1..9 at the answer position; the score is their expected value (a
continuous score, robust to phrasing). The rubric and its examples are the same for every image,
so their keys/values are computed once and reused (``prefix_cache``): each image then costs
only its own description's tokens. ``mode="generate"`` is the free-text fallback: greedy
decoding, the first digit 1..9 in the answer, else a logged warning and ``fallback_score``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from importlib import resources
from pathlib import Path

import torch

from cat_tokenizer.complexity.base import SCORE_MAX, SCORE_MIN, Description, Scorer
from cat_tokenizer.complexity.hf import BUILTIN_SMOLLM2, load_causal_lm, weights_fingerprint
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import InputNotFound, UserInputError

__all__ = ["LLMScorer", "load_rubric", "digit_token_ids", "parse_score"]

log = logging.getLogger(__name__)
_DIGIT = re.compile(r"(?<!\d)([1-9])(?!\d)")


def load_rubric(path: str | None = None) -> str:
    """The rubric prompt (``{description}`` marks where the description goes); default: the packaged one."""
    if path is None:
        return resources.files("cat_tokenizer.complexity").joinpath("prompts/rubric.txt").read_text()
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputNotFound(f"rubric file not found: {path}")
    text = p.read_text()
    if "{description}" not in text:
        raise UserInputError(f"rubric {path} has no {{description}} placeholder")
    return text


def parse_score(answer: str, fallback: float) -> float:
    """The first standalone digit 1..9 in a free-text answer; ``fallback`` (with a warning) if there is none."""
    m = _DIGIT.search(answer)
    if m is None:
        log.warning("LLM answer holds no score (%r); using fallback_score %g", answer[:60], fallback)
        return float(fallback)
    return float(m.group(1))


def digit_token_ids(tokenizer) -> list[list[int]] | None:
    """For each digit 1..9, the single tokens that spell it ("7" and " 7"); None if one has none."""
    out = []
    for d in range(SCORE_MIN, SCORE_MAX + 1):
        ids = {tuple(tokenizer.encode(v, add_special_tokens=False)) for v in (str(d), f" {d}")}
        singles = sorted(t[0] for t in ids if len(t) == 1)
        if not singles:
            return None
        out.append(singles)
    return out


class LLMScorer(Scorer):
    """Score descriptions with a causal LM against the rubric.

    Args:
        model: hub id, local folder, or ``builtin:smollm2`` (SmolLM2-135M-Instruct, ships offline).
        gguf_file: a GGUF file inside ``model`` to load through transformers (slow: prefer a folder).
        rubric: path to a rubric prompt with a ``{description}`` placeholder; default: the packaged one.
        chat: wrap the prompt in the tokenizer's chat template when it has one.
        mode: ``digits`` (expected value of the next-token digit distribution) or ``generate``.
        batch_size: descriptions per forward pass.
        max_new_tokens: answer length in ``generate`` mode.
        fallback_score: the score when a generated answer holds no digit (logged).
        dtype: model weights' dtype (``float32``, ``bfloat16`` ...).
        max_length: prompts are truncated from the left to this many tokens.
        prefix_cache: compute the rubric's keys/values once and reuse them for every batch.
        device: where the model runs (``auto``: CUDA if available); a Lightning run moves it anyway.
    """

    def __init__(
        self,
        model: str = BUILTIN_SMOLLM2,
        gguf_file: str | None = None,
        rubric: str | None = None,
        chat: bool = True,
        mode: str = "digits",
        batch_size: int = 8,
        max_new_tokens: int = 8,
        fallback_score: float = 5.0,
        dtype: str = "float32",
        max_length: int = 2048,
        prefix_cache: bool = True,
        device: str = "auto",
    ):
        super().__init__()
        if mode not in ("digits", "generate"):
            raise UserInputError(f"LLMScorer mode must be 'digits' or 'generate', got {mode!r}")
        if not SCORE_MIN <= fallback_score <= SCORE_MAX:
            raise UserInputError(f"fallback_score must be in [{SCORE_MIN}, {SCORE_MAX}], got {fallback_score}")
        self.model_name, self.gguf_file, self.rubric_path, self.chat = model, gguf_file, rubric, chat
        self.batch_size, self.max_new_tokens, self.fallback_score = batch_size, max_new_tokens, fallback_score
        self.dtype, self.max_length = dtype, max_length
        self.rubric = load_rubric(rubric)
        self.mode = self.requested_mode = mode
        self.prefix_cache, self.device_name = prefix_cache, device
        resolve_device(device)  # a CUDA device on a CPU-only machine fails here, before any loading
        self.lm = None  # loaded on first use (a DDP rank that only reads the score cache never loads it)

    def load(self) -> LLMScorer:
        """Load the tokenizer and model (once), and split the prompt into its shared prefix and per-image suffix."""
        if self.lm is not None:
            return self
        self.tokenizer, lm = load_causal_lm(self.model_name, self.gguf_file, self.dtype)
        self.lm = lm.to(resolve_device(self.device_name))
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "left", "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.digit_ids = digit_token_ids(self.tokenizer)
        if self.mode == "digits" and self.digit_ids is None:
            log.warning("%s has no single-token digits: LLMScorer falls back to mode='generate'", self.model_name)
            self.mode = "generate"
        # The prompt splits at the line where the description starts: a fixed prefix (rubric,
        # examples, chat header) and a per-image suffix, tokenized separately on every path so
        # cached, batched and one-at-a-time scoring see the very same token ids.
        sentinel = "\x00DESCRIPTION\x00"
        rendered = self.prompt(sentinel)
        cut = rendered.rfind("\n", 0, rendered.index(sentinel)) + 1
        self._prefix_ids = self.tokenizer(rendered[:cut], add_special_tokens=False, return_tensors="pt")["input_ids"]
        self._suffix_template = rendered[cut:].replace(sentinel, "{description}")
        self._kv: tuple[torch.device, object] | None = None
        # transformers 5 renamed the forward argument ``past_key_values`` to ``cache``.
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"
        return self

    def fingerprint(self) -> dict:
        if getattr(self, "_weights", None) is None:
            self._weights = weights_fingerprint(self.model_name, self.gguf_file)
        return {"scorer": "llm/v1", "model": self.model_name, "weights": self._weights, "gguf_file": self.gguf_file,
                "rubric": self.rubric,
                "chat": self.chat, "mode": self.requested_mode, "max_new_tokens": self.max_new_tokens,
                "fallback_score": self.fallback_score, "dtype": self.dtype, "max_length": self.max_length}

    def prompt(self, description: str) -> str:
        filled = self.rubric.replace("{description}", description.strip())
        if not (self.chat and getattr(self.tokenizer, "chat_template", None)):
            return filled
        question = filled.rstrip().removesuffix("Score:").rstrip()
        msgs = [{"role": "user", "content": question}]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + "Score:"

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                             add_special_tokens=False)
        return {k: v.to(self.lm.device) for k, v in enc.items()}

    def _prefix_kv(self):
        """Keys/values of the shared prefix, computed once per device."""
        dev = self.lm.device
        if self._kv is None or self._kv[0] != dev:
            out = self.lm(input_ids=self._prefix_ids.to(dev), use_cache=True)
            self._kv = (dev, out["cache"] if "cache" in out else out["past_key_values"])
        return self._kv[1]

    @torch.inference_mode()
    def digit_probs(self, descriptions: list[str]) -> torch.Tensor:
        """(N, 9) probabilities of the answers 1..9 after the rubric prompt (one batched pass)."""
        self.load()
        dev = self.lm.device
        suffixes = [self._suffix_template.replace("{description}", d.strip()) for d in descriptions]
        pad_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"  # causal attention: trailing pads are never attended to
        try:
            enc = self.tokenizer(suffixes, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True,
                                 max_length=max(8, self.max_length - self._prefix_ids.shape[1]))
        finally:
            self.tokenizer.padding_side = pad_side
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        n, p = ids.shape[0], self._prefix_ids.shape[1]
        last = mask.sum(-1) - 1  # (N,) each row's final real token
        if self.prefix_cache:
            cache = copy.deepcopy(self._prefix_kv())
            cache.batch_repeat_interleave(n)
            full_mask = torch.cat([torch.ones(n, p, dtype=mask.dtype, device=dev), mask], 1)
            positions = torch.arange(p, p + ids.shape[1], device=dev).expand(n, -1)
            logits = self.lm(input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
                             **{self._cache_kwarg: cache}).logits  # (N, S, V)
        else:
            full = torch.cat([self._prefix_ids.to(dev).expand(n, -1), ids], 1)
            full_mask = torch.cat([torch.ones(n, p, dtype=mask.dtype, device=dev), mask], 1)
            logits = self.lm(input_ids=full, attention_mask=full_mask).logits[:, p:]  # (N, S, V)
        at = logits[torch.arange(n, device=dev), last].float()  # (N, V)
        per_digit = torch.stack([at[:, ids_].logsumexp(-1) for ids_ in self.digit_ids], -1)  # (N, 9)
        return per_digit.softmax(-1)

    @torch.inference_mode()
    def generate_scores(self, prompts: list[str]) -> list[float]:
        self.load()
        enc = self._encode(prompts)
        out = self.lm.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                               pad_token_id=self.tokenizer.pad_token_id)
        answers = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [parse_score(text, self.fallback_score) for text in answers]

    def score(self, descriptions: list[Description]) -> list[float]:
        self.load()
        scores: list[float] = []
        digits = torch.arange(SCORE_MIN, SCORE_MAX + 1, dtype=torch.float32)
        for i in range(0, len(descriptions), self.batch_size):
            texts = [d.text for d in descriptions[i : i + self.batch_size]]
            if self.mode == "digits":
                scores += (self.digit_probs(texts).cpu() @ digits).tolist()
            else:
                scores += self.generate_scores([self.prompt(t) for t in texts])
        return scores
