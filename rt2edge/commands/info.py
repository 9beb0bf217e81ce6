"""`rt2edge info CHECKPOINT`: what a torch-side checkpoint holds, without loading its weights."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rt2edge.commands import user_errors


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def describe_checkpoint(directory: Path) -> dict:
    """Family, parameter counts, vocabulary and action config of a checkpoint (JSON-ready)."""
    from transformers import AutoConfig  # lazy: `rt2edge --help` stays torch-free

    from rt2edge.errors import ArtifactError
    from rt2edge.models.checkpoint import read_metadata
    from rt2edge.models.families import count_parameters_from_config

    meta = read_metadata(directory)
    # trust_remote_code stays False: `info` must be safe to run on a folder from anywhere.
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{directory}: unreadable config.json: {exc}") from exc
    tok = meta.action_tokenizer
    text_config = config.get_text_config()
    return {
        "checkpoint": str(directory),
        "family": meta.family,
        "model_type": config.model_type,
        "vision_tower": config.vision_config.model_type.removesuffix("_vision_model"),
        "decoder": text_config.model_type,
        "parameters": count_parameters_from_config(config),
        "tied_lm_head": bool(getattr(config, "tie_word_embeddings", False)),
        "vocab_size": int(text_config.vocab_size),
        "image_tokens": meta.prompt.num_image_tokens,
        "prompt_layout": "instruction, image" if meta.prompt.instruction_first else "image, instruction",
        "image_size": meta.image_preprocessing.size,
        "action": {
            "strategy": tok.strategy,
            "n_bins": tok.n_bins,
            "num_dims": tok.num_dims,
            "dim_names": list(tok.dim_names),
            "terminate": tok.terminate,
            "tokens_per_action": tok.tokens_per_action,
            "normalization": tok.normalization,
            "token_id_range": [int(tok.token_ids.min()), int(tok.token_ids.max())],
        },
        "datasets": sorted(meta.dataset_statistics),
        "default_unnorm_key": meta.default_unnorm_key,
    }


def _print(info: dict) -> None:
    p, a = info["parameters"], info["action"]
    head = "tied to the embeddings" if info["tied_lm_head"] else _millions(p["head"])
    lines = [
        f"checkpoint:  {info['checkpoint']}",
        f"family:      {info['family']} ({info['vision_tower']} vision, {info['decoder']} decoder)",
        f"parameters:  total {_millions(p['total'])} = vision {_millions(p['vision'])}"
        f" + projector {_millions(p['projector'])} + language {_millions(p['language'])} + head {head}",
        f"vocabulary:  {info['vocab_size']} ids (action ids {a['token_id_range'][0]}..{a['token_id_range'][1]})",
        f"image:       {info['image_size']}x{info['image_size']} -> {info['image_tokens']} tokens",
        f"prompt:      {info['prompt_layout']}, then the action",
        f"action:      strategy {a['strategy']}, {a['n_bins']} bins, {a['num_dims']} dims "
        f"({' '.join(a['dim_names'])}), terminate {'yes' if a['terminate'] else 'no'}, "
        f"normalization {a['normalization']}, {a['tokens_per_action']} tokens/action",
        f"datasets:    {', '.join(info['datasets']) or 'none'}"
        + (f" (default {info['default_unnorm_key']})" if info["default_unnorm_key"] else ""),
    ]
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    @app.command()
    def info(
        checkpoint: Path = typer.Argument(..., help="A checkpoint folder (HF files + rt2edge.json)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    ) -> None:
        """Show a checkpoint's family, parameter counts, vocabulary and action config."""
        with user_errors():
            described = describe_checkpoint(checkpoint)
        if as_json:
            typer.echo(json.dumps(described, indent=2))
        else:
            _print(described)
