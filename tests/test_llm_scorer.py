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
    # The answer the real generate() produced, and only the answer, goes through the parser: an
    # independent greedy run of each prompt alone, decoded after its prompt, gives the same scores.
    descs = [text_description(d) for d in DESCRIPTIONS[:2]]
    by_hand = []
    for d in descs:
        enc = gen.tokenizer(gen.prompt(d.text), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = gen.lm.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=gen.tokenizer.pad_token_id)
        answer = gen.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        by_hand.append(parse_score(answer, gen.fallback_score))
    assert gen.score(descs) == by_hand
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


def test_the_score_is_the_digit_odds_after_the_whole_description(tmp_path):
    """An independent reference: each prompt run alone, unpadded and uncached, through the model,
    and the digit odds read at its very last token. A batch of descriptions of different lengths
    (padding, the prefix cache) must give the same odds; on this model the odds read at the
    description's first token differ, so the test tells the positions apart."""
    from tiny_hf import tiny_llama

    scorer = LLMScorer(model=str(tiny_llama(tmp_path / "tiny")), device="cpu").load()
    texts = [text_description("a white wall").text, text_description("a dense page of small text, tables and a chart").text]
    got = scorer.digit_probs(texts)  # (2, 9)
    for i, t in enumerate(texts):
        suffix = scorer._suffix_template.replace("{description}", t.strip())
        ids = torch.cat([scorer._prefix_ids, scorer.tokenizer(suffix, return_tensors="pt", add_special_tokens=False)["input_ids"]], 1)
        with torch.no_grad():
            logits = scorer.lm(input_ids=ids).logits[0].float()  # (S, V)
        odds = lambda at: torch.stack([at[d].logsumexp(-1) for d in scorer.digit_ids]).softmax(-1)  # noqa: E731
        assert got[i] == pytest.approx(odds(logits[-1]), abs=1e-4)
        assert not torch.allclose(odds(logits[scorer._prefix_ids.shape[1]]), odds(logits[-1]), atol=1e-3)
