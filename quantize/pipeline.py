"""`quantize.run(cfg)`: the quantize stage's one entry function, for checkpoints and artifacts.

    out = quantize.run(QuantizeConfig(source="ckpt/student", out="ckpt/student-nf4", method="bnb-nf4"))
    out = quantize.run(QuantizeConfig(source="artifacts/student", out="artifacts/student-int8",
                                      method="int8-qdq", calibration="sim"))

1. checks the source against the method (a checkpoint for the bitsandbytes methods, a verified
   fp32 deploy artifact for the ONNX ones; never an already-quantized one) and the output folder;
2. takes the calibration frames and, disjoint from them, the held-out frames (policy image size);
3. dispatches to the registered method, which writes into a temp folder next to `out`;
4. compares the source and the reloaded quantized policy on the held-out frames (tokens, actions,
   logits), and with `episodes` in closed loop in the simulator;
5. writes quantize_config.json and quantize_report.{json,md} into the temp folder (an artifact's
   manifest lists them), and renames it to `out` only then: a failure at any step leaves no `out`
   (nor temp folder) behind, and an existing `out` untouched.
"""

from __future__ import annotations

import json
import time
from itertools import islice
from pathlib import Path
from typing import Any, Iterable

from rt2edge.artifact import MANIFEST_FILE
from rt2edge.errors import ArtifactError, ConfigError
from rt2edge.models.checkpoint import METADATA_FILE, atomic_directory, read_metadata
from quantize.calibration import calibration_observations, check_image_size, holdout_observations
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
from quantize.report import REPORT_STEM, build_report, report_markdown


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


KIND_NAMES = {"checkpoint": "a checkpoint", "artifact": "a deploy artifact"}


def source_kind(source: Path) -> str:
    """"artifact" (manifest.json) or "checkpoint" (rt2edge.json); anything else is refused."""
    if not source.is_dir():
        raise ConfigError("source", f"{str(source)!r} does not exist or is not a folder")
    if (source / MANIFEST_FILE).is_file():
        return "artifact"
    if (source / METADATA_FILE).is_file():
        return "checkpoint"
    raise ArtifactError(f"{source}: neither an rt2edge checkpoint ({METADATA_FILE}) nor a deploy artifact "
                        f"({MANIFEST_FILE})")


def check_source(cfg: QuantizeConfig, method: QuantMethod) -> int:
    """Refuse a source the method cannot read or that is already quantized; return its image size."""
    kind = source_kind(cfg.source)
    if kind != method.source:
        hint = (f"export it first (rt2edge export {cfg.source} --out ARTIFACT)" if kind == "checkpoint"
                else "quantize the checkpoint it was exported from")
        raise ConfigError("method", f"{method.name!r} quantizes {KIND_NAMES[method.source]}, "
                                    f"{str(cfg.source)!r} is {KIND_NAMES[kind]}; {hint}, or pick a {kind} method")
    if kind == "artifact":
        from quantize.onnx_artifact import read_source

        return read_source(cfg.source).image_preprocessing().size  # verified hashes; fp32 only
    meta = read_metadata(cfg.source)  # ArtifactError if it is not an rt2edge checkpoint
    record = quantization_record(cfg.source)
    if record is not None:
        what = record.get("method") or record.get("quant_method") or "unknown method"
        raise ConfigError("source", f"{str(cfg.source)!r} is already quantized ({what}); "
                                    "quantize the unquantized checkpoint instead")
    return meta.image_preprocessing.size


def check_out(cfg: QuantizeConfig) -> None:
    if cfg.out.exists() and not cfg.overwrite:
        raise ConfigError("out", f"{str(cfg.out)!r} already exists (set overwrite to replace it)")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise ConfigError("out", f"{str(cfg.out)!r} exists and is not a folder")
    try:
        cfg.out.resolve().relative_to(cfg.source.resolve())
    except ValueError:
        return
    raise ConfigError("out", "must not be inside the source")


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


def closed_loop(cfg: QuantizeConfig, result: MethodOutput, image_size: int) -> dict[str, Any] | None:
    """Success rates of source and output in the simulator, `cfg.episodes` per split."""
    if not cfg.episodes:
        return None
    if result.reference_actor is None or result.candidate_actor is None:
        raise ConfigError("episodes", f"method {cfg.method!r} does not provide closed-loop policies")
    from rt2edge.evaluation import SPLITS, evaluate
    from rt2edge.evaluation.paired import paired_by_split
    from rt2edge.evaluation.results import EpisodeResult

    out: dict[str, Any] = {"episodes": cfg.episodes, "seed": cfg.seed, "splits": list(SPLITS)}
    runs: dict[str, list[EpisodeResult]] = {}
    for name, actor in (("source", result.reference_actor), ("quantized", result.candidate_actor)):
        res = evaluate(actor(), episodes=cfg.episodes, seed=cfg.seed, image_size=image_size, record=False)
        out[name] = {split: res.summary(split).success_rate for split in res.splits}
        out[f"{name}_safe_fallbacks"] = res.safe_fallbacks
        runs[name] = res.episodes
    # The same scenes for both: episodes only one of them solves, and whether that split is chance.
    out["paired"] = [c.to_dict() for c in paired_by_split(runs["source"], runs["quantized"], SPLITS)]
    return out


def run(cfg: QuantizeConfig, observations: Iterable[Any] | None = None,
        holdout: Iterable[Any] | None = None) -> Path:
    """Quantize `cfg.source` into `cfg.out` and return `cfg.out`. `observations` ((image,
    instruction) pairs or dataset frames) replace the calibration frames of `cfg.calibration`,
    `holdout` the held-out frames the fidelity report compares on."""
    if not isinstance(cfg, QuantizeConfig):
        raise ConfigError("config", f"expected a QuantizeConfig, got {type(cfg).__name__}")
    method = get_method(cfg.method)
    size = check_source(cfg, method)
    check_out(cfg)
    if observations is None:
        obs = calibration_observations(cfg.calibration, cfg.calibration_frames, size, cfg.seed)
    else:
        obs = list(islice(observations, cfg.calibration_frames))
    if not obs:
        raise ConfigError("calibration", "yielded no observations")
    obs = as_observations(obs)
    check_image_size(obs, size, "calibration")
    if holdout is None:
        held = holdout_observations(cfg.calibration, cfg.holdout_frames, size, cfg.holdout_seed, len(obs))
    else:
        held = list(islice(holdout, cfg.holdout_frames))
    held = as_observations(held)
    check_image_size(held, size, "holdout_frames")
    with atomic_directory(cfg.out) as tmp:
        start = time.perf_counter()
        result = method.handler(cfg, tmp, obs)
        seconds = time.perf_counter() - start
        fidelity, logits = evaluate(result, held, cfg.batch_size)
        loop = closed_loop(cfg, result, size)
        report = build_report(cfg, method, result, fidelity, logits, seconds, loop)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / f"{REPORT_STEM}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / f"{REPORT_STEM}.md").write_text(report_markdown(report, fidelity, logits), encoding="utf-8")
        if result.finalize is not None:
            result.finalize(tmp, [CONFIG_FILE, f"{REPORT_STEM}.json", f"{REPORT_STEM}.md"])
    return cfg.out
