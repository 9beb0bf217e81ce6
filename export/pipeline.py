"""`export.run(cfg)`: a VLAPolicy checkpoint -> a validated deploy artifact (docs/artifact-format.md).

    checkpoint ──► vision.onnx / embed.onnx / decoder.onnx (action-only head) + tokenizer.json
                   (decoder with ONNX Runtime's fused ops for --target onnxruntime)
               ──► target check (onnx checker; TensorRT parser rules for --target tensorrt)
               ──► manifest.json ──► validation: torch vs ONNX Runtime vs rt2edge.runtime
               ──► export_report.json, export_config.json, final manifest

Everything is written into a temp folder next to `cfg.out` and renamed into place at the end, so
a failure at any step (an exporter crash, a rejected graph, a validation past tolerance) leaves
no artifact, not half of one, and an existing artifact untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
import torch
import transformers

from export.adapters import adapter_for
from export.config import ExportConfig
from export.head_savings import OPENVLA_7B, DecoderShape, head_savings
from export.onnx_export import ModelDims, export_graphs, model_dims
from export.parallel_graph import export_parallel_graphs
from export.parallel_validate import validate_parallel_artifact
from export.targets import get_target, optimization_profiles
from export.validate import Observation, check_observations, random_observations, validate_artifact
from rt2edge import __version__
from rt2edge.artifact import ArtifactManifest, FileSpec, ModelSpec, sha256_file, write_manifest
from rt2edge.errors import ConfigError, ExportValidationError
from rt2edge.models.checkpoint import atomic_directory

log = logging.getLogger("rt2edge.export")

REPORT_FILE = "export_report.json"
TOKENIZER_FILE = "tokenizer.json"


def load_policy(checkpoint: Path):
    from rt2edge.models.policy import VLAPolicy

    if not Path(checkpoint).is_dir():
        raise ConfigError("checkpoint", f"{str(checkpoint)!r} is not a folder")
    # fp32 on CPU: the reference the graphs are validated against, whatever the export precision.
    return VLAPolicy.from_pretrained(checkpoint, dtype=torch.float32).eval()


def checkpoint_digest(folder: Path) -> str:
    """sha256 over the checkpoint's files (names and contents), so a manifest names its source."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def longest_prompt(policy) -> int:
    """Tokens of the longest prompt the checkpoint's PromptFormat allows (the runtime refuses
    longer instructions)."""
    prompt = policy.prompt
    return (prompt.num_image_tokens + (prompt.bos_token_id is not None) + prompt.max_text_tokens
            + len(prompt.suffix_ids))


def fused_positions(policy, cfg: ExportConfig) -> int:
    """Rotary positions the fused decoder's cos/sin cache holds: every position a decode reaches
    (the longest prompt, or the profile's if larger, plus the action tokens)."""
    return max(longest_prompt(policy), cfg.max_prompt_tokens or 0) + policy.action_tokenizer.tokens_per_action


def profile_sizes(policy, cfg: ExportConfig) -> dict[str, tuple[int, int, int]]:
    """min/opt/max of each symbolic dim. opt is the decode step (seq 1, past = a prompt): it runs
    tokens_per_action - 1 times per action, the prefill once."""
    prompt = policy.prompt
    longest = longest_prompt(policy)
    max_prompt = cfg.max_prompt_tokens or longest
    steps = policy.action_tokenizer.tokens_per_action
    text = max(1, max_prompt - prompt.num_image_tokens)
    sizes = {"batch": (1, 1, cfg.max_batch),
             "seq": (1, 1, max_prompt),
             "past": (0, max_prompt, max_prompt + steps - 1),
             # embed also runs once on all n_bins action ids (the runtime's per-bin cache)
             "embed.seq": (1, text, max(max_prompt, policy.action_tokenizer.n_bins))}
    if policy.decoding == "parallel":  # its only decoder run takes the whole prompt
        sizes["decoder.seq"] = (1, max_prompt, max_prompt)
    return sizes


def _manifest(policy, cfg: ExportConfig, target: str, graphs, dims: ModelDims, adapter,
              files: dict[str, FileSpec], extra: dict[str, Any], source_sha256: str) -> ArtifactManifest:
    opset = cfg.opset
    return ArtifactManifest(
        graphs=graphs, files=files,
        model=ModelSpec(family=policy.family, num_layers=dims.num_layers, num_kv_heads=dims.num_kv_heads,
                        head_dim=dims.head_dim, hidden_size=dims.hidden_size, prefix_lm=adapter.prefix_lm),
        action_tokenizer=policy.action_tokenizer, prompt=policy.prompt,
        image_preprocessing=policy.image_preprocessing, precision=cfg.precision, target=target,
        decoding=policy.decoding,  # parallel: format_version 2, which version-1 runtimes refuse
        # [Contract] every dataset's statistics travel, so the robot can unnormalize for the
        # dataset it runs on (`Policy.load(..., unnorm_key=...)`, OpenVLA's unnorm_key).
        extra={**extra, "dataset_statistics": {name: stats.to_dict() for name, stats in
                                               policy.dataset_statistics.items()},
               "default_unnorm_key": policy.default_unnorm_key},
        provenance={"source_checkpoint": str(cfg.checkpoint), "source_sha256": source_sha256,
                    "rt2edge_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__,
                    "transformers": transformers.__version__, "onnx": onnx.__version__,
                    "onnx_opset": opset})


