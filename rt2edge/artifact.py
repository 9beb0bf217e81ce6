"""Deploy artifact: `manifest.json` + graphs, their hashes, and the one reader/writer (numpy/json).

The format is specified in docs/artifact-format.md. `export/` builds an `ArtifactManifest` and
calls `write_manifest(folder, manifest)` after the graph files are on disk; the robot runtime calls
`load_manifest(folder)`, which refuses anything it cannot trust (missing, truncated or tampered
files, an unknown or newer format) with an `ArtifactError` naming the file, before any inference
session is created.

    manifest = ArtifactManifest(
        precision="fp32", target="onnx",
        graphs={"vision": GraphSpec("vision.onnx", inputs=[TensorSpec("pixel_values", "float32",
                ["batch", 3, 224, 224])], outputs=[...]), "embed": ..., "decoder": ...},
        files={"tokenizer": FileSpec("tokenizer.json")},
        model=ModelSpec(family="llava", num_layers=4, num_kv_heads=4, head_dim=32, hidden_size=128),
        action_tokenizer=action_tokenizer, prompt=prompt_format, image_preprocessing=preprocessing,
        provenance={...})
    write_manifest(out_dir, manifest)      # fills sha256/bytes, writes manifest.json atomically
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from rt2edge.actions import ActionStatistics, ActionTokenizer
from rt2edge.atomic import atomic_write_text
from rt2edge.errors import ArtifactError, ConfigError, Rt2EdgeError
from rt2edge.observation import ImagePreprocessing, PromptFormat
from rt2edge.onnx_external import MalformedGraph, external_data_files

FORMAT = "rt2edge-artifact"
FORMAT_VERSION = 3  # the newest format this reader reads
# [Contract] how the decoder graph yields an action, and the first format version that has it. A
# manifest is written with the lowest version that describes it: autoregressive artifacts stay
# version 1 (readable by every runtime), a version-1 runtime refuses a parallel one by its version.
DECODING_VERSIONS = {"autoregressive": 1, "parallel": 2}
DECODINGS = tuple(DECODING_VERSIONS)
# A prompt with the instruction before the image (PromptFormat.instruction_first) is new in
# version 3: an older reader ignores the key and would build image-first prompts, wrong actions.
INSTRUCTION_FIRST_VERSION = 3


def required_format_version(decoding: str, prompt_config: Mapping[str, Any]) -> int:
    """The lowest format version that describes a model with this decoding and prompt."""
    layout = INSTRUCTION_FIRST_VERSION if prompt_config.get("instruction_first") else 1
    return max(DECODING_VERSIONS[decoding], layout)


def version_reason(decoding: str, prompt_config: Mapping[str, Any]) -> str:
    """What sets `required_format_version`, for an error message."""
    if DECODING_VERSIONS[decoding] >= required_format_version(decoding, prompt_config):
        return f"'decoding' {decoding!r}"
    return "'prompt.instruction_first'"


MANIFEST_FILE = "manifest.json"
GRAPH_NAMES = ("vision", "embed", "decoder")
# What the graphs are for: "onnxruntime" graphs may hold ONNX Runtime contrib ops (com.microsoft),
# "onnx" and "tensorrt" graphs hold default-domain ops only (docs/artifact-format.md, "Targets").
TARGETS = ("onnxruntime", "onnx", "tensorrt")
DTYPES = ("float32", "float16", "int64", "int32", "bool")
_CHUNK = 1 << 20

Dim = int | str  # a fixed size or a symbolic name ("batch", "past_length", ...)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (graphs can be several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(data: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ArtifactError(f"{MANIFEST_FILE}: '{where}' must be an object, got {type(data).__name__}")
    if key not in data:
        raise ArtifactError(f"{MANIFEST_FILE}: '{where}' lacks the key '{key}'")
    return data[key]


def _check_relative(file: str, where: str) -> str:
    # A manifest must not point outside its folder: a tampered manifest could otherwise make the
    # runtime hash (and load) any file on the robot.
    if not isinstance(file, str) or not file:
        raise ArtifactError(f"{MANIFEST_FILE}: '{where}.file' must be a non-empty string")
    path = PurePosixPath(file)
    if path.is_absolute() or ".." in path.parts or "\\" in file:
        raise ArtifactError(f"{MANIFEST_FILE}: '{where}.file' = {file!r} must be a relative path "
                            "inside the artifact folder")
    return file


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape (ints or symbolic dim names)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ArtifactError(f"tensor '{self.name}': dtype must be one of {DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(self.shape))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "tensor") -> TensorSpec:
        shape = _require(data, "shape", where)
        if not isinstance(shape, list) or not all(isinstance(d, (int, str)) for d in shape):
            raise ArtifactError(f"{MANIFEST_FILE}: '{where}.shape' must be a list of ints / names")
        return cls(str(_require(data, "name", where)), str(_require(data, "dtype", where)), tuple(shape))


@dataclass(frozen=True)
class FileSpec:
    """A file of the artifact. sha256/bytes are filled in by `write_manifest`."""

    file: str
    sha256: str | None = None
    bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> FileSpec:
        file = _check_relative(_require(data, "file", where), where)
        return cls(file, data.get("sha256"), data.get("bytes"))


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph: its file (with hash) and its input/output contract."""

    file: str
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    sha256: str | None = None
    bytes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> GraphSpec:
        file = _check_relative(_require(data, "file", where), where)
        inputs = [TensorSpec.from_dict(t, f"{where}.inputs") for t in _require(data, "inputs", where)]
        outputs = [TensorSpec.from_dict(t, f"{where}.outputs") for t in _require(data, "outputs", where)]
        return cls(file, tuple(inputs), tuple(outputs), data.get("sha256"), data.get("bytes"))



