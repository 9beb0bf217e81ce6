"""Typed errors shared by every stage and the robot runtime.

Every error names what was wrong (a config field, an action dim, an input) so that a user reading
a log on a robot knows what to fix without a debugger. They subclass the builtin that a caller
would naturally catch (ValueError for bad values, ImportError for missing packages).
"""

from __future__ import annotations


class Rt2EdgeError(Exception):
    """Base of every error rt2edge raises on purpose."""


class ConfigError(Rt2EdgeError, ValueError):
    """A stage config or CLI option has a bad value. `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


class ActionValueError(Rt2EdgeError, ValueError):
    """An action array (or action token) is malformed. `dim` is the offending dim, if one is."""

    def __init__(self, message: str, dim: int | None = None, dim_name: str | None = None):
        self.dim = dim
        self.dim_name = dim_name
        where = ""
        if dim is not None:
            where = f"action dim {dim}" + (f" ({dim_name})" if dim_name else "") + ": "
        super().__init__(where + message)


class InputError(Rt2EdgeError, ValueError):
    """An observation given to a policy (image, instruction, ...) is malformed. `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


class ArtifactError(Rt2EdgeError):
    """A checkpoint or deploy artifact is missing, corrupt, tampered with or of an unknown format."""


class DatasetError(ArtifactError, ValueError):
    """A dataset folder is missing, incomplete or malformed. `field` names the file or column."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


class ExportValidationError(Rt2EdgeError):
    """An exported graph disagrees with the torch model beyond the allowed tolerance."""


class TrainingDivergedError(Rt2EdgeError):
    """A training step's loss or gradient was not finite; nothing of that step was applied or saved."""


class MissingDependencyError(Rt2EdgeError, ImportError):
    """An optional package is not installed; the message says which extra provides it."""
