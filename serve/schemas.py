"""Pydantic request/response models of the HTTP API, so ``/docs`` documents every route.

Request models are built from the ``ServeConfig`` limits, so the OpenAPI schema states the
real bounds (images per request, interpolation steps) and validation enforces them as 422s.
The schema admits exactly what validation accepts (a test fuzzes this with schemathesis): JSON
Schema's ``integer`` includes ``58.0``, so integral floats are accepted as ints, and the
either/or rule of ``/v1/generate`` is stated in the schema itself.

What a request may say about classes and truncation depends on the served model, which is loaded
after the routes exist: the request models accept any index/name and psi in ``TRUNCATION_RANGE``,
``ModelFacts`` checks them against the model (422 naming the allowed values), and
``specialise_openapi`` narrows the published schema to exactly those values once the model is known.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, model_validator

from projgan.config import ServeConfig

MAX_SEED = 2**32 - 1
# psi of w = w_avg + psi (w - w_avg): 1 is no truncation, 0 the (class's) average image, above 1 exaggerates.
TRUNCATION_RANGE = (0.0, 2.0)


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


# An index (3.0 counts as 3) or a name; which ones exist is the model's business (ModelFacts).
ClassValue = Annotated[StrictInt | StrictStr, Integral]
Truncation = Annotated[float, Field(strict=True, ge=TRUNCATION_RANGE[0], le=TRUNCATION_RANGE[1])]
CLASS_DOC = (
    "class index (0 … K−1) or name, for every image of the request; class-conditional models only "
    "(GET /v1/model lists the classes). Without it each seed gets class seed mod K."
)
CLASS_QUERY_DOC = (
    "class name, or index (0 … K−1) in decimal; class-conditional models only (GET /v1/model lists the "
    "classes). Without it the seed gets class seed mod K."
)
INTERPOLATE_CLASS_DOC = (
    "class index (0 … K−1) or name for both ends; class-conditional models only. Without it: in w (style "
    "models) each end keeps its seed's class (seed mod K); in z every frame has the class of `from`."
)
TRUNCATION_DOC = (
    f"truncation psi, {TRUNCATION_RANGE[0]:g} … {TRUNCATION_RANGE[1]:g}: w = w_avg + psi·(w − w_avg); "
    "1 = none, 0 = the class's average image. Style models only; others accept only 1."
)


@dataclass(frozen=True)
class ModelFacts:
    """What the served model takes besides seeds: its classes, truncation, and whether it has a w space."""

    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    truncation: bool = False
    supports_w: bool = False

    @classmethod
    def of(cls, backend) -> ModelFacts:
        k = int(backend.num_classes)
        names = tuple(backend.class_names) or tuple(f"class{i}" for i in range(k))
        return cls(k, names, bool(backend.truncation), bool(backend.supports_w))

    def allowed_classes(self) -> str:
        return f"{', '.join(self.class_names)} (or 0..{self.num_classes - 1})"

    def class_index(self, value: int | str | None, url: bool = False) -> int | None:
        """The index a request's class names (None when it names none); ``url``: a decimal string may be an
        index too (a name wins). ValueError says what is allowed."""
        if value is None:
            return None
        if not self.num_classes:
            raise ValueError("this model is unconditional: it takes no class")
        if isinstance(value, str):
            if value in self.class_names:
                return self.class_names.index(value)
            if url and value.isascii() and value.isdigit() and str(int(value)) == value:
                value = int(value)
        if isinstance(value, int) and 0 <= value < self.num_classes:
            return value
        raise ValueError(f"class must be one of: {self.allowed_classes()}")

    def truncation_psi(self, psi: float | None) -> float | None:
        """psi for the model (None: no truncation asked); the range itself is checked by the request models."""
        if psi is None:
            return None
        if not self.truncation:
            if psi == 1:
                return None
            raise ValueError("this model has no truncation (style models only): omit it or pass 1")
        return float(psi)

    def class_schema(self) -> dict[str, Any]:
        k = self.num_classes
        return {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": k - 1},
                {"type": "string", "enum": list(self.class_names)},
            ]
        }

    def truncation_schema(self) -> dict[str, Any]:
        lo, hi = TRUNCATION_RANGE if self.truncation else (1.0, 1.0)
        return {"type": "number", "minimum": lo, "maximum": hi}


def specialise_openapi(doc: dict[str, Any], facts: ModelFacts) -> dict[str, Any]:
    """Narrow ``doc``'s generic class and truncation fields to what this model accepts: class names and
    index range (the field is gone for an unconditional model), psi's range (exactly 1 without truncation)."""

    def narrow(schema: dict[str, Any], exact: dict[str, Any]) -> dict[str, Any]:
        keep = {k: schema[k] for k in ("title", "description") if k in schema}
        return {**exact, **keep}

    for name in ("GenerateRequest", "InterpolateRequest"):
        props = doc.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {})
        if "class" in props:
            if facts.num_classes:
                props["class"] = narrow(props["class"], facts.class_schema())
            else:
                del props["class"]
        if "truncation" in props:
            props["truncation"] = narrow(props["truncation"], facts.truncation_schema())
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            params = op.get("parameters") if isinstance(op, dict) else None
            if not params:
                continue
            kept = []
            for p in params:
                if p.get("in") == "query" and p.get("name") == "class":
                    if not facts.num_classes:
                        continue
                    p["schema"] = narrow(p.get("schema", {}), facts.class_schema())
                elif p.get("in") == "query" and p.get("name") == "truncation":
                    p["schema"] = narrow(p.get("schema", {}), facts.truncation_schema())
                kept.append(p)
            op["parameters"] = kept
    return doc


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
            populate_by_name=True,
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
        class_: ClassValue = Field(None, alias="class", description=CLASS_DOC, json_schema_extra=_no_default)
        truncation: Truncation = Field(None, description=TRUNCATION_DOC, json_schema_extra=_no_default)

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
        """Interpolation between two seeds: linear in w for style models (each end is exactly that seed's
        image), else spherical in z (with the class of ``from`` for every frame when none is named)."""

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
        class_: ClassValue = Field(
            None, alias="class", description=INTERPOLATE_CLASS_DOC, json_schema_extra=_no_default
        )
        truncation: Truncation = Field(None, description=TRUNCATION_DOC, json_schema_extra=_no_default)

    return GenerateRequest, InterpolateRequest


class ImageOut(BaseModel):
    seed: int
    class_: int | None = Field(None, alias="class", description="the image's class index (conditional models)")
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
    truncation_range: tuple[float, float] = Field(TRUNCATION_RANGE, description="psi's bounds (style models)")


class ModelCard(BaseModel):
    resolution: int
    z_dim: int
    num_classes: int = Field(0, description="0: unconditional")
    class_names: list[str] = Field(default_factory=list, description="what the API's class field accepts by name")
    truncation: bool = Field(False, description="whether the model takes a truncation psi (style models)")
    supports_w: bool = Field(False, description="whether /v1/interpolate interpolates in w (style models)")
    kimg: float | None = Field(None, description="training length of these weights, thousands of images")
    fid: float | None = Field(None, description="FID recorded for these weights, if any")
    backend: str
    device: str
    precision: str
    providers: list[str]
    parity: dict[str, Any] | None = Field(
        None, description="export parity result of this backend, if served from an export"
    )
    mode: str | None = Field(None, description="torch backend: eager, graphs (CUDA graphs) or compile")
    buckets: list[int] = Field(default_factory=list, description="the batch sizes the backend runs (padded up to)")
    checks: dict[str, Any] = Field(
        default_factory=dict, description="load-time self-checks of a reduced precision or a graphs/compile variant"
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
