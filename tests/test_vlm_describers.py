"""VLM and captioner describers through the real transformers code path, with tiny random models."""

import numpy as np
import pytest
from PIL import Image

from cat_tokenizer.complexity import CaptionerDescriber, ComplexityEvaluator, RubricScorer, VLMDescriber


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((40 + 8 * i, 48, 3)) * 255).astype(np.uint8)) for i in range(3)]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tiny_hf import tiny_blip, tiny_llava

    root = tmp_path_factory.mktemp("hf")
    return tiny_llava(root / "llava"), tiny_blip(root / "blip")


def test_vlm_describes_and_scores_itself(tiny_models, images, tmp_path):
    llava, _ = tiny_models
    vlm = VLMDescriber(str(llava), score=True, max_new_tokens=5, batch_size=2, device="cpu")
    descs = vlm.describe(images)
    assert len(descs) == 3 and all(d.text and 1 <= d.score <= 9 for d in descs)
    assert len({round(d.score, 4) for d in descs}) > 1  # the odds follow the image and its answer, not a constant
    # The one-VLM pipeline: no scorer, the VLM's own digit-odds score, through the cache.
    paths = []
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    ev = ComplexityEvaluator(describer=vlm)
    assert ev.scorer is None and ev.name == "vlm+self"
    res = ev.score_images(paths, cache=tmp_path / "c.sqlite")
    assert [r.score for r in res] == pytest.approx([d.score for d in descs], abs=1e-3)
    assert all(r.cached for r in ev.score_images(paths, cache=tmp_path / "c.sqlite"))


def test_captioner_with_questions(tiny_models, images):
    _, blip = tiny_models
    cap = CaptionerDescriber(str(blip), questions=["Is there text?"], max_new_tokens=4, device="cpu")
    descs = cap.describe(images)
    assert all(d.text.startswith("Caption: ") and "Is there text?" in d.text for d in descs)
    scores = ComplexityEvaluator(describer=cap, scorer=RubricScorer()).score_descriptions(descs)
    rubric = RubricScorer()
    assert scores == pytest.approx([rubric.score_one(d) for d in descs])  # a text description: the keyword rules
