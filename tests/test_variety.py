"""The offline varied image set (issue 6's labelled pool): deterministic, resumable, refuses a mixed folder."""

import hashlib

import pytest

from cat_tokenizer.cli import tools
from cat_tokenizer.data.variety import RECIPES, build_variety_set
from cat_tokenizer.errors import UserInputError


def digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_variety_set_is_deterministic_and_resumes(tmp_path):
    a = build_variety_set(tmp_path / "a", n=16, size=48, extra_renders=0)
    first = digests(a)
    assert len(first) == 16 and {k.split("/")[0] for k in first} <= set(RECIPES)
    assert len({k.split("/")[0] for k in first}) >= 4  # the recipes are mixed
    from PIL import Image

    assert Image.open(a / next(iter(first))).size == (48, 48)
    # Killed part-way: files missing and no completion mark -> the rebuild restores exactly those.
    for k in list(first)[::3]:
        (a / k).unlink()
    (a / ".complete").unlink()
    build_variety_set(a, n=16, size=48, extra_renders=0)
    assert digests(a) == first
    assert digests(build_variety_set(tmp_path / "b", n=16, size=48, extra_renders=0)) == first  # same args, same bytes
    grown = digests(build_variety_set(a, n=20, size=48, extra_renders=0))  # growing keeps the first images
    assert len(grown) == 20 and all(grown[k] == v for k, v in first.items())


def test_variety_refuses_bad_arguments(tmp_path, capsys):
    build_variety_set(tmp_path / "a", n=2, size=48, extra_renders=0)
    with pytest.raises(UserInputError, match="other arguments"):
        build_variety_set(tmp_path / "a", n=2, size=64, extra_renders=0)
    with pytest.raises(UserInputError, match="n >= 1"):
        build_variety_set(tmp_path / "c", n=0)
    assert tools.main(["variety", "--out", str(tmp_path / "a"), "--n", "2", "--size", "64"]) == 2
    assert "other arguments" in capsys.readouterr().err


def test_sources_csv_names_the_image_each_crop_was_cut_from(tmp_path, monkeypatch):
    """sources.csv replays the source draws without rendering; check it against the draws made."""
    import csv

    from cat_tokenizer.data import variety

    pools, drawn = {}, []
    real_sources, real_crop = variety._sources, variety._crop

    def sources(*args):
        pools.update(real_sources(*args))
        return pools

    def crop(rng, img, *args, **kwargs):
        kind = next(k for k, imgs in pools.items() if any(img is x for x in imgs))
        drawn.append(f"{kind}-{next(i for i, x in enumerate(pools[kind]) if x is img)}")
        return real_crop(rng, img, *args, **kwargs)

    monkeypatch.setattr(variety, "_sources", sources)
    monkeypatch.setattr(variety, "_crop", crop)
    out = build_variety_set(tmp_path / "a", n=24, size=48, extra_renders=2)
    rows = list(csv.DictReader((out / "sources.csv").open()))
    assert [r["path"] for r in rows] == sorted((p.relative_to(out).as_posix() for p in out.rglob("*.png")),
                                               key=lambda k: k.split("/")[1])  # one row per image, by index
    assert [r["source"] for r in rows if not r["path"].startswith("flat/")] == drawn
    assert all(r["source"] == f"flat-{r['path'][5:10]}" for r in rows if r["path"].startswith("flat/"))
    (out / "sources.csv").unlink()  # a set built before sources.csv existed gets one, images untouched
    drawn.clear()
    before = digests(out)
    build_variety_set(out, n=24, size=48, extra_renders=2)
    assert list(csv.DictReader((out / "sources.csv").open())) == rows and digests(out) == before and drawn == []
