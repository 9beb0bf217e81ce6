"""`quantize.run(cfg)`: the quantize stage's one entry function.

    out = quantize.run(QuantizeConfig(source="ckpt/student", out="ckpt/student-nf4", method="bnb-nf4"))

1. checks the source (an rt2edge checkpoint, not already quantized) and the output folder;
2. dispatches to the registered method, which writes into a temp folder next to `out`;
3. compares the reference and the reloaded quantized policy on the calibration observations;
4. writes quantize_config.json and quantize_report.{json,md} into the temp folder, and renames it
   to `out` only then: a failure at any step leaves no `out` (nor temp folder) behind.
"""

from __future__ import annotations

import json
import time
from itertools import islice
from pathlib import Path
from typing import Any, Iterable

from rt2edge.errors import ArtifactError, ConfigError
from rt2edge.models.checkpoint import METADATA_FILE, atomic_directory, read_metadata
from quantize.calibration import calibration_observations
from quantize.config import CONFIG_FILE, QuantizeConfig
from quantize.fidelity import (
    FidelityReport,
    LogitFidelity,
    as_observations,
    compare_logits,
    compare_tokens,
    run_logit_fn,
    run_token_fn,
)
from quantize.registry import MethodOutput, QuantMethod, get_method
from quantize.sizes import compression

REPORT_STEM = "quantize_report"


def quantization_record(folder: str | Path) -> dict[str, Any] | None:
    """The "quantization" record of a checkpoint's rt2edge.json, else the Hugging Face
    `quantization_config` of its config.json (quantized elsewhere); None when unquantized."""
    folder = Path(folder)
    for name, key in ((METADATA_FILE, "quantization"), ("config.json", "quantization_config")):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable or not JSON: {exc}") from exc
        if isinstance(data, dict) and data.get(key):
            return dict(data[key])
    return None


def check_source(cfg: QuantizeConfig, method: QuantMethod) -> None:
    if method.source != "checkpoint":
        raise ConfigError("method", f"{method.name!r} reads a {method.source}; only checkpoint sources are wired")
    if not cfg.source.is_dir():
        raise ConfigError("source", f"{str(cfg.source)!r} does not exist or is not a folder")
    read_metadata(cfg.source)  # ArtifactError if it is not an rt2edge checkpoint
    record = quantization_record(cfg.source)
    if record is not None:
        what = record.get("method") or record.get("quant_method") or "unknown method"
        raise ConfigError("source", f"{str(cfg.source)!r} is already quantized ({what}); "
                                    "quantize the unquantized checkpoint instead")


def check_out(cfg: QuantizeConfig) -> None:
    if cfg.out.exists() and not cfg.overwrite:
        raise ConfigError("out", f"{str(cfg.out)!r} already exists (set overwrite to replace it)")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise ConfigError("out", f"{str(cfg.out)!r} exists and is not a folder")
    try:
        cfg.out.resolve().relative_to(cfg.source.resolve())
    except ValueError:
        return
    raise ConfigError("out", "must not be inside the source checkpoint")


def evaluate(result: MethodOutput, obs: list, batch_size: int) -> tuple[FidelityReport, LogitFidelity | None]:
    """Token / action fidelity, plus the logit error when the method exposes logits."""
    ref_tokens = run_token_fn(result.reference, obs, batch_size)
    cand_tokens = run_token_fn(result.candidate, obs, batch_size)
    fidelity = compare_tokens(ref_tokens, cand_tokens, result.action_tokenizer)
    if result.reference_logits is None or result.candidate_logits is None:
        return fidelity, None
    # Both sides teacher-forced on the reference's tokens: the same prefix at every step.
    logits = compare_logits(run_logit_fn(result.reference_logits, obs, ref_tokens, batch_size),
                            run_logit_fn(result.candidate_logits, obs, ref_tokens, batch_size))
    return fidelity, logits


def build_report(cfg: QuantizeConfig, method: QuantMethod, result: MethodOutput,
                 fidelity: FidelityReport, logits: LogitFidelity | None, seconds: float) -> dict[str, Any]:
    return {
        "method": method.name, "description": method.description, "bits": cfg.bits,
        "block_size": cfg.block_size, "source": str(cfg.source), "out": str(cfg.out),
        "seconds": round(seconds, 3),
        "weight_bytes": {"before": result.bytes_before, "after": result.bytes_after,
                         "ratio": compression(result.bytes_before, result.bytes_after)},
        "details": result.details,
        "fidelity": fidelity.to_dict(),
        "action_logits": None if logits is None else logits.to_dict(),
    }


def report_markdown(report: dict[str, Any], fidelity: FidelityReport, logits: LogitFidelity | None) -> str:
    before, after = report["weight_bytes"]["before"], report["weight_bytes"]["after"]
    lines = [f"# Quantization: {report['method']}", "", report["description"], "",
             f"- source: `{report['source']}`", f"- bits: {report['bits']}, block size: "
             f"{report['block_size'] or 'per-channel'}",
             f"- kept in source precision: {', '.join(report['details'].get('kept_groups', [])) or 'none'}",
             f"- time: {report['seconds']:.1f} s", "",
             "| group | bytes before | bytes after | after/before |", "|---|---|---|---|"]
    for group, b in before.items():
        a = after.get(group, 0)
        ratio = f"{a / b:.3f}" if b else "-"
        lines.append(f"| {group} | {b:,} | {a:,} | {ratio} |")
    text = "\n".join(lines) + "\n\n" + fidelity.to_markdown()
    return text + ("" if logits is None else "\n" + logits.to_markdown())


def run(cfg: QuantizeConfig, observations: Iterable[Any] | None = None) -> Path:
    """Quantize `cfg.source` into `cfg.out` and return `cfg.out`. `observations` ((image,
    instruction) pairs or dataset frames) replace `cfg.calibration` when given."""
    if not isinstance(cfg, QuantizeConfig):
        raise ConfigError("config", f"expected a QuantizeConfig, got {type(cfg).__name__}")
    method = get_method(cfg.method)
    check_source(cfg, method)
    check_out(cfg)
    meta = read_metadata(cfg.source)
    if observations is None:
        obs = calibration_observations(cfg.calibration, cfg.calibration_frames,
                                       meta.image_preprocessing.size, cfg.seed)
    else:
        obs = list(islice(observations, cfg.calibration_frames))
    if not obs:
        raise ConfigError("calibration", "yielded no observations")
    obs = as_observations(obs)
    with atomic_directory(cfg.out) as tmp:
        start = time.perf_counter()
        result = method.handler(cfg, tmp, obs)
        seconds = time.perf_counter() - start
        fidelity, logits = evaluate(result, obs, cfg.batch_size)
        report = build_report(cfg, method, result, fidelity, logits, seconds)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / f"{REPORT_STEM}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / f"{REPORT_STEM}.md").write_text(report_markdown(report, fidelity, logits), encoding="utf-8")
    return cfg.out
