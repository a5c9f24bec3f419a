import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cat_tokenizer import CATDataModule
from cat_tokenizer.data.dataset import collate_skipping
from cat_tokenizer.data.default_data import KINDS, ensure_default_data
from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.data.sampler import BucketBatchSampler


# ---------------------------------------------------------------- sampler
def _epoch(s, epoch=0):
    s.set_epoch(epoch)
    return list(s)


def test_uniform_batches_have_one_ratio_and_cover_everything():
    s = BucketBatchSampler(23, 4, seed=3)
    batches = _epoch(s)
    assert len(batches) == len(s) == 6
    assert all(len({r for _, r in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i, _ in b) == list(range(23))
    assert {b[0][1] for b in batches} <= {8, 16, 32}
    assert _epoch(s, 0) == batches and _epoch(s, 1) != batches  # deterministic per epoch, reshuffled across
    assert _epoch(BucketBatchSampler(23, 4, seed=3)) == batches


def test_position_places_each_pass_in_the_endless_order_of_epochs():
    """``position`` = batches trained so far: the pass is the rest of the epoch that count falls in, on every rank."""
    kw = dict(num_items=23, batch_size=4, seed=3, item_ratios=[8, 16, 32] * 7 + [8, 8], weights=[1.0] * 23)
    plain = BucketBatchSampler(**kw)
    n = len(plain)
    endless = [b for e in range(3) for b in _epoch(plain, e)]
    for trained in (0, 1, n - 1, n, n + 2, 2 * n):
        s = BucketBatchSampler(**kw, position=lambda t=trained: t)
        s.set_epoch(7)  # position wins over a stale set_epoch
        assert list(s) == endless[trained : (trained // n + 1) * n]
    outside_a_fit = BucketBatchSampler(**kw, position=lambda: None)
    assert _epoch(outside_a_fit, 2) == endless[2 * n :]  # no trainer: set_epoch decides
    assert list(BucketBatchSampler(3, 4, drop_last=True, position=lambda: 5)) == []  # no batch an epoch: nothing to place
    ranks = [list(BucketBatchSampler(23, 2, seed=1, num_replicas=2, rank=r, position=lambda: 13)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) and [b[0][1] for b in ranks[0]] == [b[0][1] for b in ranks[1]]


def test_uniform_draws_all_ratios_over_many_batches():
    counts = Counter(b[0][1] for b in _epoch(BucketBatchSampler(3000, 4, seed=0)))
    assert set(counts) == {8, 16, 32} and min(counts.values()) > 200


def test_fixed_ratio_and_drop_last():
    s = BucketBatchSampler(10, 4, fixed_ratio=16, drop_last=True)
    batches = _epoch(s)
    assert len(batches) == len(s) == 2 and all(r == 16 for b in batches for _, r in b)


def test_bucketed_by_item_ratio():
    ratios = [8] * 5 + [16] * 7 + [32] * 3
    s = BucketBatchSampler(15, 2, item_ratios=ratios, seed=1)
    batches = _epoch(s)
    assert len(batches) == len(s) == 3 + 4 + 2
    for b in batches:
        assert all(ratios[i] == r for i, r in b) and len({r for _, r in b}) == 1
    assert sorted(i for b in batches for i, _ in b) == list(range(15))


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("item_ratios", [None, [8] * 9 + [32] * 8])
def test_ranks_get_equal_disjoint_shards(drop_last, item_ratios):
    shards = [_epoch(BucketBatchSampler(17, 3, item_ratios=item_ratios, drop_last=drop_last, seed=5, num_replicas=2, rank=k), 2) for k in range(2)]
    lens = [len(BucketBatchSampler(17, 3, item_ratios=item_ratios, drop_last=drop_last, num_replicas=2, rank=k)) for k in range(2)]
    assert len(shards[0]) == len(shards[1]) == lens[0] == lens[1]
    for b0, b1 in zip(*shards):  # every global step runs one ratio on all ranks
        assert {r for _, r in b0} == {r for _, r in b1} and len({r for _, r in b0}) == 1
    seen = [i for shard in shards for b in shard for i, _ in b]
    if drop_last:
        assert len(seen) == len(set(seen))  # nothing repeated
    else:
        assert set(seen) == set(range(17))  # padding repeats batches, never loses items


# ---------------------------------------------------------------- image files
def test_modes_are_converted_to_rgb(tmp_path):
    gray = Image.fromarray(np.full((8, 8), 100, np.uint8), "L")
    pal = gray.convert("P")
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white
    i16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    for name, im in [("g.png", gray), ("p.png", pal), ("a.png", rgba), ("i16.png", i16)]:
        im.save(tmp_path / name)
    for name in ("g.png", "p.png"):
        assert load_rgb(tmp_path / name).mode == "RGB" and load_rgb(tmp_path / name).getpixel((0, 0)) == (100, 100, 100)
    assert load_rgb(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(tmp_path / "i16.png").getpixel((0, 0)) == (255, 255, 255)


def _corrupt_files(folder: Path) -> list[Path]:
    good = folder / "good.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    data = good.read_bytes()
    trunc_png = folder / "trunc.png"
    trunc_png.write_bytes(data[: len(data) // 2])
    jpg = folder / "photo.jpg"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(jpg, quality=90)
    trunc_jpg = folder / "trunc.jpg"
    trunc_jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) * 2 // 3])  # header intact, scan data cut
    text = folder / "notes.png"
    text.write_text("this is not an image")
    empty = folder / "empty.webp"
    empty.write_bytes(b"")
    return [trunc_png, trunc_jpg, text, empty]


def test_unreadable_files_raise_one_line(tmp_path):
    for bad in _corrupt_files(tmp_path):
        with pytest.raises(UnreadableImage) as info:
            load_rgb(bad)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("limit", [1000, 3000])  # 4096 px: over 2x the limit (PIL's error), between 1x and 2x (its warning)
def test_decompression_bomb_refused(tmp_path, monkeypatch, limit):
    import warnings

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning path must be refused by us, not escape as a warning
        with pytest.raises(UnreadableImage, match="decompression bomb"):
            load_rgb(tmp_path / "big.png")
    if limit == 3000:  # PIL itself only warns here: the refusal is ours
        with pytest.warns(Image.DecompressionBombWarning):
            Image.open(tmp_path / "big.png")


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        list_images(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        list_images(tmp_path)


# ---------------------------------------------------------------- DataModule
def test_datamodule_skips_corrupt_files_and_counts(image_folder, caplog):
    _corrupt_files(image_folder / "class0")
    dm = CATDataModule(root=str(image_folder), image_size=32, batch_size=2, num_workers=0, val_fraction=0.3)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    # trunc.jpg passes the header check (JPEG verify reads no pixel data); the other three do not.
    assert len(dm.skipped) == 3
    assert "skipped 3 unreadable of" in caplog.text
    assert len(dm.train_set) + len(dm.val_set) == 6 + 3  # 6 images + good.png, photo.jpg, trunc.jpg
    seen = 0
    with pytest.warns(UserWarning, match="trunc.jpg"):
        for batch in dm.train_dataloader():  # the truncated JPEG is dropped at load time, no crash
            if batch is not None:
                assert batch["image"].shape[1:] == (3, 32, 32) and batch["image"].min() >= -1
                assert batch["ratio"] in (8, 16, 32)
                seen += len(batch["image"])
        for batch in dm.val_dataloader():
            if batch is not None:
                seen += len(batch["image"])
    assert seen == 8  # all but the truncated JPEG


def test_datamodule_missing_root_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image folder not found: {tmp_path / 'x'}$"):
        CATDataModule(root=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="ratio assignment must be"):
        CATDataModule(root=None, ratio_assignment="random")
    assert CATDataModule(root=None, ratio_assignment="adaptive").assignment.mode == "complexity"  # the DiT's spelling works too


def test_collate_rejects_mixed_ratios():
    item = lambda r: {"image": torch.zeros(3, 4, 4), "ratio": r, "index": 0}  # noqa: E731
    assert collate_skipping([None, None]) is None
    with pytest.raises(RuntimeError, match="mixes ratios"):
        collate_skipping([item(8), item(16)])


def test_validation_split_is_stratified_and_stable(image_folder):
    dm = CATDataModule(root=str(image_folder), batch_size=2, num_workers=0, val_fraction=0.01)
    dm.setup()
    assert {f.parent.name for f in dm.val_set.files} == {"class0", "class1"}  # one per class folder at least
    assert not set(dm.val_set.files) & set(dm.train_set.files)
    # stable: adding files never moves an existing file between train and validation
    before = CATDataModule(root=str(image_folder), batch_size=2, num_workers=0, val_fraction=0.3)
    before.setup()
    for i in range(20):
        Image.new("RGB", (40, 40), (i * 10, 0, 0)).save(image_folder / f"class{i % 2}" / f"new{i}.png")
    after = CATDataModule(root=str(image_folder), batch_size=2, num_workers=0, val_fraction=0.3)
    after.setup()
    from cat_tokenizer.data.dataset import hash_fraction

    assert set(before.train_set.files) <= set(after.train_set.files)  # a trained-on file never becomes held out
    by_hash = {f for f in before.val_set.files if hash_fraction(f.relative_to(image_folder).as_posix()) < 0.3}
    assert by_hash <= set(after.val_set.files)  # held out by its hash: held out for good
    # only a folder's at-least-one pick (no file under the fraction yet) may go back to training
    assert all(f not in by_hash for f in set(before.val_set.files) - set(after.val_set.files))
    assert len(after.val_set.files) > len(before.val_set.files)  # some new files went to validation


# ---------------------------------------------------------------- embedded default data
def test_default_data_has_every_kind_and_is_deterministic(tmp_path, monkeypatch):
    root = ensure_default_data()
    counts = Counter(p.parent.name for p in list_images(root))
    assert set(counts) == set(KINDS) and sum(counts.values()) >= 40
    assert counts["text"] >= 8 and counts["chart"] >= 8
    monkeypatch.setenv("CAT_TOKENIZER_CACHE", str(tmp_path))
    again = ensure_default_data()
    assert again != root
    digest = lambda r: {p.relative_to(r): hashlib.sha1(p.read_bytes()).hexdigest() for p in list_images(r)}  # noqa: E731
    assert digest(root) == digest(again)


# ---------------------------------------------------------------- flat colour fields (v2 training data)
def test_flat_share_replaces_that_share_of_training_images_only(image_folder):
    from cat_tokenizer.data.flat import FlatFields

    dm = CATDataModule(root=str(image_folder), image_size=32, batch_size=4, num_workers=0, val_fraction=0.3,
                       flat_share=0.5, drop_last=False)
    dm.setup("fit")

    def flat_count(batches) -> tuple[int, int]:
        flat = total = 0
        for b in batches:
            if b is None:
                continue
            img = b["image"]  # (B, 3, S, S)
            # a flat image holds at most two colours: one of them covers the corner pixel
            ncol = [len(torch.unique(im.flatten(1).T, dim=0)) for im in img]
            flat += sum(n <= 2 for n in ncol)
            total += len(img)
        return flat, total

    assert flat_count(dm.train_dataloader())[0] > 0  # the test images are noise, never <= 2 colours
    assert flat_count(dm.val_dataloader())[0] == 0  # evaluation never sees them
    noise = lambda i: {"image": torch.rand(3, 16, 16), "ratio": 8, "index": i}  # noqa: E731
    flat, total = flat_count(FlatFields(collate_skipping, 0.25)([noise(8 * b + i) for i in range(8)]) for b in range(100))
    assert 0.2 < flat / total < 0.3  # the share asked for, over 800 images
    # the same batch gets the same flats (a resumed run sees what it would have seen)
    items = [{"image": torch.zeros(3, 8, 8), "ratio": 8, "index": i} for i in range(8)]
    a, b = FlatFields(collate_skipping, 0.5)(items), FlatFields(collate_skipping, 0.5)(items)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], torch.zeros(8, 3, 8, 8))
    with pytest.raises(ValueError, match=r"flat_share must be in \[0, 1\], got 1.5"):
        CATDataModule(root=str(image_folder), flat_share=1.5)