def _initializer_shapes(path: Path) -> list[list[int]]:
    model = onnx.load(str(path), load_external_data=False)
    return [list(t.dims) for t in model.graph.initializer]


def check_no_full_vocab_head(folder: Path, dims: ModelDims) -> None:
    """[Contract] decoder.onnx holds no [vocab, hidden] matrix: the full-vocabulary LM head (or a
    tied embedding table) in the decoder would mean the action-only head did not take."""
    full = {(dims.vocab_size, dims.hidden_size), (dims.hidden_size, dims.vocab_size)}
    offending = [s for s in _initializer_shapes(folder / "decoder.onnx") if tuple(s) in full]
    if offending:
        raise ExportValidationError(f"decoder.onnx holds a full-vocabulary matrix {offending[0]}; the "
                                    "action-only head must replace the LM head")


def run(cfg: ExportConfig, observations: Iterable[Observation] | None = None) -> Path:
    """Export `cfg.checkpoint` to the artifact folder `cfg.out`; return its path.

    observations: (uint8 image (H, W, 3), instruction) pairs to validate on; default:
    `cfg.validate_frames` random ones. Raises ExportValidationError when the graphs disagree
    with torch past the tolerance (nothing is written then).
    """
    started = time.perf_counter()
    target = get_target(cfg.target)
    if cfg.out.exists() and not cfg.overwrite:
        raise ConfigError("out", f"{cfg.out} exists; pass overwrite=True (--overwrite) to replace it")
    policy = load_policy(cfg.checkpoint)
    if policy.decoding == "parallel" and target.fuses_decoder:
        # The parallel decoder is exported plain under every target: the manifest says so, so
        # the runtime may still offer it to TensorRT and quantize may target TensorRT.
        log.info("rt2edge export: parallel decoding has no fused graph; writing target 'onnx'")
        target = get_target("onnx")
    adapter = adapter_for(policy.family)
    adapter.check(policy.model)
    frames = (check_observations(observations) if observations is not None else
              random_observations(cfg.validate_frames, policy.image_preprocessing.size, cfg.seed))
    tokenizer = policy.action_tokenizer
    dims = model_dims(policy.model, adapter, tokenizer.n_bins, policy.prompt.num_image_tokens)
    source_sha256 = checkpoint_digest(cfg.checkpoint)
    timings: dict[str, float] = {}

    with atomic_directory(cfg.out) as tmp:
        t = time.perf_counter()
        if policy.decoding == "parallel":
            exported = export_parallel_graphs(policy.model, adapter, tokenizer.token_ids.tolist(),
                                              policy.slots.slot_token_ids, dims, tmp, cfg.opset, cfg.precision)
        else:
            exported = export_graphs(policy.model, adapter, tokenizer.token_ids.tolist(), dims, tmp,
                                     cfg.opset, cfg.precision,
                                     fused_positions(policy, cfg) if target.fuses_decoder else None)
        timings["export_s"] = time.perf_counter() - t
        graphs = {name: e.spec for name, e in exported.items()}
        check_no_full_vocab_head(tmp, dims)
        checks = target.check_graphs(tmp, graphs, cfg.precision)
        policy.text_tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
        files = {"tokenizer": FileSpec(TOKENIZER_FILE)}
        files.update({f"{name}.data": FileSpec(e.data_file) for name, e in exported.items() if e.data_file})
        profiles = optimization_profiles(graphs, profile_sizes(policy, cfg))
        extra = target.manifest_extra(profiles, checks)
        # A first manifest, so the robot runtime can load the artifact during validation.
        write_manifest(tmp, _manifest(policy, cfg, target.name, graphs, dims, adapter, files, extra, source_sha256))

        t = time.perf_counter()
        log.info("rt2edge export: validating on %d observations", len(frames))
        validate = validate_parallel_artifact if policy.decoding == "parallel" else validate_artifact
        validation = validate(policy, tmp, ModelSpec(policy.family, dims.num_layers, dims.num_kv_heads,
                                                     dims.head_dim, dims.hidden_size, adapter.prefix_lm),
                              frames, cfg.precision, cfg.tolerance)
        timings["validate_s"] = time.perf_counter() - t
        text_config = adapter.text_config(policy.model)
        shape = DecoderShape.from_text_config(cfg.checkpoint.name or "checkpoint", text_config,
                                              tokenizer.n_bins, tokenizer.tokens_per_action)
        timings["total_s"] = time.perf_counter() - started
        report = {
            "validation": validation.to_dict(),
            "head_savings": {"this_model": head_savings(shape).to_dict(),
                             "openvla_7b": head_savings(OPENVLA_7B).to_dict()},
            "target_checks": checks,
            "graph_bytes": {name: (tmp / spec.file).stat().st_size for name, spec in graphs.items()},
            "profiles": profiles,
            "timings": timings,
        }
        (tmp / REPORT_FILE).write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
        config_file = cfg.write(tmp)
        files.update({"export_report": FileSpec(REPORT_FILE), "export_config": FileSpec(config_file.name)})
        write_manifest(tmp, _manifest(policy, cfg, target.name, graphs, dims, adapter, files, extra, source_sha256))
    log.info("rt2edge export: wrote %s (token agreement %s)", cfg.out,
             validation.to_dict()["token_agreement"])
    if cfg.build_engine:
        from export.engine import build_engine

        build_engine(cfg.out)
    return cfg.out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else str(value)
    return value
