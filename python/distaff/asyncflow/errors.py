"""AsyncFlow's errors: ``DependencyFailureError``."""

from __future__ import annotations


class DependencyFailureError(Exception):
    """A component did not run because a component it depends on failed.

    Attributes:
        failed_dependencies: the names of the dependencies that failed (argument order).
        root_cause: the exception of the first failed dependency, also the ``__cause__``.
    """

    def __init__(self, message: str, failed_dependencies: list | None = None, root_cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.failed_dependencies = list(failed_dependencies or [])
        self.root_cause = root_cause
        if root_cause is not None:
            self.__cause__ = root_cause


__all__ = ["DependencyFailureError"]
