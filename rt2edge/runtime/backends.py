"""Registry of inference backends, and the ONNX Runtime ones.

A backend turns the artifact's three graphs into `GraphRunner`s (numpy in, numpy out). They are
registered with a priority, not chosen by an if/elif chain; `open_graphs` walks them best first:

    tensorrt-engine             prebuilt TensorRT engines listed in the manifest (rt2edge.runtime.engine)
    TensorrtExecutionProvider   ONNX Runtime with TensorRT (engine cache next to the artifact)
    CUDAExecutionProvider       ONNX Runtime with CUDA
    CPUExecutionProvider        ONNX Runtime on the CPU: always there, the last fallback
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from rt2edge.artifact import GRAPH_NAMES, ArtifactManifest
from rt2edge.errors import ArtifactError, ConfigError
from rt2edge.optional import require

log = logging.getLogger("rt2edge.runtime")

CPU = "CPUExecutionProvider"
ALIASES = {"cpu": CPU, "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
           "trt": "TensorrtExecutionProvider", "engine": "tensorrt-engine"}


class GraphRunner(Protocol):
    input_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class BackendOptions:
    num_threads: int | None = None  # intra-op threads per graph; None = the backend's default
    cache_dir: str | None = None  # TensorRT EP engine cache; None = ARTIFACT/.trt_cache


@dataclass(frozen=True)
class Backend:
    """`unavailable(folder, manifest)` says why it cannot run here (None = it can);
    `create(folder, manifest, options)` returns the runners and the provider actually used."""

    name: str
    priority: int
    unavailable: Callable[[Path, ArtifactManifest], str | None]
    create: Callable[[Path, ArtifactManifest, BackendOptions], tuple[dict[str, GraphRunner], str]]


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


def registered_backends() -> list[Backend]:
    return sorted(_REGISTRY.values(), key=lambda b: -b.priority)


def resolve_provider(name: str) -> str:
    key = ALIASES.get(name.lower(), name) if isinstance(name, str) else name
    if key not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(ALIASES))
        raise ConfigError("providers", f"unknown provider {name!r}; known: {known}")
    return key


def open_graphs(folder: Path, manifest: ArtifactManifest, providers: Sequence[str] | None,
                options: BackendOptions) -> tuple[dict[str, GraphRunner], str]:
    """Open the graphs with the first usable backend of `providers` (default: all, best first).
    The CPU backend is always tried last, so a robot without its accelerator still runs (logged)."""
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    names = [b.name for b in registered_backends()] if not providers else [
        resolve_provider(p) for p in providers]
    if CPU not in names:
        names.append(CPU)
    reasons: list[str] = []
    failed = False
    for name in names:
        backend = _REGISTRY[name]
        why = backend.unavailable(folder, manifest)
        if why is None:
            try:
                runners, used = backend.create(folder, manifest, options)
            except ArtifactError:
                raise
            except Exception as exc:  # a broken GPU stack must not keep the robot from running
                why = f"failed to start: {type(exc).__name__}: {exc}"
                failed = True
        if why is None:
            # Skipping what this machine simply lacks is routine in auto mode; not getting an
            # explicitly requested backend, or a backend that failed to start, is worth a warning.
            level = logging.WARNING if failed or (providers and name != names[0]) else logging.INFO
            log.log(level, "rt2edge runtime: using %s%s", used,
                    f" ({'; '.join(reasons)})" if reasons else "")
            return runners, used
        reasons.append(f"{name} skipped: {why}")
        log.info("rt2edge runtime: %s skipped: %s", name, why)
    raise ArtifactError(f"{folder}: no backend could open the graphs ({'; '.join(reasons)})")


# --------------------------------------------------------------------------------- ONNX Runtime
class OrtGraph:
    """One ONNX Runtime session. Plain `session.run` with numpy: on the CPU EP, IO binding measured
    no faster for these graphs (see docs/artifact-format.md, "Runtime notes")."""

    def __init__(self, session: object):
        self.session = session
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        return self.session.run(list(outputs), dict(feeds))


def _ort():
    return require("onnxruntime", extra="cpu", purpose="running ONNX deploy artifacts")


def _session_options(options: BackendOptions):
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1  # the graphs are sequential chains; parallel branches are rare
    if options.num_threads is not None:
        so.intra_op_num_threads = int(options.num_threads)
    # The three sessions run one after another; a session's pool spinning after its run would
    # steal the cores the next session needs (measured: slower on a shared 2-core machine).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def trt_profile_options(manifest: ArtifactManifest, graph: str) -> dict[str, str]:
    """The TensorRT EP's explicit optimization profile of one graph, from the manifest's
    `tensorrt.profiles` (written by `export --target tensorrt`). Without it the EP builds an engine
    for the first shapes it sees and rebuilds it (seconds) whenever the KV cache or a new prompt
    outgrows them: inside `act`, where no deadline can interrupt it."""
    profile = ((manifest.extra or {}).get("tensorrt") or {}).get("profiles", {}).get(graph)
    if not profile:
        return {}
    out = {}
    for bound in ("min", "opt", "max"):
        shapes = ",".join(f"{name}:{'x'.join(str(int(d)) for d in dims[bound])}"
                          for name, dims in sorted(profile.items()))
        out[f"trt_profile_{bound}_shapes"] = shapes
    return out


def _ep_chain(name: str, folder: Path, options: BackendOptions, manifest: ArtifactManifest,
              graph: str) -> list:
    cache = options.cache_dir or str(folder / ".trt_cache")
    trt = ("TensorrtExecutionProvider", {"trt_engine_cache_enable": True,
                                         "trt_engine_cache_path": cache, "trt_timing_cache_enable": True,
                                         "trt_timing_cache_path": cache,
                                         **trt_profile_options(manifest, graph)})
    chain = {"TensorrtExecutionProvider": [trt, "CUDAExecutionProvider", CPU],
             "CUDAExecutionProvider": ["CUDAExecutionProvider", CPU], CPU: [CPU]}
    return chain[name]


def _ort_unavailable(name: str) -> Callable[[Path, ArtifactManifest], str | None]:
    def unavailable(folder: Path, manifest: ArtifactManifest) -> str | None:
        from rt2edge.optional import is_available

        if not is_available("onnxruntime"):
            return "onnxruntime is not installed (pip install 'rt2edge[cpu]')"
        if name not in _ort().get_available_providers():
            return "not in this onnxruntime build (onnxruntime-gpu provides it)"
        too_old = _older_onnxruntime(manifest)
        if too_old:
            return too_old
        if name == "TensorrtExecutionProvider" and manifest.target == "onnxruntime":
            # TensorRT would take only the plain islands between the contrib ops and leave the
            # rest to CUDA/CPU: slower than asking for the right graphs.
            return ("the graphs hold ONNX Runtime contrib ops (target 'onnxruntime') that TensorRT cannot "
                    "parse; export with --target tensorrt")
        return None
    return unavailable


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:3] if part.isdigit())


def _older_onnxruntime(manifest: ArtifactManifest) -> str | None:
    """Fused graphs use contrib-op attributes/inputs that older ONNX Runtime builds lack, and
    they fail there with an opaque session error: name the version gap instead."""
    if manifest.target != "onnxruntime":
        return None
    validated = str((manifest.extra.get("onnxruntime") or {}).get("validated_with") or "")
    if not validated:
        return None
    installed = _ort().__version__
    if _version(installed)[:2] < _version(validated)[:2]:
        return (f"the graphs hold ONNX Runtime fused ops validated with onnxruntime {validated}; this is "
                f"{installed}: upgrade onnxruntime, or re-export with --target onnx")
    return None


def _ort_create(name: str):
    def create(folder: Path, manifest: ArtifactManifest, options: BackendOptions):
        ort = _ort()
        if name == "CUDAExecutionProvider" and manifest.target == "onnxruntime" and manifest.precision == "fp32":
            # ORT registers its CUDA GroupQueryAttention kernel for float16/bfloat16 only
            # (docs/OperatorKernels.md): fp32 fused attention runs on the CPU between CUDA nodes.
            log.warning("fp32 graphs with fused ONNX Runtime attention: on CUDA the attention nodes fall "
                        "back to the CPU; export with --precision fp16, or --target onnx")
        runners: dict[str, GraphRunner] = {}
        used = name
        for graph in GRAPH_NAMES:
            chain = _ep_chain(name, folder, options, manifest, graph)
            session = ort.InferenceSession(str(folder / manifest.graphs[graph].file),
                                           sess_options=_session_options(options), providers=chain)
            # ORT falls back to the CPU by itself when an EP's libraries fail to load; report what
            # really runs, not what was asked for.
            used = session.get_providers()[0]
            if used != name:
                raise RuntimeError(f"onnxruntime fell back to {used} for {graph}")
            runners[graph] = OrtGraph(session)
        check_io(manifest, runners)
        return runners, used
    return create


def check_io(manifest: ArtifactManifest, runners: Mapping[str, GraphRunner]) -> None:
    """The opened graphs take the inputs the manifest promises (catches a manifest/graph mix-up)."""
    for graph, runner in runners.items():
        expected = {t.name for t in manifest.graphs[graph].inputs}
        if set(runner.input_names) != expected:
            raise ArtifactError(
                f"{manifest.graphs[graph].file}: graph inputs {sorted(runner.input_names)} differ from "
                f"the manifest's {sorted(expected)}")


for _priority, _name in ((30, "TensorrtExecutionProvider"), (20, "CUDAExecutionProvider"), (10, CPU)):
    register_backend(Backend(_name, _priority, _ort_unavailable(_name), _ort_create(_name)))
