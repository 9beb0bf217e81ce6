"""Robot-side runtime: load a deploy artifact and act (numpy + ONNX Runtime / TensorRT, no torch).

    from rt2edge.runtime import Policy
    policy = Policy.load("artifacts/my-policy", deadline_s=0.1)
    action = policy.act(image, "pick up the red block")   # -> Action
"""

from rt2edge.runtime.action import Action, ActionGuard
from rt2edge.runtime.backends import (Backend, BackendOptions, GraphRunner, register_backend,
                                      registered_backends)
from rt2edge.runtime.loop_escape import LoopEscape
from rt2edge.runtime.policy import Policy

__all__ = ["Action", "ActionGuard", "Backend", "BackendOptions", "GraphRunner", "LoopEscape", "Policy",
           "register_backend", "registered_backends"]
