"""The LLM scorer with the real SmolLM2-135M-Instruct (bundled offline), and its loading errors."""

import logging

import pytest
import torch

from cat_tokenizer.complexity import ComplexityEvaluator, LLMScorer, text_description
from cat_tokenizer.complexity.llm import load_rubric, parse_score
from cat_tokenizer.errors import InputNotFound, UserInputError

DESCRIPTIONS = [
    "Text: yes, 240 legible words covering 40% of the image (OCR confidence 94). Human faces: none.",
    "Text: none legible. Human faces: none. Edges: 0.3% of pixels. JPEG size: 0.20 bits per pixel.",
    "Text: none legible. Human faces: 1. Edges: 12.0% of pixels. Grey-level entropy: 7.4 bits.",
]


@pytest.fixture(scope="module")
def smollm():
    return LLMScorer(batch_size=8, device="cpu").load()


@pytest.mark.slow
def test_digit_probabilities_are_a_distribution(smollm):
    p = smollm.digit_probs(DESCRIPTIONS)
    assert p.shape == (3, 9)
    assert torch.allclose(p.sum(-1), torch.ones(3), atol=1e-5)
    scores = smollm.score([text_description(d) for d in DESCRIPTIONS])
    texts = [text_description(d).text for d in DESCRIPTIONS]  # what the scorer reads
    expected = (smollm.digit_probs(texts) * torch.arange(1, 10, dtype=torch.float32)).sum(-1)  # the expected digit, by hand
    assert scores == pytest.approx(expected.tolist(), abs=1e-4)


@pytest.mark.slow
def test_batched_cached_and_single_scoring_agree(smollm):
    descs = [text_description(d) for d in DESCRIPTIONS]
    smollm.batch_size, smollm.prefix_cache = 8, True
    batched = smollm.score(descs)
    smollm.batch_size = 1
    single = smollm.score(descs)
    smollm.batch_size, smollm.prefix_cache = 8, False
    uncached = smollm.score(descs)
    smollm.prefix_cache = True
    assert batched == pytest.approx(single, abs=1e-3)
    assert batched == pytest.approx(uncached, abs=1e-3)
    # The prefix really is the shared rubric: the per-image part is only the description line.
    assert smollm._prefix_ids.shape[1] > 200 and smollm._suffix_template.startswith("Description: {description}")


@pytest.mark.slow
def test_generate_mode_and_text_scoring(smollm):
    gen = LLMScorer(mode="generate", max_new_tokens=4, device="cpu").load()
    assert gen.mode == "generate"
    # The answer the real generate() produced goes through the defensive parser.
    decode = gen.tokenizer.batch_decode
    gen.tokenizer.batch_decode = lambda ids, **kw: [" 3, I think"] * len(decode(ids, **kw))
    assert gen.score([text_description(DESCRIPTIONS[0])]) == [3.0]
    ev = ComplexityEvaluator(scorer=smollm)
    texts = ["a chart of quarterly sales", "a plain white wall"]
    res = ev.score_texts(texts)
    by_hand = (smollm.digit_probs([text_description(t).text for t in texts]) * torch.arange(1, 10, dtype=torch.float32)).sum(-1)
    assert [r.score for r in res] == pytest.approx(by_hand.tolist(), abs=1e-4)
    assert [r.ratio for r in res] == [int(x) for x in ev.mapper(by_hand.numpy())]


def test_parse_score_is_defensive(caplog):
    assert parse_score("Score: 7", 5.0) == 7.0
    assert parse_score("I would say 8 out of 9.", 5.0) == 8.0
    assert parse_score("10 is too much; 6", 5.0) == 6.0  # "10" is not a digit answer
    caplog.set_level(logging.WARNING)
    assert parse_score("hard to tell", 4.0) == 4.0 and "holds no score" in caplog.text


def test_local_folder_model_and_loading_errors(tmp_path):
    from tiny_hf import tiny_llama

    scorer = LLMScorer(model=str(tiny_llama(tmp_path / "tiny")), device="cpu")
    probs = scorer.load().digit_probs([text_description("x").text])  # what the scorer reads
    assert scorer.score([text_description("x")])[0] == pytest.approx(float(probs[0] @ torch.arange(1, 10.0)), abs=1e-5)
    # the score cache key follows the weights, not only the model's name
    before = scorer.fingerprint()["weights"]
    weights = next((tmp_path / "tiny").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x01" * 8)
    assert LLMScorer(model=str(tmp_path / "tiny"), device="cpu").fingerprint()["weights"] != before
    with pytest.raises(InputNotFound, match="model folder not found"):
        LLMScorer(model=str(tmp_path / "missing"), device="cpu").load()
    with pytest.raises(InputNotFound, match="local folder"):
        LLMScorer(model="no-such-org/no-such-model", device="cpu").load()
    with pytest.raises(UserInputError, match="placeholder"):
        (tmp_path / "rubric.txt").write_text("rate it")
        load_rubric(str(tmp_path / "rubric.txt"))
