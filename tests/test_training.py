"""Training: pair windows from Zarr, augmentation, the loop with exact resume."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

import ctvol
from ctvol.testing import head_phantom, write_dicom_series
from ctvol.training import PairWindows, random_affine, split_of


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("train")
    write_dicom_series(tmp / "in", head_phantom((40, 32, 32), seed=5), spacing=(1.0, 0.5, 0.5))
    return ctvol.ingest(tmp / "in", tmp / "c.zarr").store


def test_windows_match_the_paper(store: str) -> None:
    w = PairWindows(store, 3, split="all")
    hu = ctvol.open_series(store, ctvol.list_series(store)[0]).hu.values
    n = hu.shape[0]
    assert len(w) == (n - 3) + (n - 6)  # strides k and 2k
    x, y = w[0]
    assert x.shape == (2, 32, 32) and y.shape == (2, 32, 32) and x.dtype == np.float32
    win = w.windows[0]
    assert (win.inputs(3), win.targets(3)) == ((0, 3), [1, 2])
    np.testing.assert_allclose(x[1], np.clip(hu[3], -1024, 1024) / 2048 + 0.5, atol=1e-6)
    np.testing.assert_allclose(y[0], np.clip(hu[1], -1024, 1024) / 2048 + 0.5, atol=1e-6)
    doubled = next(i for i, v in enumerate(w.windows) if v.step == 2)
    assert (w.windows[doubled].inputs(3), w.windows[doubled].targets(3)) == ((0, 6), [2, 4])
    _, yd = w[doubled]
    np.testing.assert_allclose(yd[1], np.clip(hu[4], -1024, 1024) / 2048 + 0.5, atol=1e-6)


def test_single_series_split_by_blocks_with_guard(store: str) -> None:
    k = 3
    tr = PairWindows(store, k, split="train")
    va = PairWindows(store, k, split="val")
    train_slices = {s for w in tr.windows for s in range(w.start, w.inputs(k)[1] + 1)}
    val_slices = {s for w in va.windows for s in range(w.start, w.inputs(k)[1] + 1)}
    assert train_slices and val_slices
    assert min(val_slices) - max(train_slices) > 2 * k  # guard gap, no shared neighbours


def test_three_way_split_single_series_blocks(store: str) -> None:
    k = 2
    parts = {p: PairWindows(store, k, split=p, partitions="train-val-test", strides=(1,))
             for p in ("train", "val", "test")}
    used = {p: {s for w in pw.windows for s in range(w.start, w.inputs(k)[1] + 1)}
            for p, pw in parts.items()}
    assert all(used.values())
    assert min(used["val"]) - max(used["train"]) > 2 * k  # guard gaps: no shared neighbours
    assert min(used["test"]) - max(used["val"]) > 2 * k
    assert max(used["test"]) == 39  # the last 10 % of the 40 slices
    with pytest.raises(ValueError, match="split must be one of"):
        PairWindows(store, k, split="test")  # no test partition in the 70/30 scheme


def test_three_way_split_by_series_uses_partition_of(tmp_path: pathlib.Path) -> None:
    from ctvol.curation import partition_of

    for i in range(12):
        write_dicom_series(tmp_path / "in" / str(i), head_phantom((8, 16, 16), seed=i),
                           series_uid=f"1.2.3.{i}", spacing=(1.0, 0.5, 0.5))
    store = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr").store
    for part in ("train", "val", "test"):
        want = {f"1.2.3.{i}" for i in range(12) if partition_of(f"1.2.3.{i}") == part}
        if not want:
            continue
        got = {w.key for w in PairWindows(store, 2, split=part, partitions="train-val-test",
                                          strides=(1,)).windows}
        assert got == want


def test_blank_slices_are_left_out_of_windows(tmp_path: pathlib.Path) -> None:
    hu = head_phantom((24, 48, 48), seed=2)
    hu[10] = -1000  # an air slice in the middle
    write_dicom_series(tmp_path / "in", hu, spacing=(1.0, 2.0, 2.0))
    store = ctvol.ingest(tmp_path / "in", tmp_path / "c.zarr").store
    before = PairWindows(store, 3, split="all", strides=(1,))
    table = ctvol.curate_store(store)
    assert int(table["blank"].iloc[0]) == 1
    after = PairWindows(store, 3, split="all", strides=(1,))
    touching = [w for w in before.windows if w.start <= 10 <= w.start + 3]
    assert len(touching) == 4 and after.blank_skipped == 4
    assert len(after) == len(before) - 4
    assert all(not (w.start <= 10 <= w.start + 3) for w in after.windows)
    assert len(PairWindows(store, 3, split="all", strides=(1,), skip_blank=False)) == len(before)


def test_split_of_is_stable_and_roughly_70_30() -> None:
    splits = [split_of(f"1.2.3.{i}") for i in range(2000)]
    assert splits == [split_of(f"1.2.3.{i}") for i in range(2000)]
    assert 0.25 < splits.count("val") / 2000 < 0.35


def test_crops_reproducible_and_epoch_dependent(store: str) -> None:
    w = PairWindows(store, 3, crop=16, seed=3)
    a = w[5][0]
    assert a.shape == (2, 16, 16)
    np.testing.assert_array_equal(a, PairWindows(store, 3, crop=16, seed=3)[5][0])
    w.set_epoch(1)
    assert not np.array_equal(a, w[5][0])


def test_too_short_for_factor(store: str) -> None:
    with pytest.raises(ValueError, match="no train windows for factor 30 .* 31 contiguous"):
        PairWindows(store, 30)


def test_dataloader_workers_read_the_same(store: str) -> None:
    from torch.utils.data import DataLoader

    w = PairWindows(store, 4, crop=16)
    single = [x for x, _ in DataLoader(w, batch_size=8, num_workers=0)]
    multi = [x for x, _ in DataLoader(w, batch_size=8, num_workers=2)]
    for a, b in zip(single, multi, strict=True):
        torch.testing.assert_close(a, b)


class _RawWindows(torch.utils.data.Dataset):
    """int16 windows as read, with the codec pipeline of the process that read them."""

    def __init__(self, windows: PairWindows) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        w = self.windows.windows[i]
        x, y = self.windows.read(w)
        pipeline = self.windows._array(w.key)._async_array.codec_pipeline
        return x, y, type(pipeline).__name__


def _no_collate(item: object) -> object:
    return item


# Never decode through zarrs in the pytest process itself: a worker forked after
# that would hang (zarrs/zarrs-python#171), which is what these tests guard.
@pytest.mark.timeout(300)
@pytest.mark.parametrize("strides", [(1,), (2,)])
def test_window_reads_bit_exact_with_per_slice_reads(
    store: str, strides: tuple[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One strided read per window == slice-by-slice reads, in the parent and in workers."""
    import zarr
    from torch.utils.data import DataLoader

    monkeypatch.delenv("CTVOL_ZARRS", raising=False)
    k = 4
    w = PairWindows(store, k, split="all", strides=strides)
    arr = zarr.open_array(w.store, path=f"series/{w.windows[0].key}/hu", mode="r")
    assert arr.shape[0] > arr.shards[0]  # windows cross a shard boundary, into a partial one
    raw = _RawWindows(w)
    parent = [raw[i] for i in range(len(raw))]
    workers = list(DataLoader(raw, batch_size=None, num_workers=2, collate_fn=_no_collate))
    expected = "ZarrsCodecPipeline" if _has_zarrs() else "BatchedCodecPipeline"
    for win, (x0, y0, p0), (x1, y1, p1) in zip(w.windows, parent, workers, strict=True):
        assert (p0, p1) == ("BatchedCodecPipeline", expected)
        ref_x = np.stack([arr[i] for i in win.inputs(k)])
        ref_y = np.stack([arr[i] for i in win.targets(k)])
        for x, y in ((x0, y0), (x1, y1)):
            assert x.dtype == y.dtype == np.int16
            np.testing.assert_array_equal(x, ref_x)
            np.testing.assert_array_equal(y, ref_y)