def cache_names(num_layers: int, prefix: str) -> list[str]:
    """[Contract] KV-cache tensor names of the decoder graph: "{prefix}.{layer}.key|value", with
    prefix "past" for inputs and "present" for outputs, layer-major."""
    return [f"{prefix}.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]

@dataclass(frozen=True)
class ModelSpec:
    """What the runtime needs to drive the decoder: KV-cache shapes and the attention layout."""

    family: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    prefix_lm: bool = False  # True: the prompt attends bidirectionally (PaliGemma)

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ArtifactError(f"{MANIFEST_FILE}: 'model.{name}' must be an int >= 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        keys = ("num_layers", "num_kv_heads", "head_dim", "hidden_size")
        return cls(family=str(_require(data, "family", "model")),
                   **{k: _require(data, k, "model") for k in keys},
                   prefix_lm=_flag(data.get("prefix_lm", False), "model.prefix_lm"))


def _flag(value: Any, where: str) -> bool:
    # bool("false") is True: a flag that changes the attention mask must be a JSON boolean.
    if not isinstance(value, bool):
        raise ArtifactError(f"{MANIFEST_FILE}: '{where}' must be true or false, got {value!r}")
    return value


def _as_config(value: Any) -> dict[str, Any]:
    # Accept the rt2edge object or its dict, so the manifest always holds plain JSON data.
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


@dataclass(init=False)
class ArtifactManifest:
    """The parsed `manifest.json`. Field names follow the JSON keys except the three configs, whose
    objects are built by `action_tokenizer()`, `prompt_format()` and `image_preprocessing()`."""

    graphs: dict[str, GraphSpec]
    files: dict[str, FileSpec]
    model: ModelSpec
    action_tokenizer_config: dict[str, Any]
    prompt_config: dict[str, Any]
    image_preprocessing_config: dict[str, Any]
    precision: str = "fp32"
    target: str = "onnx"
    # TensorRT engines built on the target device, keyed by graph name; hashed like the graphs.
    engines: dict[str, FileSpec] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1
    # "autoregressive": one decoder run per action token (KV cache); "parallel": one run per action.
    decoding: str = "autoregressive"
    # Keys this reader does not know are kept so that a read-modify-write does not drop them.
    extra: dict[str, Any] = field(default_factory=dict)

    def __init__(self, graphs: Mapping[str, GraphSpec], files: Mapping[str, FileSpec],
                 model: ModelSpec, action_tokenizer: Any, prompt: Any, image_preprocessing: Any,
                 precision: str = "fp32", target: str = "onnx",
                 engines: Mapping[str, FileSpec] | None = None,
                 provenance: Mapping[str, Any] | None = None,
                 format_version: int | None = None, extra: Mapping[str, Any] | None = None,
                 decoding: str = "autoregressive"):
        self.graphs = dict(graphs)
        self.files = dict(files)
        self.model = model
        self.action_tokenizer_config = _as_config(action_tokenizer)
        self.prompt_config = _as_config(prompt)
        self.image_preprocessing_config = _as_config(image_preprocessing)
        self.precision = precision
        self.target = target
        self.engines = dict(engines or {})
        self.provenance = dict(provenance or {})
        if decoding not in DECODING_VERSIONS:
            raise ArtifactError(f"{MANIFEST_FILE}: 'decoding' must be one of {DECODINGS}, got {decoding!r}")
        self.decoding = decoding
        needed = required_format_version(decoding, self.prompt_config)
        self.format_version = needed if format_version is None else format_version
        if self.format_version < needed:
            raise ArtifactError(f"{MANIFEST_FILE}: {version_reason(decoding, self.prompt_config)} needs "
                                f"format_version >= {needed} (older runtimes must refuse it), got {self.format_version}")
        self.extra = dict(extra or {})
        missing = [g for g in GRAPH_NAMES if g not in self.graphs]
        if missing:
            raise ArtifactError(f"{MANIFEST_FILE}: 'graphs' lacks {missing}")
        if "tokenizer" not in self.files:
            raise ArtifactError(f"{MANIFEST_FILE}: 'files' lacks 'tokenizer' (the tokenizer.json)")
        if self.target not in TARGETS:
            raise ArtifactError(f"{MANIFEST_FILE}: 'target' must be one of {TARGETS}, got {target!r}")

    # ------------------------------------------------------------------------- rt2edge objects
    def action_tokenizer(self, unnorm_key: str | None = None) -> ActionTokenizer:
        """The action tokenizer; with `unnorm_key`, unnormalizing with that dataset's statistics
        (token ids and bins are shared; only the statistics differ)."""
        tokenizer = self._build("action_tokenizer", ActionTokenizer.from_dict, self.action_tokenizer_config)
        if unnorm_key is None or unnorm_key == self.extra.get("default_unnorm_key"):
            return tokenizer
        datasets = self.extra.get("dataset_statistics") or {}
        if not isinstance(unnorm_key, str) or unnorm_key not in datasets:
            raise ConfigError("unnorm_key", f"unknown dataset {unnorm_key!r}; this artifact has "
                                            f"statistics for {sorted(datasets) or 'no dataset'}")
        stats = self._build("dataset_statistics", ActionStatistics.from_dict, datasets[unnorm_key])
        return dataclasses.replace(tokenizer, statistics=stats)

    def prompt_format(self) -> PromptFormat:
        return self._build("prompt", PromptFormat.from_dict, self.prompt_config)

    def image_preprocessing(self) -> ImagePreprocessing:
        return self._build("image_preprocessing", ImagePreprocessing.from_dict,
                           self.image_preprocessing_config)

    @staticmethod
    def _build(key: str, factory: Any, data: dict[str, Any]) -> Any:
        try:
            return factory(data)
        except (Rt2EdgeError, KeyError, TypeError, ValueError, OverflowError) as exc:  # int(Infinity)
            raise ArtifactError(f"{MANIFEST_FILE}: '{key}' is invalid: {exc}") from exc

    def all_files(self) -> dict[str, FileSpec | GraphSpec]:
        """Every file the manifest vouches for, keyed by where it is named in the manifest."""
        out: dict[str, FileSpec | GraphSpec] = {f"graphs.{k}": v for k, v in self.graphs.items()}
        out.update({f"files.{k}": v for k, v in self.files.items()})
        out.update({f"engines.{k}": v for k, v in self.engines.items()})
        return out

    # ------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "decoding": self.decoding,
            "precision": self.precision,
            "target": self.target,
            "graphs": {k: v.to_dict() for k, v in self.graphs.items()},
            "files": {k: v.to_dict() for k, v in self.files.items()},
            "engines": {k: v.to_dict() for k, v in self.engines.items()},
            "model": self.model.to_dict(),
            "action_tokenizer": self.action_tokenizer_config,
            "prompt": self.prompt_config,
            "image_preprocessing": self.image_preprocessing_config,
            "provenance": self.provenance,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactManifest:
        if not isinstance(data, Mapping):
            raise ArtifactError(f"{MANIFEST_FILE}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ArtifactError(f"{MANIFEST_FILE}: 'format' is {data.get('format')!r}, "
                                f"not {FORMAT!r}: not an rt2edge deploy artifact")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ArtifactError(f"{MANIFEST_FILE}: 'format_version' must be an int >= 1, got {version!r}")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"{MANIFEST_FILE}: format_version {version} is newer than this rt2edge reads "
                f"({FORMAT_VERSION}); upgrade rt2edge on the robot or re-export with an older one")
        graphs = _require(data, "graphs", "manifest")
        files = _require(data, "files", "manifest")
        engines = data.get("engines") or {}
        known = {"format", "format_version", "precision", "target", "graphs", "files", "engines",
                 "model", "action_tokenizer", "prompt", "image_preprocessing", "provenance", "decoding"}
        decoding = data.get("decoding", "autoregressive")  # version-1 manifests have no such key
        if not isinstance(decoding, str):
            raise ArtifactError(f"{MANIFEST_FILE}: 'decoding' must be a string, got {decoding!r}")
        return cls(
            graphs={k: GraphSpec.from_dict(v, f"graphs.{k}") for k, v in dict(graphs).items()},
            files={k: FileSpec.from_dict(v, f"files.{k}") for k, v in dict(files).items()},
            engines={k: FileSpec.from_dict(v, f"engines.{k}") for k, v in dict(engines).items()},
            model=ModelSpec.from_dict(_require(data, "model", "manifest")),
            action_tokenizer=_require(data, "action_tokenizer", "manifest"),
            prompt=_require(data, "prompt", "manifest"),
            image_preprocessing=_require(data, "image_preprocessing", "manifest"),
            precision=str(data.get("precision", "fp32")),
            target=str(data.get("target", "onnx")),
            provenance=dict(data.get("provenance") or {}),
            format_version=version,
            extra={k: v for k, v in data.items() if k not in known},
            decoding=decoding,
        )

    def validate(self) -> None:
        """Cross-check the configs against the graph contracts (sizes that must agree)."""
        tokenizer = self.action_tokenizer()
        prompt = self.prompt_format()
        preprocessing = self.image_preprocessing()
        checks = [
            ("vision", "pixel_values", True, {1: 3, 2: preprocessing.size, 3: preprocessing.size}),
            ("vision", "image_embeds", False, {1: prompt.num_image_tokens, 2: self.model.hidden_size}),
            ("embed", "input_ids", True, {}),
            ("embed", "inputs_embeds", False, {2: self.model.hidden_size}),
            ("decoder", "inputs_embeds", True, {2: self.model.hidden_size}),
        ]
        if self.decoding == "parallel":  # every action token from one run, no KV cache
            steps = tokenizer.tokens_per_action
            checks += [("decoder", "action_logits", False, {1: steps, 2: tokenizer.n_bins}),
                       ("decoder", "action_bins", False, {1: steps})]
        else:
            checks += [("decoder", "action_logits", False, {1: tokenizer.n_bins}),
                       ("decoder", "action_bin", False, {})]
            # The runtime feeds caches shaped by `model`: a graph that disagrees fails every act.
            kv = {1: self.model.num_kv_heads, 3: self.model.head_dim}
            checks += [("decoder", name, True, kv) for name in cache_names(self.model.num_layers, "past")
                       if self.graphs["decoder"].input(name) is not None]
        for graph, name, is_input, sizes in checks:
            spec = self.graphs[graph]
            tensor = spec.input(name) if is_input else spec.output(name)
            if tensor is None:
                kind = "input" if is_input else "output"
                raise ArtifactError(f"{MANIFEST_FILE}: graph '{graph}' ({spec.file}) lacks the {kind} '{name}'")
            for axis, expected in sizes.items():
                if axis < len(tensor.shape) and isinstance(tensor.shape[axis], int) and (
                        tensor.shape[axis] != expected):
                    raise ArtifactError(
                        f"{MANIFEST_FILE}: graph '{graph}' {name} has size {tensor.shape[axis]} on axis "
                        f"{axis}, the manifest's configs need {expected}")
        decoder = self.graphs["decoder"]
        if self.decoding == "parallel":
            return
        names = ["past_length", "prefix_length"] + cache_names(self.model.num_layers, "past")
        lacking = [n for n in names if decoder.input(n) is None]
        if lacking:
            raise ArtifactError(f"{MANIFEST_FILE}: graph 'decoder' ({decoder.file}) lacks inputs {lacking}")


def _file_status(folder: Path, spec: FileSpec | GraphSpec, where: str) -> None:
    path = folder / spec.file
    # A symlink inside the folder could still point anywhere on the robot: follow it and require
    # the target inside the folder too.
    if path.exists() and not path.resolve().is_relative_to(folder.resolve()):
        raise ArtifactError(f"{MANIFEST_FILE}: '{where}' ({spec.file}) resolves outside the artifact folder")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing ({where} in {MANIFEST_FILE})")
    if spec.sha256 is None or spec.bytes is None:
        raise ArtifactError(f"{MANIFEST_FILE}: '{where}' ({spec.file}) has no sha256/bytes; "
                            "manifests must be written with rt2edge.artifact.write_manifest")
    size = path.stat().st_size
    if size != spec.bytes:
        # Checked before hashing: a truncated copy (interrupted scp/rsync) is the common case and
        # deserves a clearer message than a hash mismatch.
        raise ArtifactError(f"{path}: {size} bytes, the manifest says {spec.bytes} "
                            f"({'truncated' if size < spec.bytes else 'changed'} file)")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise ArtifactError(f"{path}: sha256 {actual[:16]}... does not match the manifest's "
                            f"{str(spec.sha256)[:16]}... (file modified or corrupt)")


def verify_files(folder: str | os.PathLike, manifest: ArtifactManifest) -> None:
    """Check every graph/file/engine the manifest lists: present, right size, right sha256; and
    that every external-data file a graph reads is one of them (ONNX Runtime would load an
    unlisted one unchecked)."""
    root = Path(folder)
    for where, spec in manifest.all_files().items():
        _file_status(root, spec, where)
    listed = {PurePosixPath(spec.file) for spec in manifest.all_files().values()}
    for name, graph in manifest.graphs.items():
        try:
            locations = external_data_files(root / graph.file)
        except (MalformedGraph, OSError) as exc:
            raise ArtifactError(f"{root / graph.file}: not a readable ONNX graph ({exc})") from exc
        base = PurePosixPath(graph.file).parent
        for location in locations:
            target = base / location
            if target not in listed or ".." in target.parts:
                raise ArtifactError(f"{MANIFEST_FILE}: graph '{name}' ({graph.file}) reads external data "
                                    f"{location!r} that the manifest does not list with its sha256")


def read_json_file(path: Path, missing_hint: str) -> Any:
    """JSON content of `path`; a missing or unparsable file -> ArtifactError naming it."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {missing_hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # deep nesting
        raise ArtifactError(f"{path}: cannot be parsed as JSON: {type(exc).__name__}: {exc}") from exc


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> ArtifactManifest:
    """Parse and validate `folder/manifest.json`; with `verify`, check all files' sizes and hashes."""
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"{root}: artifact folder does not exist")
    path = root / MANIFEST_FILE
    data = read_json_file(path, "not an rt2edge deploy artifact (or export did not finish)")
    try:
        manifest = ArtifactManifest.from_dict(data)
    except ArtifactError as exc:
        raise ArtifactError(f"{root}: {exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: malformed manifest: {exc}") from exc
    manifest.validate()
    if verify:
        verify_files(root, manifest)
    return manifest


