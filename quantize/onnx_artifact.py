"""The deploy artifact side of the ONNX methods: read a source artifact, write the quantized one.

Source: `rt2edge.artifact.load_manifest(verify=True)` (every file's size and sha256 checked, so a
corrupt or tampered source is refused with ArtifactError before anything is read); then refused
with ConfigError("source") when it is not an fp32 artifact or carries a "quantization" record.

Output: a new artifact in the work folder (the stage renames it into place only when everything
succeeded): the quantized graphs, the source's untouched graphs and tokenizer copied, and a new
manifest (written by `write_manifest`, so every hash is the new file's) with
  precision     the method name ("int8-dynamic", "int8-qdq", "int4-matmulnbits", "int4-qdq")
  target        "onnx" or "tensorrt" (QuantizeConfig.target); "onnxruntime" for an "onnx" output
                of an "onnxruntime" source (its contrib ops stay in the graphs)
  quantization  what was done (docs/artifact-format.md, "Quantized artifacts")
  provenance    the source's, plus the source artifact's path and manifest sha256 and the method
The source's export_report/export_config describe the fp32 export and are not carried over.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from rt2edge import __version__
from rt2edge.artifact import (MANIFEST_FILE, ArtifactManifest, FileSpec, load_manifest, sha256_file,
                              write_manifest)
from rt2edge.errors import ConfigError

QUANTIZATION_KEY = "quantization"
SOURCE_PRECISIONS = ("fp32",)
EXPORT_ONLY_FILES = ("export_report", "export_config")  # describe the fp32 export, not the output


def read_source(source: Path) -> ArtifactManifest:
    """The verified manifest of an unquantized fp32 artifact (ArtifactError / ConfigError)."""
    manifest = load_manifest(source, verify=True)
    decoding = getattr(manifest, "decoding", "autoregressive")
    if decoding != "autoregressive":
        # The probe's teacher forcing and calibration recording follow the KV-cache decode loop;
        # a parallel decoder (one run per action) is not wired here yet.
        raise ConfigError("source", f"{str(source)!r} is a {decoding!r}-decoding artifact; the ONNX methods "
                                    "quantize autoregressive (KV-cache) artifacts only")
    record = manifest.extra.get(QUANTIZATION_KEY)
    if record or manifest.precision not in SOURCE_PRECISIONS:
        what = (record or {}).get("method") if isinstance(record, Mapping) else None
        raise ConfigError("source", f"{str(source)!r} is already quantized or reduced "
                                    f"(precision {what or manifest.precision!r}); quantize its fp32 export")
    return manifest


def source_target(target: str | None) -> str | None:
    """The export target a source artifact must have for an output of `target`, or None when any
    fp32 export serves: a TensorRT output needs the plain graphs and the optimization profiles
    only a `--target tensorrt` export has."""
    return "tensorrt" if target == "tensorrt" else None


def check_target(target: str | None, manifest: ArtifactManifest, source: Path) -> None:
    """Refuse a source whose export cannot give an output of `target` (`source_target`)."""
    if source_target(target) is None:
        return
    if manifest.target == "onnxruntime":
        raise ConfigError("target", f"{str(source)!r} was exported for target 'onnxruntime': its decoder holds "
                                    "ONNX Runtime contrib ops (com.microsoft) that TensorRT cannot parse; "
                                    "re-export it with --target tensorrt")
    if not (manifest.extra.get("tensorrt") or {}).get("profiles"):
        raise ConfigError("target", f"{str(source)!r} was exported for target {manifest.target!r} and has no "
                                    "'tensorrt.profiles'; re-export it with --target tensorrt")


def output_target(target: str, manifest: ArtifactManifest) -> str:
    """The manifest target of the quantized artifact: an "onnx" output of an "onnxruntime"
    source keeps "onnxruntime", since its graphs still hold the source's contrib ops."""
    return "onnxruntime" if target == "onnx" and manifest.target == "onnxruntime" else target


def deployed_bytes(folder: Path, manifest: ArtifactManifest) -> int:
    """Bytes on disk of what the robot loads: the graphs and their files, without the reports."""
    total = sum((folder / spec.file).stat().st_size for spec in manifest.graphs.values())
    total += sum((folder / spec.file).stat().st_size for key, spec in manifest.files.items()
                 if key not in EXPORT_ONLY_FILES and not key.startswith("quantize_"))
    return total


def write_artifact(source: Path, manifest: ArtifactManifest, work_dir: Path, quantized: Mapping[str, Path],
                   *, method: str, target: str, record: Mapping[str, Any], versions: Mapping[str, str]
                   ) -> ArtifactManifest:
    """Assemble the quantized artifact in `work_dir`: `quantized` maps graph names to the new
    graph files (moved in under the source's file names), every other graph and file is copied."""
    graphs = {}
    for name, spec in manifest.graphs.items():
        if name in quantized:
            shutil.move(str(quantized[name]), work_dir / spec.file)
        else:
            shutil.copy2(source / spec.file, work_dir / spec.file)
        graphs[name] = spec
    files: dict[str, FileSpec] = {}
    for key, spec in manifest.files.items():
        graph_data = key.endswith(".data") and key[:-len(".data")] in quantized  # inlined by the writer
        if key in EXPORT_ONLY_FILES or graph_data:
            continue
        (work_dir / spec.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / spec.file, work_dir / spec.file)
        files[key] = FileSpec(spec.file)
    provenance = {**manifest.provenance, "quantized_from": str(source),
                  "source_artifact_sha256": sha256_file(source / MANIFEST_FILE),
                  "source_precision": manifest.precision, "quantize_method": method,
                  "quantized": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quantize_rt2edge_version": __version__,
                  **versions}
    out = ArtifactManifest(
        graphs=graphs, files=files, model=manifest.model, action_tokenizer=manifest.action_tokenizer_config,
        prompt=manifest.prompt_config, image_preprocessing=manifest.image_preprocessing_config,
        precision=method, target=target, engines={},  # engines are built from the new graphs, on the robot
        provenance=provenance, extra={**manifest.extra, QUANTIZATION_KEY: dict(record)})
    return write_manifest(work_dir, out)


def list_report_files(work_dir: Path, names: list[str]) -> None:
    """Add the stage's report/config files to the manifest (hashed like every other file)."""
    manifest = load_manifest(work_dir, verify=False)
    for name in names:
        manifest.files[Path(name).stem if name.endswith(".json") else name.replace(".", "_")] = FileSpec(name)
    write_manifest(work_dir, manifest)