def _has_zarrs() -> bool:
    import importlib.util

    return importlib.util.find_spec("zarrs") is not None


@pytest.mark.timeout(300)
def test_zarrs_switch_off(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CTVOL_ZARRS=0 keeps workers on zarr's own pipeline."""
    from torch.utils.data import DataLoader

    monkeypatch.setenv("CTVOL_ZARRS", "0")
    raw = _RawWindows(PairWindows(store, 3))
    got = [p for _, _, p in DataLoader(torch.utils.data.Subset(raw, [0, 1]), batch_size=None,
                                       num_workers=1, collate_fn=_no_collate)]
    assert got == ["BatchedCodecPipeline"] * 2


def test_augmentation_is_identical_across_channels() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 1, 24, 24)
    x = img.repeat(1, 2, 1, 1)
    y = img.repeat(1, 3, 1, 1)
    xa, ya = random_affine(x, y, generator=g)
    assert xa.shape == x.shape and ya.shape == y.shape
    torch.testing.assert_close(xa[:, 0], ya[:, 2])  # same transform on every channel
    assert not torch.allclose(xa, x)
    g2 = torch.Generator().manual_seed(0)
    torch.testing.assert_close(random_affine(x, y, generator=g2)[0], xa)


def _small(**kw: object) -> dict[str, object]:
    return {"crop": 16, "batch_size": 4, "architecture": {"depth": 2, "base": 4},
            "max_windows": 12, "seed": 1, **kw}


