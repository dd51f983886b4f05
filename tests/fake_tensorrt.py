"""A faithful fake of the ``tensorrt`` module's build API (TensorRT 10), for machines without it.

TensorRT cannot be installed on our CI machines (ENVIRONMENT.md), so ``export/tensorrt_build.py``
is exercised against this stand-in. It models only the documented names that build uses, with
TensorRT's argument names, return values and failure modes (``parse_from_file`` -> bool,
``add_optimization_profile`` -> -1 for an invalid profile, ``set_timing_cache`` -> False for a
cache from another GPU, ``get_timing_cache`` -> None when none is attached,
``build_serialized_network`` -> None on failure). Every class has ``__slots__`` and nothing else,
so a renamed, removed or misspelt call raises ``AttributeError`` exactly as the real bindings would.
Names checked against NVIDIA/TensorRT's python/src/infer/pyCore.cpp and its docstrings.
"""

from __future__ import annotations

import enum
import json
import types

CACHE_MAGIC = b"fake-trt-timing-cache\n"
STATE = types.SimpleNamespace(calls=[], device="", lose_cache=False)  # of the latest ``make()``


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0  # deprecated in 10.0
    STRONGLY_TYPED = 1


class NetworkDefinitionCreationFlagWithoutStrongTyping(enum.IntEnum):
    EXPLICIT_BATCH = 0


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


def _need(value, kind, what):
    """pybind11 rejects an argument of the wrong type with TypeError; so does the fake."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"incompatible function arguments: {what} must be {kind}, got {type(value).__name__}")


class IHostMemory:
    """Real: buffer protocol, ``nbytes``, ``dtype``; here ``bytes(mem)`` via ``__bytes__``."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes):
        self._data = data

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


class ITimingCache:
    __slots__ = ("header", "entries")

    def __init__(self, header: str, entries: list[str]):
        self.header, self.entries = header, entries

    def serialize(self) -> IHostMemory:
        body = json.dumps({"header": self.header, "entries": self.entries}).encode()
        return IHostMemory(CACHE_MAGIC + body)


class ITensor:
    __slots__ = ("name", "shape")

    def __init__(self, name: str, shape: tuple[int, ...]):
        self.name, self.shape = name, shape


class INetworkDefinition:
    __slots__ = ("_flags", "_inputs")

    def __init__(self, flags: int):
        self._flags, self._inputs = flags, []

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> ITensor:
        _need(index, int, "index")
        return self._inputs[index]


class ParserError:
    __slots__ = ("_text",)

    def __init__(self, text: str):
        self._text = text

    def __str__(self) -> str:
        return self._text


class IOptimizationProfile:
    __slots__ = ("shapes",)

    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's argument names
        _need(input, str, "input")
        STATE.calls.append("set_shape")
        dims = [tuple(min), tuple(opt), tuple(max)]
        for d in dims:
            if not all(isinstance(v, int) for v in d):
                raise TypeError(f"incompatible function arguments: shape {d} must be ints")
        self.shapes[input] = tuple(dims)


