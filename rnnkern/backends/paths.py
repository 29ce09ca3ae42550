"""What every backend planner shares: the path asked for, and the plans taken.

A backend with more than one way to run a layer-direction (the CPU's
split and general drivers, the GPU's persistent and step paths) has a
planner that picks one per call.  The user may force a path, in code (a
``with`` block) or for a whole batch job (an environment variable), and
``rnnkern.show_config()`` shows the plans taken.  ``PathSetting`` and
``PlanLog`` are those two pieces, written once.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["PathSetting", "PlanLog"]


class PathSetting:
    """The path asked for: forced by ``forced()``, else ``$environment``, else ``"auto"``.

    Parameters
    ----------
    paths : tuple of str
        The accepted values, ``"auto"`` among them.
    environment : str
        The environment variable that sets the path for a whole process.
    """

    def __init__(self, paths, environment):
        self.paths, self.environment = tuple(paths), environment
        self._forced = None            # (path, options)

    @contextlib.contextmanager
    def forced(self, path, **options):
        """Inside the block the path is ``path``; ``options`` go with it (``forced_options``)."""
        previous, self._forced = self._forced, (self.checked(path, "path"), options)
        try:
            yield
        finally:
            self._forced = previous

    def choice(self) -> str:
        """The path asked for now."""
        if self._forced is not None:
            return self._forced[0]
        value = os.environ.get(self.environment, "auto")
        return value if value in self.paths else self.checked(value, f"${self.environment}")

    def forced_options(self) -> dict:
        """The options given with the path forced now (empty if none is)."""
        return {} if self._forced is None else dict(self._forced[1])

    def checked(self, path, name) -> str:
        """``path`` if it is one of ``paths``; else ValueError naming the setting ``name``."""
        if path not in self.paths:
            raise ValueError(f"{name}: expected one of {self.paths}, got {path!r}")
        return path


class PlanLog:
    """The most recent plans, one per distinct direction (a key), newest last.

    ``describe(key) -> str`` names a direction in ``described()``.
    """

    def __init__(self, describe, limit=32):
        self._describe, self._limit = describe, limit
        self._plans = {}

    def record(self, key, plan):
        self._plans.pop(key, None)
        self._plans[key] = plan
        while len(self._plans) > self._limit:
            self._plans.pop(next(iter(self._plans)))

    def described(self) -> dict:
        """``{description of the direction: plan}``, newest last."""
        return {self._describe(key): plan for key, plan in self._plans.items()}