def test_resume_continues_exactly(store: str, tmp_path: pathlib.Path) -> None:
    straight = ctvol.train(store, 3, epochs=2, out=tmp_path / "a", **_small())
    ctvol.train(store, 3, epochs=1, out=tmp_path / "b", **_small())
    resumed = ctvol.train(store, 3, epochs=2, out=tmp_path / "b", resume=True, **_small())
    a = ctvol.load_model(tmp_path / "a" / "last").net.state_dict()
    b = ctvol.load_model(tmp_path / "b" / "last").net.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss,val_loss,val_psnr_unet") and len(log) == 3
    assert straight.factor == resumed.factor == 3


def test_training_lowers_the_loss(store: str, tmp_path: pathlib.Path) -> None:
    ctvol.train(store, 3, epochs=4, out=tmp_path / "m", lr=3e-3, augment=False,
                **_small(max_windows=24))
    rows = (tmp_path / "m" / "log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert losses[-1] < losses[0]


def test_output_folder_errors(store: str, tmp_path: pathlib.Path) -> None:
    ctvol.train(store, 3, epochs=1, out=tmp_path / "m", **_small())
    with pytest.raises(ValueError, match="checkpoint for factor 3, not 4"):
        ctvol.train(store, 4, epochs=1, out=tmp_path / "m", **_small())
    with pytest.raises(FileExistsError, match="resume=True"):
        ctvol.train(store, 3, epochs=1, out=tmp_path / "m", **_small())
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        ctvol.train(store, 3, epochs=1, out=tmp_path / "new", resume=True, **_small())


def test_cli_train(store: str, tmp_path: pathlib.Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    from ctvol.cli import main

    args = ["train", store, "--factor", "3", "--epochs", "1", "-o", str(tmp_path / "m"),
            "--crop", "16", "--depth", "2", "--base", "4", "--max-windows", "8", "-q"]
    assert main(args) == 0
    assert "best model:" in capsys.readouterr().out
    assert main([*args[:5], "2", *args[6:], "--resume"]) == 0
    assert len((tmp_path / "m" / "log.csv").read_text().splitlines()) == 3


def _uid(store: str) -> str:
    return str(ctvol.open_series(store, ctvol.list_series(store)[0]).attrs["series_uid"])


def test_explicit_blocks_keep_windows_inside_and_records_them(store: str,
                                                              tmp_path: pathlib.Path) -> None:
    k = 3
    blocks = {_uid(store): {"train": [[0, 12], [31, 40]], "val": [[19, 24]],
                            "test": [[25, 30]]}}
    with pytest.raises(ValueError, match=r"block val \[19, 24\) and block test \[25, 30\) "
                                         r"are 1 slices apart; leave a guard gap of at least 7"):
        ctvol.train(store, k, epochs=1, out=tmp_path / "x", blocks=blocks, **_small())
    blocks = {_uid(store): {"train": [[0, 12], [33, 40]], "val": [[19, 26]]}}
    parts = {p: PairWindows(store, k, split=p, blocks=blocks) for p in ("train", "val")}
    for part, pw in parts.items():
        for w in pw.windows:
            a, b = w.inputs(k)
            assert any(lo <= a and b < hi for lo, hi in blocks[_uid(store)][part]), (part, w)
    assert {w.start for w in parts["train"].windows} >= {0, 33}
    with pytest.raises(ValueError, match="no test windows"):
        PairWindows(store, k, split="test", blocks=blocks)
    with pytest.raises(ValueError, match="no train windows"):
        PairWindows(store, k, split="train", blocks={"other-series": blocks[_uid(store)]})
    model = ctvol.train(store, k, epochs=1, out=tmp_path / "m", blocks=blocks, **_small())
    used = model.provenance["training_slices"][ctvol.list_series(store)[0]]
    assert [u["index"] for u in used] == [[0, 11], [33, 39]]  # two runs, not [0, 39]
    assert model.provenance["blocks"] == blocks


def test_body_crops_hold_more_body(store: str) -> None:
    def body(pw: PairWindows) -> float:
        return float(np.mean([np.mean(pw[i][0][0] > (-500 + 1024) / 2048)
                              for i in range(len(pw))]))

    anywhere = PairWindows(store, 3, split="all", crop=12, seed=3)
    bodies = PairWindows(store, 3, split="all", crop=12, seed=3, body_fraction=0.9)
    assert body(bodies) > body(anywhere)
    again = PairWindows(store, 3, split="all", crop=12, seed=3, body_fraction=0.9)
    np.testing.assert_array_equal(bodies[5][0], again[5][0])  # still reproducible


def test_init_starts_from_a_checkpoint_and_select_psnr(store: str,
                                                       tmp_path: pathlib.Path) -> None:
    from ctvol.models import save_model
    from ctvol.testing import tiny_model

    start = tiny_model(3, seed=4)
    save_model(start, tmp_path / "start")
    model = ctvol.train(store, 3, epochs=1, out=tmp_path / "m", lr=0.0,
                        init=tmp_path / "start", **_small())
    assert model.provenance["init"]["digest"] == start.digest
    got, want = model.net.state_dict(), start.net.state_dict()
    for name, p in start.net.named_parameters():  # lr 0: the weights it started from
        torch.testing.assert_close(got[name], p.detach(), rtol=0, atol=0)
    assert set(got) == set(want)
    with pytest.raises(ValueError, match="init model .* is for factor 3, not 4"):
        ctvol.train(store, 4, epochs=1, out=tmp_path / "n", init=tmp_path / "start",
                    **_small())
    ctvol.train(store, 3, epochs=3, out=tmp_path / "p", select="psnr", lr=3e-3, **_small())
    rows = (tmp_path / "p" / "log.csv").read_text().splitlines()[1:]
    psnr = [float(r.split(",")[3]) for r in rows]
    best = ctvol.load_model(tmp_path / "p" / "best")
    assert best.provenance["val_psnr_unet"] == pytest.approx(max(psnr))
    assert best.provenance["select"] == "psnr"


def test_cli_train_init_bundled(store: str, tmp_path: pathlib.Path) -> None:
    from ctvol.cli import main

    args = ["train", store, "--factor", "4", "--epochs", "1", "-o", str(tmp_path / "m"),
            "--crop", "16", "--max-windows", "4", "--init", "unet-x4", "--lr", "0", "-q"]
    assert main(args) == 0
    tuned = ctvol.load_model(tmp_path / "m" / "best")
    bundled = ctvol.load_model("unet-x4")
    assert tuned.config["architecture"] == bundled.config["architecture"]
    assert tuned.provenance["init"] == {"model": "unet-x4", "digest": bundled.digest}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"select": "ssim"}, "select must be 'loss' or 'psnr', got 'ssim'"),
    ({"loss": "huber"}, r"loss must be one of \['l1', 'l1\+ssim', 'mse'\], got 'huber'"),
    ({"body_fraction": 1.5}, r"body_fraction must be in \[0, 1\], got 1.5"),
    ({"blocks": "{tmp}/missing.json"}, "cannot read the blocks file .*missing.json"),
    ({"blocks": {"UID": {"train": [[0, 12]], "val": [[30, 60]]}}},
     r"block val \[30, 60\) of series .* is outside its 40 slices; fix the blocks file"),
])
def test_bad_training_options_say_what_and_write_nothing(store: str, tmp_path: pathlib.Path,
                                                         kwargs: dict[str, object],
                                                         match: str) -> None:
    kw = {k: (v.format(tmp=tmp_path) if isinstance(v, str) else v) for k, v in kwargs.items()}
    if isinstance(kw.get("blocks"), dict):
        kw["blocks"] = {_uid(store): kw["blocks"]["UID"]}  # type: ignore[index]
    with pytest.raises(ValueError, match=match):
        ctvol.train(store, 3, epochs=1, out=tmp_path / "m", **_small(**kw))
    assert not (tmp_path / "m").exists()


def test_l1_ssim_loss_is_zero_on_identity_and_ranks_structure():
    """0.84 (1 - SSIM) + 0.16 L1: zero for a perfect output; of two outputs with about
    the same L1 error, the one that keeps the structure (an offset) scores better than
    the noisy one; and it has a gradient."""
    import torch

    from ctvol.training.loop import l1_ssim_loss

    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 2, 48, 48, generator=g)
    assert float(l1_ssim_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    shifted = (y + 0.05).clamp(0, 1)              # same structure, offset intensity
    noisy = (y + 0.05 * torch.randn(y.shape, generator=g)).clamp(0, 1)
    l1 = torch.nn.functional.l1_loss
    assert float(l1(noisy, y)) <= float(l1(shifted, y)) * 1.1   # comparable L1 error
    assert float(l1_ssim_loss(shifted, y)) < float(l1_ssim_loss(noisy, y))
    x = y.clone().requires_grad_(True)
    l1_ssim_loss(x * 0.9, y).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