class IBuilderConfig:
    __slots__ = ("_profiles", "_pools", "_cache")

    def __init__(self):
        self._profiles, self._pools, self._cache = [], {}, None

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        _need(pool, MemoryPoolType, "pool")
        _need(pool_size, int, "pool_size")
        STATE.calls.append("set_memory_pool_limit")
        self._pools[pool] = pool_size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        _need(profile, IOptimizationProfile, "profile")
        STATE.calls.append("add_optimization_profile")
        for lo, opt, hi in profile.shapes.values():
            if len({len(lo), len(opt), len(hi)}) != 1:
                return -1  # TensorRT logs "invalid profile" and returns -1
            if not all(1 <= a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
                return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes):
        _need(serialized_timing_cache, (bytes, bytearray, memoryview), "serialized_timing_cache")
        blob = bytes(serialized_timing_cache)
        STATE.calls.append("create_timing_cache")
        if not blob:
            return ITimingCache(STATE.device, [])
        if not blob.startswith(CACHE_MAGIC):
            return None  # not a timing cache: TensorRT logs an error and returns None
        data = json.loads(blob[len(CACHE_MAGIC) :])
        return ITimingCache(data["header"], data["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        _need(cache, ITimingCache, "cache")
        _need(ignore_mismatch, bool, "ignore_mismatch")
        STATE.calls.append("set_timing_cache")
        if cache.header != STATE.device and not ignore_mismatch:
            return False  # verification header (GPU, TensorRT version) does not match
        self._cache = cache
        return True

    def get_timing_cache(self):
        STATE.calls.append("get_timing_cache")
        return None if STATE.lose_cache else self._cache


def _profiles_fit(network: INetworkDefinition, profiles: list) -> bool:
    """Every dynamic input needs a profile in each one, agreeing with its fixed dims."""
    dynamic = [t for t in network._inputs if -1 in t.shape]
    if dynamic and not profiles:
        return False  # "Network has dynamic or shape inputs, but no optimization profile has been defined"
    for p in profiles:
        for t in dynamic:
            if t.name not in p.shapes:
                return False
            for dims in p.shapes[t.name]:
                if len(dims) != len(t.shape) or any(s not in (-1, d) for s, d in zip(t.shape, dims, strict=True)):
                    return False
    return True


class Builder:
    __slots__ = ("logger",)

    def __init__(self, logger):
        self.logger = logger
        STATE.calls.append("Builder")

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        _need(flags, int, "flags")
        STATE.calls.append(("create_network", flags))
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        STATE.calls.append("create_builder_config")
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        STATE.calls.append("create_optimization_profile")
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        _need(network, INetworkDefinition, "network")
        _need(config, IBuilderConfig, "config")
        STATE.calls.append("build_serialized_network")
        if not network._inputs or not _profiles_fit(network, config._profiles):
            return None  # TensorRT logs the reason and returns None
        if config._cache is not None:
            config._cache.entries.append(f"tactics for {len(network._inputs)} inputs")
        plan = {
            "flags": network._flags,
            "workspace": config._pools.get(MemoryPoolType.WORKSPACE),
            "profiles": [{k: [list(d) for d in v] for k, v in p.shapes.items()} for p in config._profiles],
        }
        return IHostMemory(b"fake-plan\n" + json.dumps(plan).encode())


class OnnxParser:
    """Reads the real ONNX file's graph inputs (``-1`` for a symbolic dim, as TensorRT reports it)."""

    __slots__ = ("_network", "_errors")

    def __init__(self, network: INetworkDefinition, logger):
        _need(network, INetworkDefinition, "network")
        self._network, self._errors = network, []

    def parse_from_file(self, model: str) -> bool:
        import onnx

        _need(model, str, "model")
        STATE.calls.append("parse_from_file")
        try:
            graph = onnx.load(model).graph
        except Exception as e:
            self._errors.append(ParserError(f"ModelImporter: failed to parse {model}: {e}"))
            return False
        for inp in graph.input:
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim)
            self._network._inputs.append(ITensor(inp.name, dims))
        return True

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        _need(index, int, "index")
        return self._errors[index]


class IExecutionContext:
    """Runtime side, only ``set_input_shape``: True inside the profile's [min, max] per dimension, else False
    (TensorRT logs an error and returns False; it does not raise)."""

    __slots__ = ("profile", "shapes")

    def __init__(self, profile: dict[str, tuple]):
        self.profile, self.shapes = profile, {}

    def set_input_shape(self, name: str, shape) -> bool:
        _need(name, str, "name")
        lo, _, hi = self.profile[name]
        shape = tuple(shape)
        ok = len(shape) == len(lo) and all(a <= v <= b for a, v, b in zip(lo, shape, hi, strict=True))
        if ok:
            self.shapes[name] = shape
        return ok


def make(version: str = "10.9.0", strongly_typed: bool = True, device: str = "GPU-A", lose_cache: bool = False):
    """A fresh ``tensorrt`` module; ``device`` stands for the GPU + version a timing cache records.

    ``strongly_typed=False`` models a TensorRT whose enum lacks ``STRONGLY_TYPED``; ``lose_cache``
    makes ``get_timing_cache`` return None, as documented when the config holds no cache.
    """
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    STATE.calls, STATE.device, STATE.lose_cache = [], f"{device}/{version}", lose_cache

    class Logger:
        __slots__ = ("min_severity",)
        Severity = Severity
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(Severity)

        def __init__(self, min_severity=Severity.WARNING):
            _need(min_severity, Severity, "min_severity")
            self.min_severity = min_severity

    m.Logger = Logger
    m.Builder, m.OnnxParser = Builder, OnnxParser
    m.MemoryPoolType = MemoryPoolType
    m.NetworkDefinitionCreationFlag = (
        NetworkDefinitionCreationFlag if strongly_typed else NetworkDefinitionCreationFlagWithoutStrongTyping
    )
    for cls in (IHostMemory, ITimingCache, ITensor, INetworkDefinition, IOptimizationProfile, IBuilderConfig):
        setattr(m, cls.__name__, cls)
    return m
