"""DESIGN.md dependency rule 1: the robot side never imports torch or transformers (nor onnx).

A subprocess installs a meta-path finder that makes those packages unimportable, then imports the
robot-side modules, loads a test artifact and acts, as a robot with `rt2edge[cpu]` would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from artifact_factory import make_artifact

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = ("torch", "transformers", "onnx")  # onnx: the robot has onnxruntime only

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: robot-side code must not import it")
            return None

    sys.meta_path.insert(0, Block())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
""")

ACT = BLOCKER + textwrap.dedent("""
    import json
    import numpy as np
    import rt2edge, rt2edge.actions, rt2edge.artifact, rt2edge.runtime, rt2edge.runtime.engine
    from rt2edge.runtime import Policy

    policy = Policy.load(sys.argv[1])
    action = policy.act(np.zeros((16, 16, 3), np.uint8), "pick up the red block")
    print(json.dumps({"safe_fallback": action.safe_fallback, "reason": action.reason,
                      "heavy": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
""")

CLI = BLOCKER + textwrap.dedent("""
    from rt2edge.cli import main
    sys.argv = ["rt2edge"] + sys.argv[1:]
    try:
        main()
    finally:
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], "heavy module imported"
""")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("lean") / "art")[0]


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)


def test_blocker_really_blocks():
    result = _python(BLOCKER + "import torch")
    assert result.returncode != 0 and "torch is blocked" in result.stderr


def test_runtime_loads_and_acts_without_torch(root):
    result = _python(ACT, str(root))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"safe_fallback": False, "reason": None, "heavy": []}


def test_act_command_without_torch(root, tmp_path):
    image = tmp_path / "frame.npy"
    np.save(image, np.zeros((16, 16, 3), np.uint8))
    result = _python(CLI, "act", str(root), "--image", str(image), "--instruction", "open the drawer",
                     "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["provider"] == "CPUExecutionProvider"
