"""What every route of the server shares: the backend, its batcher, metrics, the encoder pool, readiness.

Requests become per-image columns here (z from the seeds, the class each image gets, psi), so requests
with different classes or truncations share one backend call; see ``serve/app.py`` for the routes.
"""

import asyncio
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from projgan.config import ServeConfig
from projgan.generator import classes_for_seeds, sample_latents, slerp
from projgan.serve import images as enc
from projgan.serve.batcher import Batcher
from projgan.serve.schemas import Limits, ModelFacts
from projgan.serve.telemetry import Metrics

log = logging.getLogger("projgan.serve")

# Up to this many bytes of pixels (e.g. five 64 px images, ~0.2 ms of PNG work each) an encoder runs inline:
# cheaper than two thread hops, which cost milliseconds on a busy machine.
INLINE_BYTES = 1 << 16


class Server:
    """What every route shares: the backend, its batcher, metrics, the encoder pool, readiness."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.backend = None
        self.facts = ModelFacts()  # classes, truncation, w space: known once the backend is loaded
        self.batcher: Batcher | None = None
        self.ready = False
        self.fingerprint = ""
        self.workers = max(2, min(4, os.cpu_count() or 2))
        self.pool: ThreadPoolExecutor | None = None
        self.scratch = None  # the UI's temp files (projgan.serve.ui.Scratch)

    async def start(self, backend) -> None:
        self.backend = backend
        self.facts = ModelFacts.of(backend)
        self.batcher = Batcher(
            backend.generate,
            max_batch=min(self.cfg.max_batch, backend.max_batch),
            max_delay_ms=self.cfg.max_delay_ms,
            queue_size=self.cfg.queue_size,
            stats=self.metrics,
            buckets=backend.buckets,
        )
        await self.batcher.start()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="projgan-encode")
        desc = backend.describe()
        self.fingerprint = hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.metrics.model.info({k: str(desc.get(k, "")) for k in ("backend", "device", "precision", "resolution")})

    async def warm_up(self) -> None:
        sizes = sorted({1, self.batcher.max_batch})
        await self.batcher.run_in_worker(self.backend.warmup, sizes)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("warmed up for batch sizes %s; ready", sizes)

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.scratch is not None:
            self.scratch.close()

    # ---------------------------------------------------------------- work

    def classes(self, seeds: list[int], cls: int | None) -> np.ndarray | None:
        """Each image's class: the one asked for, else ``seed % K``; None for an unconditional model."""
        if not self.facts.num_classes:
            return None
        if cls is None:
            return classes_for_seeds(seeds, self.facts.num_classes)
        return np.full(len(seeds), cls, dtype=np.int64)

    def columns(self, seeds: list[int], cls: int | None = None, psi: float | None = None) -> dict[str, np.ndarray]:
        """The per-image inputs besides z, exactly those the model takes (so every request to it batches together)."""
        cols = {}
        if self.facts.num_classes:
            cols["classes"] = self.classes(seeds, cls)
        if self.facts.truncation:
            cols["psi"] = np.full(len(seeds), 1.0 if psi is None else psi, dtype=np.float32)
        return cols

    async def generate(self, seeds: list[int], cls: int | None = None, psi: float | None = None) -> np.ndarray:
        return await self.batcher.submit(sample_latents(seeds, self.backend.z_dim), **self.columns(seeds, cls, psi))

    async def interpolate(
        self, a: int, b: int, steps: int, cls: int | None = None, psi: float | None = None
    ) -> np.ndarray:
        """Style models: linear in w (both ends mapped with their own class unless one is named, so the
        ends are the seeds' own images); others: slerp in z, every frame with the class of ``a``."""
        z = sample_latents([a, b], self.backend.z_dim)
        t = np.linspace(0.0, 1.0, steps)
        if self.facts.supports_w:
            w = await self.batcher.submit(z, fn=self.backend.map_w, **self.columns([a, b], cls, psi))
            ws = ((1.0 - t[:, None]) * w[0] + t[:, None] * w[1]).astype(np.float32)  # exact at both ends
            return await self.batcher.submit(ws, fn=self.backend.synthesize_w)
        return await self.batcher.submit(slerp(z[0], z[1], t), **self.columns([a] * steps, cls, psi))

    async def encode(self, fn, *args, cost: int | None = None):
        """Run an encoder on the pool; inline when ``cost`` (bytes of input) makes a thread hop the larger cost."""
        if cost is not None and cost <= INLINE_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def pngs(self, images: np.ndarray) -> list[bytes]:
        """Encode in parallel chunks on the pool, off the event loop, while the next batch runs."""
        if images.nbytes <= INLINE_BYTES or len(images) == 1:
            return await self.encode(_png_list, images, cost=images.nbytes)
        bounds = np.array_split(np.arange(len(images)), min(len(images), self.workers))
        parts = await asyncio.gather(*(self.encode(_png_list, images[ix[0] : ix[-1] + 1]) for ix in bounds))
        return [p for part in parts for p in part]

    def card(self) -> dict[str, Any]:
        d = self.backend.describe()
        meta = d.get("meta") or {}
        return {
            **{k: d.get(k) for k in ("resolution", "z_dim", "backend", "device", "precision")},
            "num_classes": self.facts.num_classes,
            "class_names": list(self.facts.class_names),
            "truncation": self.facts.truncation,
            "supports_w": self.facts.supports_w,
            "providers": list(d.get("providers") or []),
            "kimg": meta.get("kimg"),
            "fid": meta.get("fid"),
            "parity": d.get("parity"),
            "mode": d.get("mode"),
            "buckets": list(d.get("buckets") or []),
            "checks": {k: d[k] for k in ("precision_check", "mode_check") if k in d},
            "source": os.path.basename(os.path.normpath(self.cfg.source)),  # no server paths in a public card
            "max_batch": self.batcher.max_batch,
            "max_delay_ms": self.cfg.max_delay_ms,
            "limits": Limits(
                max_images=self.cfg.max_images,
                max_interpolation_steps=self.cfg.max_interpolation_steps,
                max_body_bytes=self.cfg.max_body_bytes,
                queue_size=self.cfg.queue_size,
            ),
            "meta": meta,
        }


def _png_list(images: np.ndarray) -> list[bytes]:
    return [enc.png(im) for im in images]


