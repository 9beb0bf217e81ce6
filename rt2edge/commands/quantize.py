"""`rt2edge quantize SOURCE --method M --out DIR`: int8 / int4 copies of a checkpoint or an artifact.

The method decides what SOURCE must be: the bitsandbytes methods (bnb-int8, bnb-nf4, bnb-fp4)
read a checkpoint, the ONNX methods (int8-dynamic, int8-qdq, int4-matmulnbits, int4-qdq) a deploy
artifact. The output (with quantize_report.json/.md inside) appears whole or not at all. The
quantize stage (torch, onnxruntime.quantization) is imported inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from rt2edge.commands import bad_option, user_errors
from rt2edge.errors import ConfigError

# QuantizeConfig fields whose option has another name here.
ALIASES = {"keep_groups": "keep", "calibration_frames": "frames"}


def _summary(out: Path) -> dict:
    report = json.loads((out / "quantize_report.json").read_text(encoding="utf-8"))
    fid = report["fidelity"]
    summary = {"out": str(out), "method": report["method"], "size_on_disk": report["size_on_disk"],
               "weight_bytes": {"before": report["weight_bytes"]["before"]["total"],
                                "after": report["weight_bytes"]["after"]["total"]},
               "holdout_frames": fid["n_observations"], "token_agreement": fid["token_agreement"],
               "action_agreement": fid["action_agreement"],
               "mean_abs_error": dict(zip(fid["dim_names"], fid["mean_abs_error"])),
               "latency": report["latency"], "targets_met": report["targets"]["met"],
               "report": str(out / "quantize_report.md")}
    if report.get("closed_loop"):
        loop = report["closed_loop"]
        summary["closed_loop"] = {"source": loop["source"], "quantized": loop["quantized"]}
    if report["targets"]["remedy"]:
        summary["remedy"] = report["targets"]["remedy"]
    if report.get("sensitivity"):
        summary["most_sensitive"] = [row["label"] for row in report["sensitivity"]["layers"][:5]]
    return summary


def register(app: typer.Typer) -> None:
    @app.command()
    def quantize(
        source: Path = typer.Argument(..., help="A checkpoint (bnb-* methods) or a deploy artifact (ONNX methods)."),
        method: str = typer.Option(..., "--method", help="bnb-int8, bnb-nf4, bnb-fp4, int8-dynamic, int8-qdq, "
                                                         "int4-matmulnbits, int4-qdq."),
        out: Path = typer.Option(..., "--out", help="Folder to write (appears whole or not at all)."),
        target: Optional[str] = typer.Option(None, "--target", help="onnx or tensorrt (default: the method's)."),
        block_size: Optional[int] = typer.Option(None, "--block-size", help="int4 block size along K."),
        algorithm: Optional[str] = typer.Option(None, "--algorithm", help="int4 rounding: rtn, hqq, gptq."),
        calibration: str = typer.Option("sim", "--calibration", help="'sim' or an episode dataset folder."),
        frames: int = typer.Option(32, "--frames", help="Calibration frames."),
        calibrate_method: str = typer.Option("minmax", "--calibrate-method",
                                             help="int8-qdq activation ranges: minmax, percentile, entropy."),
        holdout_frames: int = typer.Option(64, "--holdout-frames",
                                           help="Held-out frames the fidelity report compares on."),
        keep: Optional[list[str]] = typer.Option(None, "--keep", help="Module group kept in the source precision "
                                                 "(repeatable; default: vision, projector, head; 'none')."),
        quantize_head: bool = typer.Option(False, "--quantize-head",
                                           help="Also quantize the action head (kept by default)."),
        keep_sensitive: int = typer.Option(0, "--keep-sensitive",
                                           help="ONNX: keep the K layers the sensitivity pass ranks first in fp32."),
        sensitivity: bool = typer.Option(False, "--sensitivity", help="ONNX: rank every layer (one at a time)."),
        sensitivity_frames: int = typer.Option(16, "--sensitivity-frames", help="Frames per layer ranking."),
        episodes: int = typer.Option(0, "--episodes", help="Closed-loop episodes per split, source and output."),
        threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime threads per graph."),
        seed: int = typer.Option(0, "--seed", help="Seed of the calibration frames (held-out: seed + 1e6)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        device: str = typer.Option("cpu", "--device", help="bnb methods: cpu or cuda[:N]."),
    ) -> None:
        """Quantize a checkpoint (bitsandbytes) or a deploy artifact (ONNX Runtime / TensorRT Q/DQ), and
        report size, weight bytes and action fidelity on held-out frames next to the output."""
        from quantize import QuantizeConfig, run
        from quantize.config import DEFAULT_KEEP

        groups = [g for g in keep if g != "none"] if keep else list(DEFAULT_KEEP)
        if quantize_head:
            groups = [g for g in groups if g != "head"]
        try:
            cfg = QuantizeConfig(source=source, out=out, method=method, target=target, block_size=block_size,
                                 algorithm=algorithm, calibration=calibration, calibration_frames=frames,
                                 calibrate_method=calibrate_method, holdout_frames=holdout_frames,
                                 keep_groups=groups, keep_sensitive=keep_sensitive, sensitivity=sensitivity,
                                 sensitivity_frames=sensitivity_frames, episodes=episodes, threads=threads,
                                 seed=seed, overwrite=overwrite, device=device)
        except ConfigError as exc:
            raise bad_option(exc, ALIASES) from exc
        with user_errors():
            try:
                result = run(cfg)
            except ConfigError as exc:  # found while reading the source / frames: still the user's option
                raise bad_option(exc, ALIASES) from exc
        typer.echo(json.dumps(_summary(result), indent=2))
