"""The external-data files an ONNX graph reads (rt2edge.onnx_external), and the artifact check
that every one of them is listed with its sha256."""

from __future__ import annotations

import numpy as np
import pytest
from artifact_factory import make_artifact

from rt2edge.artifact import FileSpec, load_manifest, write_manifest
from rt2edge.errors import ArtifactError
from rt2edge.onnx_external import MalformedGraph, external_data_files

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _external(name: str, location: str) -> "onnx.TensorProto":
    """A tensor whose data ONNX Runtime would read from `location`."""
    tensor = numpy_helper.from_array(np.ones((4, 4), np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def test_locations_in_initializers_attributes_and_subgraphs(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    branch = helper.make_graph([helper.make_node("Constant", [], ["k"], value=_external("kb", "branch.bin"))],
                               "branch", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, [4, 4])])
    nodes = [helper.make_node("Constant", [], ["c"], value=_external("c", "const.bin")),
             helper.make_node("Add", ["x", "w"], ["y"]),
             helper.make_node("If", ["flag"], ["z"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [x, helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 4])],
                              [_external("w", "weights.bin"), numpy_helper.from_array(np.zeros(3, np.float32), "inline")])
    path = tmp_path / "g.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert external_data_files(path) == ["const.bin", "branch.bin", "weights.bin"]
    path.write_bytes(helper.make_model(helper.make_graph([], "e", [], [])).SerializeToString())
    assert external_data_files(path) == []
    for junk in (b"\x0f\x00", b"\x3a\xff\xff\xff\xff\x0f", b""):  # bad wire type, a length past the end, empty
        path.write_bytes(junk)
        with pytest.raises(MalformedGraph):
            external_data_files(path)


def test_an_artifact_graph_reading_unlisted_external_data_is_refused(tmp_path):
    root, _ = make_artifact(tmp_path / "art")
    model = onnx.load(str(root / "decoder.onnx"))
    onnx.save_model(model, str(root / "decoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="decoder.onnx.data", size_threshold=0)
    manifest = load_manifest(root, verify=False)
    write_manifest(root, manifest)  # hashes the new decoder.onnx, does not know its data file
    with pytest.raises(ArtifactError, match=r"graph 'decoder' \(decoder.onnx\) reads external data "
                                            r"'decoder.onnx.data' that the manifest does not list"):
        load_manifest(root)
    manifest.files["decoder.data"] = FileSpec("decoder.onnx.data")
    write_manifest(root, manifest)
    load_manifest(root)  # listed with its sha256: accepted
    (root / "decoder.onnx").write_bytes(b"\x0f not a graph")
    write_manifest(root, manifest)
    with pytest.raises(ArtifactError, match="not a readable ONNX graph"):
        load_manifest(root)
