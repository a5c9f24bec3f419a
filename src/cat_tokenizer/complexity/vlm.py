"""Neural describers: a vision-language model (LLaVA-1.5, Qwen2-VL, SmolVLM ...) or a captioner
(BLIP / InstructBLIP style), both through transformers' ``AutoModelForImageTextToText``.

``VLMDescriber`` asks the caption and the perceptual questions in one prompt; with
``score=True`` the same model then reads the rubric with the image still in context and scores
it from its next-token digit odds (the paper's one-VLM pipeline, no separate LLM).
``CaptionerDescriber`` generates a caption (optionally one answer per question).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from cat_tokenizer.complexity.base import SCORE_MAX, SCORE_MIN, Describer, Description
from cat_tokenizer.complexity.hf import load_pretrained
from cat_tokenizer.complexity.llm import digit_token_ids, load_rubric
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError

__all__ = ["VLMDescriber", "CaptionerDescriber", "PERCEPTUAL_QUESTIONS"]

PERCEPTUAL_QUESTIONS = (
    "Describe the image in one sentence.",
    "Is there any text in the image? If so, how much (a few words, a paragraph, a full page)?",
    "Are there human faces? How many?",
    "How many distinct objects are there?",
    "Is there fine texture or small detail (foliage, fabric, gravel, small print)?",
)


def _load_image_text_model(model: str, dtype: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = load_pretrained(AutoProcessor, model)
    net = load_pretrained(AutoModelForImageTextToText, model, dtype=getattr(torch, dtype))
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        tok.padding_side = "left"  # batched generation continues every row from its own end
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    return processor, net.eval()


def _new_tokens(out: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
    """Strip the echoed prompt (decoder-only models return prompt + answer)."""
    if input_ids is not None and out.shape[1] > input_ids.shape[1] and torch.equal(out[:, : input_ids.shape[1]], input_ids):
        return out[:, input_ids.shape[1] :]
    return out


class _ImageTextDescriber(Describer):
    def __init__(self, model: str, dtype: str, max_new_tokens: int, batch_size: int, device: str):
        super().__init__()
        if max_new_tokens < 1 or batch_size < 1:
            raise UserInputError("max_new_tokens and batch_size must be >= 1")
        self.model_name, self.dtype, self.max_new_tokens, self.batch_size = model, dtype, max_new_tokens, batch_size
        self.device_name = device
        resolve_device(device)  # fail early on a CUDA device without CUDA
        self.net = None  # loaded on first use

    def load(self) -> _ImageTextDescriber:
        if self.net is None:
            self.processor, net = _load_image_text_model(self.model_name, self.dtype)
            self.net = net.to(resolve_device(self.device_name))
            gen = getattr(self.net, "generation_config", None)
            if gen is not None and gen.pad_token_id is None:
                gen.pad_token_id = self.processor.tokenizer.pad_token_id
        return self

    def _inputs(self, images: list[Image.Image], texts: list[str] | None) -> dict:
        kwargs = {"images": images, "return_tensors": "pt"}
        if texts is not None:
            kwargs.update(text=texts, padding=True)
        enc = self.processor(**kwargs)
        return {k: (v.to(self.net.device, self.net.dtype) if v.is_floating_point() else v.to(self.net.device))
                for k, v in enc.items() if isinstance(v, torch.Tensor)}

    @torch.inference_mode()
    def _generate(self, images: list[Image.Image], texts: list[str] | None) -> list[str]:
        enc = self._inputs(images, texts)
        tok = self.processor.tokenizer
        out = self.net.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False)
        return [t.strip() for t in tok.batch_decode(_new_tokens(out, enc.get("input_ids")), skip_special_tokens=True)]


class VLMDescriber(_ImageTextDescriber):
    """One VLM answers the caption and perceptual questions (and optionally scores).

    Args:
        model: hub id (e.g. ``llava-hf/llava-1.5-7b-hf``, ``HuggingFaceTB/SmolVLM-256M-Instruct``) or local folder.
        questions: asked together in one prompt.
        prompt_format: used when the processor has no chat template; ``{question}`` is replaced.
        score: also score with the rubric from the VLM's digit odds (the one-VLM pipeline).
        rubric: rubric prompt path for ``score`` (default: the packaged one).
        max_new_tokens: answer length.
        batch_size: images per generate call.
        dtype: weights' dtype.
        device: where the model runs (``auto``: CUDA if available).
    """

    def __init__(
        self,
        model: str,
        questions: Sequence[str] = PERCEPTUAL_QUESTIONS,
        prompt_format: str = "USER: <image>\n{question} ASSISTANT:",
        score: bool = False,
        rubric: str | None = None,
        max_new_tokens: int = 96,
        batch_size: int = 4,
        dtype: str = "float32",
        device: str = "auto",
    ):
        super().__init__(model, dtype, max_new_tokens, batch_size, device)
        self.questions, self.prompt_format, self.score, self.rubric_path = tuple(questions), prompt_format, score, rubric
        self.rubric = load_rubric(rubric) if score else None

    @property
    def scores_itself(self) -> bool:
        return self.score

    def load(self) -> VLMDescriber:
        if self.net is None:
            super().load()
            self.digit_ids = digit_token_ids(self.processor.tokenizer) if self.score else None
            if self.score and self.digit_ids is None:
                raise UserInputError(f"{self.model_name}: its tokenizer has no single-token digits, so score=True cannot read digit odds")
        return self

    def fingerprint(self) -> dict:
        return {"describer": "vlm/v1", "model": self.model_name, "questions": self.questions,
                "prompt_format": self.prompt_format, "score": self.score, "rubric": self.rubric,
                "max_new_tokens": self.max_new_tokens, "dtype": self.dtype}

    def _prompt(self, question: str, prefix: str = "") -> str:
        template = getattr(self.processor, "chat_template", None)
        if template:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + prefix
        return self.prompt_format.replace("{question}", question) + prefix

    @torch.inference_mode()
    def _scores(self, images: list[Image.Image], answers: list[str]) -> list[float]:
        prompts = [self._prompt(self.rubric.replace("{description}", a).rstrip().removesuffix("Score:").rstrip(), " Score:")
                   for a in answers]
        enc = self._inputs(images, prompts)
        logits = self.net(**enc).logits[:, -1].float()  # left-padded: the last column is every row's answer slot
        probs = torch.stack([logits[:, ids].logsumexp(-1) for ids in self.digit_ids], -1).softmax(-1)
        return (probs.cpu() @ torch.arange(SCORE_MIN, SCORE_MAX + 1, dtype=torch.float32)).tolist()

    def describe(self, images: list[Image.Image]) -> list[Description]:
        self.load()
        question = " ".join(f"{i + 1}. {q}" for i, q in enumerate(self.questions))
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i : i + self.batch_size]
            answers = self._generate(batch, [self._prompt(question)] * len(batch))
            scores = self._scores(batch, answers) if self.score else [None] * len(batch)
            out += [Description(text=a, score=s) for a, s in zip(answers, scores)]
        return out


class CaptionerDescriber(_ImageTextDescriber):
    """A captioning model: one caption per image, plus one answer per question if given.

    Args:
        model: hub id (e.g. ``Salesforce/blip-image-captioning-large``, ``Salesforce/instructblip-vicuna-7b``) or local folder.
        prompt: text prefix or instruction for the caption (None: unconditional captioning).
        questions: extra instructions, each answered separately (InstructBLIP style).
        max_new_tokens: caption length.
        batch_size: images per generate call.
        dtype: weights' dtype.
        device: where the model runs (``auto``: CUDA if available).
    """

    def __init__(
        self,
        model: str,
        prompt: str | None = None,
        questions: Sequence[str] = (),
        max_new_tokens: int = 40,
        batch_size: int = 8,
        dtype: str = "float32",
        device: str = "auto",
    ):
        super().__init__(model, dtype, max_new_tokens, batch_size, device)
        self.prompt, self.questions = prompt, tuple(questions)

    def fingerprint(self) -> dict:
        return {"describer": "captioner/v1", "model": self.model_name, "prompt": self.prompt, "questions": self.questions,
                "max_new_tokens": self.max_new_tokens, "dtype": self.dtype}

    def describe(self, images: list[Image.Image]) -> list[Description]:
        self.load()
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i : i + self.batch_size]
            captions = self._generate(batch, None if self.prompt is None else [self.prompt] * len(batch))
            texts = [f"Caption: {c}" for c in captions]
            for q in self.questions:
                answers = self._generate(batch, [q] * len(batch))
                texts = [f"{t} {q} {a}" for t, a in zip(texts, answers)]
            out += [Description(text=t) for t in texts]
        return out
