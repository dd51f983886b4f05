"""Batch-size buckets: the batcher pads to them, and a seed's image is the same in every bucket."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from projgan import artifacts
from projgan.generator import classes_for_seeds, sample_latents
from projgan.serve.batcher import Batcher
from projgan.serve.buckets import bucket_for, buckets_up_to, chunks, pad_rows
from tests.conftest import make_generator


def test_buckets_are_powers_of_two_then_the_max():
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(32) == (1, 2, 4, 8, 16, 32)
    assert buckets_up_to(24) == (1, 2, 4, 8, 16, 24)
    assert [bucket_for(n, buckets_up_to(24)) for n in (1, 2, 3, 5, 16, 17, 24)] == [1, 2, 4, 8, 16, 24, 24]
    with pytest.raises(ValueError):
        bucket_for(25, buckets_up_to(24))
    assert chunks(10, 4) == [(0, 4), (4, 8), (8, 10)] and chunks(0, 4) == [(0, 0)]


def test_padding_repeats_the_last_row_of_every_column():
    rows = {"z": np.arange(6, dtype=np.float32).reshape(3, 2), "class": np.array([2, 0, 1])}
    out = pad_rows(rows, 5)
    assert out["z"].shape == (5, 2) and (out["z"][3:] == rows["z"][2]).all()
    assert out["class"].tolist() == [2, 0, 1, 1, 1]  # a real class, never a zero-filled one
    assert pad_rows(rows, 3) is rows
    with pytest.raises(ValueError):
        pad_rows(rows, 2)


class Sizes:
    """A batcher Stats observer recording what the backend was asked to run."""

    def __init__(self):
        self.sizes, self.pad = [], 0

    def batch(self, size, seconds):
        self.sizes.append(size)

    def padded(self, rows):
        self.pad += rows

    def queue_wait(self, seconds): ...

    def queue_depth(self, images): ...

    def rejected(self): ...


def test_the_batcher_runs_only_bucket_sizes_and_answers_each_request_its_own_rows():
    seen = []

    def generate(z, classes):
        seen.append(len(z))
        return np.concatenate([z[:, :1], classes[:, None].astype(np.float32)], axis=1)

    async def main():
        stats = Sizes()
        b = Batcher(generate, max_batch=8, max_delay_ms=20, stats=stats, buckets=buckets_up_to(8))
        await b.start()
        reqs = [(np.full((n, 3), i, np.float32), np.arange(n) + 10 * i) for i, n in enumerate((1, 2, 2, 5, 3))]
        outs = await asyncio.gather(*(b.submit(z, classes=c) for z, c in reqs))
        await b.stop()
        return stats, reqs, outs

    stats, reqs, outs = asyncio.run(main())
    assert set(seen) <= {1, 2, 4, 8} and stats.pad == sum(seen) - sum(stats.sizes) > 0
    for (z, c), out in zip(reqs, outs, strict=True):
        assert out.shape == (len(z), 2)
        np.testing.assert_array_equal(out[:, 0], z[:, 0])
        np.testing.assert_array_equal(out[:, 1], c)


def test_buckets_below_the_max_batch_are_refused():
    with pytest.raises(ValueError, match="largest bucket"):
        Batcher(lambda z: z, max_batch=32, buckets=(1, 2, 4))


@pytest.fixture(scope="module")
def conditional_backend(tmp_path_factory):
    from projgan.serve.backends import load_backend

    src = make_generator(tmp_path_factory.mktemp("buckets") / "g", resolution=32, ngf=16, num_classes=3)
    return load_backend(src, "torch", "cpu", "fp32")


def test_a_seeds_image_is_identical_whatever_its_bucket(conditional_backend):
    """Seed 7 alone (bucket 1), with two others (bucket 4, one padded row) and among 13 (bucket 16, three
    padded rows): the same bytes, through the real batcher and the real CPU torch backend."""
    be = conditional_backend
    assert be.buckets is None  # eager on a CPU runs any size; the buckets here are the batcher's
    seen = []

    def generate(z, classes):
        seen.append(len(z))
        return be.generate(z, classes)

    async def main():
        b = Batcher(generate, max_batch=16, max_delay_ms=0, buckets=buckets_up_to(16))
        await b.start()
        outs = []
        for seeds in ([7], [3, 7, 11], list(range(13))):
            z = sample_latents(seeds, be.z_dim)
            outs.append(await b.submit(z, classes=classes_for_seeds(seeds, be.num_classes)))
        await b.stop()
        return outs

    alone, three, many = asyncio.run(main())
    assert seen == [1, 4, 16]
    assert alone.dtype == np.uint8 and alone.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(three[1], alone[0])
    np.testing.assert_array_equal(many[7], alone[0])
    assert np.abs(many[3].astype(int) - many[7]).max() > 0  # different seeds: different images


def test_the_server_hands_the_backends_buckets_to_its_batcher(tmp_path, conditional_backend):
    from projgan.config import ServeConfig
    from projgan.serve.server import Server

    be = conditional_backend
    be.buckets = buckets_up_to(16)  # what a GPU backend (graphs, ONNX Runtime CUDA) declares

    async def main():
        s = Server(ServeConfig(source=str(tmp_path), max_batch=16, ui=False))
        await s.start(be)
        alone = await s.generate([7])
        three = await s.generate([3, 7, 11])
        buckets = s.batcher.buckets
        await s.stop()
        return buckets, alone, three

    try:
        buckets, alone, three = asyncio.run(main())
    finally:
        be.buckets = None
    assert buckets == (1, 2, 4, 8, 16)
    np.testing.assert_array_equal(three[1], alone[0])


def test_torch_modes_are_checked_before_anything_loads(tmp_path):
    from projgan.errors import UserError
    from projgan.serve.torch_backend import resolve_mode

    assert resolve_mode("auto", "cpu") == "eager" and resolve_mode("auto", "cuda:1") == "graphs"
    assert resolve_mode("compile", "cpu") == "compile"
    with pytest.raises(UserError, match="CUDA graphs need a GPU"):
        resolve_mode("graphs", "cpu")
    with pytest.raises(UserError, match="unknown torch mode"):
        resolve_mode("turbo", "cuda")
    G, config = artifacts.load_generator(make_generator(tmp_path / "g"))
    from projgan.serve.backends import TorchBackend

    with pytest.raises(UserError, match="CUDA graphs need a GPU"):
        TorchBackend(G, config, "cpu", "fp32", mode="graphs")


def test_result_buffers_are_reused_only_once_no_result_view_is_alive():
    """The GPU writes each batch's images into a buffer the caller keeps (no copy): a buffer still seen by a
    request's rows must never be handed out again, or a slow client would receive the next batch's pixels."""
    from projgan.serve.cuda_io import ResultBuffers

    made = [0]

    def alloc(nbytes):
        made[0] += 1
        return np.zeros(nbytes, np.uint8)

    pool = ResultBuffers(alloc, limit=2)
    first = pool.take(12)
    rows = first[:12].reshape(3, 4)[1:]  # what the batcher hands one request
    del first
    second = pool.take(12)
    assert made[0] == 2 and not np.shares_memory(second, rows)
    assert pool.take(12) is None  # both busy, at the limit: the caller copies instead
    del second
    again = pool.take(8)
    assert made[0] == 2 and not np.shares_memory(again, rows)  # the free one, not the one rows still see
    del again, rows
    bigger = pool.take(40)  # a larger batch: a free buffer that is too small is replaced
    assert bigger.nbytes == 40 and made[0] == 3