def _with_hashes(root: Path, spec: Any, where: str) -> Any:
    path = root / spec.file
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; write every file before the manifest ({where})")
    return dataclasses.replace(spec, sha256=sha256_file(path), bytes=path.stat().st_size)


def write_manifest(folder: str | os.PathLike, manifest: ArtifactManifest) -> ArtifactManifest:
    """Hash every listed file, then write `folder/manifest.json` atomically; return the manifest
    with sha256/bytes filled in. Call it last: a folder with a manifest is a finished artifact."""
    root = Path(folder)
    manifest.validate()
    done = ArtifactManifest.from_dict(manifest.to_dict())  # a copy; the caller's stays as it was
    done.graphs = {k: _with_hashes(root, v, f"graphs.{k}") for k, v in manifest.graphs.items()}
    done.files = {k: _with_hashes(root, v, f"files.{k}") for k, v in manifest.files.items()}
    done.engines = {k: _with_hashes(root, v, f"engines.{k}") for k, v in manifest.engines.items()}
    text = json.dumps(done.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"
    # Readers see the old manifest or the new one, never a half-written one, even if the exporter
    # is killed mid-write; 0644 whatever the umask, since the runtime may run as another user.
    atomic_write_text(root / MANIFEST_FILE, text, mode=0o644)
    return done
