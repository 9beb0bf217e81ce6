"""`rt2edge export CHECKPOINT --out ARTIFACT ...`: a checkpoint -> a validated deploy artifact.

Also `rt2edge export-engine ARTIFACT` (TensorRT engines, on the target device) and
`rt2edge head-savings` (what the action-only head removes, per preset and for OpenVLA-7B).
The export stage (torch, onnx) is imported inside the commands: `rt2edge --help` stays light.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rt2edge.commands import bad_option, user_errors
from rt2edge.errors import ConfigError


def _summary(out: Path) -> dict:
    report = json.loads((out / "export_report.json").read_text(encoding="utf-8"))
    v = report["validation"]
    return {"artifact": str(out), "passed": v["passed"], "token_agreement": v["token_agreement"],
            "max_abs_diff": {k: v["max_abs_diff"][k] for k in ("image_embeds", "prefill_logits", "logits")},
            "graph_bytes": report["graph_bytes"],
            "head_bytes_removed_fp32": report["head_savings"]["this_model"]["bytes_removed"]["fp32"]}


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        checkpoint: Path = typer.Argument(..., help="VLAPolicy checkpoint folder (save_pretrained + rt2edge.json)."),
        out: Path = typer.Option(..., "--out", help="Artifact folder to write (appears whole or not at all)."),
        target: str = typer.Option("onnxruntime", "--target",
                                   help="onnxruntime (decoder with ONNX Runtime's fused ops), onnx (plain ONNX) "
                                        "or tensorrt (plain ONNX checked for TensorRT, with profiles)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (IO stays float32)."),
        opset: int = typer.Option(18, "--opset", help="ONNX opset (tensorrt: <= 25)."),
        validate_frames: int = typer.Option(4, "--validate-frames",
                                            help="Random observations torch and ONNX Runtime are compared on."),
        atol: float = typer.Option(None, "--atol", help="Max abs diff allowed (default per precision)."),
        rtol: float = typer.Option(None, "--rtol", help="Relative part of the allowed diff (default per precision)."),
        min_token_agreement: float = typer.Option(None, "--min-token-agreement",
                                                  help="Fraction of action tokens that must match torch."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random validation observations."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact."),
        build_engine: bool = typer.Option(False, "--build-engine",
                                          help="Also build TensorRT engines (tensorrt + GPU; --target tensorrt)."),
        max_batch: int = typer.Option(1, "--max-batch", help="TensorRT profile: largest batch."),
        max_prompt_tokens: int = typer.Option(None, "--max-prompt-tokens",
                                              help="TensorRT profile: longest prompt (default: from the prompt format)."),
    ) -> None:
        """Export a checkpoint to vision/embed/decoder ONNX graphs with the action-only head, validate
        them against torch, and write the deploy artifact (docs/artifact-format.md)."""
        from export import ExportConfig, run

        try:
            cfg = ExportConfig(checkpoint=checkpoint, out=out, target=target, precision=precision, opset=opset,
                               validate_frames=validate_frames, atol=atol, rtol=rtol,
                               min_token_agreement=min_token_agreement, seed=seed, overwrite=overwrite,
                               build_engine=build_engine, max_batch=max_batch,
                               max_prompt_tokens=max_prompt_tokens)
        except ConfigError as exc:
            raise bad_option(exc) from exc
        with user_errors():
            typer.echo(json.dumps(_summary(run(cfg)), indent=2))

    @app.command("export-engine")
    def export_engine(
        artifact: Path = typer.Argument(..., help="An artifact exported with --target tensorrt."),
        workspace_gb: float = typer.Option(4.0, "--workspace-gb", help="TensorRT builder workspace."),
    ) -> None:
        """Build TensorRT engines for an artifact, on this device (needs tensorrt and a CUDA GPU)."""
        from export import build_engine

        with user_errors():
            paths = build_engine(artifact, workspace_gb=workspace_gb)
        typer.echo(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))

    @app.command("head-savings")
    def head_savings_cmd(
        precision: str = typer.Option("fp16", "--precision", help="Bytes per weight: fp32, fp16, int8, int4."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        presets: bool = typer.Option(True, "--presets/--no-presets", help="Include the rt2edge presets."),
    ) -> None:
        """Bytes and FLOPs the action-only head removes vs the full-vocabulary head."""
        from export.head_savings import main

        main(["--precision", precision] + (["--json"] if as_json else []) + ([] if presets else ["--no-presets"]))
