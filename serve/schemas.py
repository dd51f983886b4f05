"""Pydantic request/response models of the HTTP API, so ``/docs`` documents every route.

Request models are built from the ``ServeConfig`` limits, so the OpenAPI schema states the
real bounds (images per request, interpolation steps) and validation enforces them as 422s.
The schema admits exactly what validation accepts (a test fuzzes this with schemathesis): JSON
Schema's ``integer`` includes ``58.0``, so integral floats are accepted as ints, and the
either/or rule of ``/v1/generate`` is stated in the schema itself.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, model_validator

from projgan.config import ServeConfig

MAX_SEED = 2**32 - 1


def _integral(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


# Strict (no "3", no true) but 3.0 is 3, as in JSON Schema. The validator must come after Field(...):
# placed before it, pydantic writes the bounds into the schema as "ge"/"le" instead of minimum/maximum.
Integral = BeforeValidator(_integral)
Seed = Annotated[
    StrictInt, Field(ge=0, le=MAX_SEED, description="0 … 2³²−1; a seed always gives the same image"), Integral
]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # the field is optional, but null is not a value it accepts


# Exactly one of the two forms; "seed" only with "n". Keys, not values: null is no value for seeds or n.
GENERATE_FORMS = [
    {"title": "by seeds", "required": ["seeds"], "not": {"anyOf": [{"required": ["n"]}, {"required": ["seed"]}]}},
    {"title": "by count", "required": ["n"], "not": {"required": ["seeds"]}},
]


def request_models(cfg: ServeConfig) -> tuple[type[BaseModel], type[BaseModel]]:
    """(GenerateRequest, InterpolateRequest) with this server's limits."""

    class GenerateRequest(BaseModel):
        """Either ``seeds`` or ``n`` (consecutive seeds from ``seed``, random when omitted)."""

        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={
                "examples": [{"seeds": [1, 2, 3], "format": "png"}, {"n": 8, "seed": 100, "format": "zip"}],
                "oneOf": GENERATE_FORMS,
            },
        )
        # Optional but not nullable: the default None means "not given", which the schema's oneOf states.
        seeds: Annotated[list[Seed], Field(min_length=1, max_length=cfg.max_images)] = Field(
            None, json_schema_extra=_no_default
        )
        n: Annotated[StrictInt, Field(ge=1, le=cfg.max_images), Integral] = Field(
            None, description="number of images", json_schema_extra=_no_default
        )
        seed: Seed | None = Field(
            None, description="first seed when n is given (seeds seed, seed+1, … wrap around after 2³²−1)"
        )
        format: Literal["png", "zip", "npy"] = Field(
            "png", description="png: JSON with base64 PNGs; zip: PNGs named seed_<n>.png; npy: uint8 [B, H, W, 3]"
        )

        @model_validator(mode="after")
        def _one_way(self):
            if (self.seeds is None) == (self.n is None):
                raise ValueError('give either "seeds" (a list) or "n" (a count), not both and not neither')
            if self.seeds is not None and "seed" in self.model_fields_set:
                raise ValueError('"seed" goes with "n"; with "seeds" list every seed')
            return self

        def seed_list(self) -> list[int]:
            if self.seeds is not None:
                return list(self.seeds)
            first = self.seed if self.seed is not None else secrets.randbelow(MAX_SEED - self.n + 2)
            # Wrapping keeps every schema-valid (n, seed) valid: JSON Schema cannot say seed + n - 1 <= MAX_SEED.
            return [(first + i) % (MAX_SEED + 1) for i in range(self.n)]

    class InterpolateRequest(BaseModel):
        """Spherical interpolation between the latents of two seeds."""

        model_config = ConfigDict(
            extra="forbid",
            populate_by_name=True,
            json_schema_extra={"examples": [{"from": 1, "to": 2, "steps": 16, "format": "gif"}]},
        )
        from_: Seed = Field(alias="from")
        to: Seed
        steps: Annotated[StrictInt, Field(ge=2, le=cfg.max_interpolation_steps), Integral] = Field(
            16, description="frames, both ends included"
        )
        format: Literal["gif", "zip"] = Field("gif", description="gif: animated (forth and back); zip: frame_000.png …")
        duration_ms: Annotated[StrictInt, Field(ge=20, le=2000), Integral] = Field(80, description="GIF frame duration")

    return GenerateRequest, InterpolateRequest


class ImageOut(BaseModel):
    seed: int
    png: str = Field(description="base64-encoded PNG")


class GenerateResponse(BaseModel):
    resolution: int
    images: list[ImageOut]


class Limits(BaseModel):
    max_images: int
    max_interpolation_steps: int
    max_body_bytes: int
    queue_size: int
    seed_range: tuple[int, int] = (0, MAX_SEED)


class ModelCard(BaseModel):
    resolution: int
    z_dim: int
    kimg: float | None = Field(None, description="training length of these weights, thousands of images")
    fid: float | None = Field(None, description="FID recorded for these weights, if any")
    backend: str
    device: str
    precision: str
    providers: list[str]
    parity: dict[str, Any] | None = Field(
        None, description="export parity result of this backend, if served from an export"
    )
    source: str
    max_batch: int
    max_delay_ms: float
    limits: Limits
    meta: dict[str, Any] = Field(default_factory=dict)


class Status(BaseModel):
    status: str


class ErrorOut(BaseModel):
    error: str
    detail: list[dict[str, Any]] | None = None
