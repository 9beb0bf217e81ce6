"""What one decoder run per action would buy over the runtime's prefill + per-token decode runs.

`Policy.act` runs the decoder graph once on the prompt, then once per remaining action token,
feeding back the chosen bin's embedding and the KV cache through numpy. This script builds the
alternative from an artifact's own decoder.onnx: the graph unrolled `tokens_per_action` times in
one ONNX model (weights shared), each copy's argmax bin gathered from the bin-embedding table
into the next copy, so a greedy action is one `session.run`: no per-token session.run, no KV
round trip through numpy, no Python between tokens. It checks that both give the same bins on
every frame, then times them, alternating act by act:

  stepwise  the runtime's prefill + decode stages (timing["prefill"] + timing["decode"], wall;
            they include concatenating the prompt, a few us)
  whole     the unrolled graph's session.run on the same prompt embeddings (wall), built before

It also reports how much of an act the runtime spends outside ONNX Runtime (Python and numpy;
thread CPU time of `act` minus that of its graph runs).
Greedy decoding only (the unrolled graph cannot sample a token for loop escape), prefix cache off
in both (the unrolled graph here prefills the whole prompt).

    python scripts/whole_action_graph_speed.py ARTIFACT [--acts 600] [--threads 1]
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from act_loop_args import parse_act_loop_args
from bench.observations import simulator_observations
from rt2edge.artifact import cache_names
from rt2edge.runtime import Policy
from rt2edge.runtime.backends import BackendOptions, _session_options


def whole_action_graph(decoder: onnx.ModelProto, bin_embeds: np.ndarray, tokens: int, layers: int) -> onnx.ModelProto:
    """decoder.onnx unrolled `tokens` times: copy 0 is the prefill (the graph's own inputs), copy k
    takes copy k-1's present KV and the embedding of its bin, at past_length + prompt + k - 1."""
    graph = decoder.graph
    shared = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input]
    own = "whole_action/"  # the names this function adds; the decoder's own get a t{k}/ prefix
    nodes = [helper.make_node("Shape", ["inputs_embeds"], [own + "prompt_len"], start=1, end=2),
             helper.make_node("Add", ["past_length", own + "prompt_len"], [own + "past_1"])]
    extra = [numpy_helper.from_array(bin_embeds.astype(np.float32), own + "bin_embeds"),
             numpy_helper.from_array(np.array([1, 1, bin_embeds.shape[1]], np.int64), own + "embed_shape"),
             numpy_helper.from_array(np.ones(1, np.int64), own + "one")]
    for k in range(tokens):
        rename = {name: name for name in inputs}
        if k > 0:
            nodes += [helper.make_node("Gather", [own + "bin_embeds", f"t{k - 1}/action_bin"], [f"{own}embed_{k}"],
                                       axis=0),
                      helper.make_node("Reshape", [f"{own}embed_{k}", own + "embed_shape"], [f"{own}x_{k}"])]
            if k > 1:
                nodes.append(helper.make_node("Add", [f"{own}past_{k - 1}", own + "one"], [f"{own}past_{k}"]))
            rename.update({"inputs_embeds": f"{own}x_{k}", "past_length": f"{own}past_{k}"})
            rename.update(zip(cache_names(layers, "past"), (f"t{k - 1}/{n}" for n in cache_names(layers, "present"))))

        def name(tensor: str, k: int = k, rename: dict = rename) -> str:
            return tensor if tensor == "" or tensor in shared else rename.get(tensor, f"t{k}/{tensor}")
        for index, node in enumerate(graph.node):
            twin = copy.deepcopy(node)
            twin.name = f"t{k}/{node.name or index}"
            twin.input[:] = [name(t) for t in node.input]
            twin.output[:] = [name(t) for t in node.output]
            nodes.append(twin)
    nodes += [helper.make_node("Concat", [f"t{k}/action_logits" for k in range(tokens)], ["action_logits"], axis=0),
              helper.make_node("Concat", [f"t{k}/action_bin" for k in range(tokens)], ["action_bins"], axis=0)]
    outputs = [helper.make_tensor_value_info("action_logits", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("action_bins", TensorProto.INT64, None)]
    model = helper.make_model(helper.make_graph(nodes, "whole_action", list(graph.input), outputs,
                                                list(graph.initializer) + extra),
                              opset_imports=decoder.opset_import)
    model.ir_version = decoder.ir_version
    return model


def whole_action_session(policy: Policy, artifact: Path, threads: int):
    """An ONNX Runtime session of the artifact's decoder unrolled for one whole action, opened
    with the runtime's own session options."""
    import onnxruntime as ort

    manifest = policy.manifest
    if manifest.decoding != "autoregressive" or manifest.model.prefix_lm:
        raise SystemExit("needs an autoregressive, causal artifact (one decoder run per token)")
    decoder = onnx.load(str(artifact / manifest.graphs["decoder"].file))
    model = whole_action_graph(decoder, policy._bin_embeds[:, 0, 0, :], policy.action_tokenizer.tokens_per_action,
                               manifest.model.num_layers)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "whole_action.onnx"
        onnx.save(model, str(path))
        # the runtime's session options (private, on purpose: the comparison is with its sessions)
        session = ort.InferenceSession(str(path), _session_options(BackendOptions(num_threads=threads)),
                                       providers=["CPUExecutionProvider"])
    return session, len(model.graph.node)


def prompt_feeds(policy: Policy, image: np.ndarray, text: str) -> dict[str, np.ndarray]:
    """The whole prompt's embeddings (as `act` builds them) and the runtime's empty cache."""
    before, after = policy._text.embeds(text)
    pixels = policy.preprocessing(np.asarray(image)[None])
    image_embeds = policy._vision.run({"pixel_values": pixels}, ["image_embeds"])[0].astype(np.float32)
    return {"inputs_embeds": np.concatenate([before, image_embeds, after], axis=1),
            "past_length": np.zeros(1, np.int64), "prefix_length": np.zeros(1, np.int64), **policy._empty_past}


def main() -> None:
    args = parse_act_loop_args(__doc__, "timed acts per path")
    policy = Policy.load(args.artifact, providers=["cpu"], num_threads=args.threads, warmup=5, prefix_cache_size=0)
    session, nodes = whole_action_session(policy, args.artifact, args.threads)
    frames = simulator_observations(args.frames, policy.preprocessing.size, seed=0)

    # the runtime's time outside ONNX Runtime: every graph run goes through these runners
    in_ort = [0.0]
    for runner in (policy._vision, policy._embed, policy._decoder):
        def timed(feeds, outputs, _run=runner.run):
            start = time.thread_time()
            try:
                return _run(feeds, outputs)
            finally:
                in_ort[0] += time.thread_time() - start
        runner.run = timed

    stepwise, whole, acts, outside = [], [], [], []
    for i in range(args.acts):
        image, text = frames[i % len(frames)]
        in_ort[0] = 0.0
        start = time.thread_time()
        action = policy.act(image, text)
        acts.append(time.thread_time() - start)
        outside.append(acts[-1] - in_ort[0])
        if action.safe_fallback:
            raise SystemExit(f"safe action ({action.reason})")
        stepwise.append(action.timing["prefill"] + action.timing["decode"])
        feeds = prompt_feeds(policy, image, text)
        start = time.perf_counter()  # wall, as the runtime's stage timings
        bins = session.run(["action_bins"], feeds)[0].reshape(-1)
        whole.append(time.perf_counter() - start)
        if not np.array_equal(bins, action.bins):
            raise SystemExit(f"the unrolled graph chose {bins.tolist()}, the runtime {action.bins.tolist()}")
    p50 = lambda xs: float(np.median(xs) * 1e3)  # noqa: E731
    print(json.dumps({
        "artifact": str(args.artifact), "precision": policy.manifest.precision, "threads": args.threads,
        "acts": len(acts), "tokens_per_action": policy.action_tokenizer.tokens_per_action, "same_bins": True,
        "act_ms": p50(acts), "outside_onnxruntime_ms": p50(outside),
        "stepwise_prefill_decode_ms": p50(stepwise), "whole_action_run_ms": p50(whole),
        "saved_ms": p50(stepwise) - p50(whole), "decoder_nodes_per_action": nodes}, indent=2))


if __name__ == "__main__":
    main()
