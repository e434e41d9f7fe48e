"""AsyncFlow's API on distaff: change ``radical.asyncflow`` to ``distaff.asyncflow`` and an
AsyncFlow 0.5 program runs on distaff's engine (docs/asyncflow.md).

Submodules as in AsyncFlow: ``backends``, ``data``, ``errors``, ``workflow_manager``.
"""

from . import backends, data, errors, workflow_manager
from .backends import ConcurrentExecutionBackend, DaskExecutionBackend, LocalExecutionBackend, NoopExecutionBackend
from .data import InputFile, OutputFile
from .errors import DependencyFailureError
from .workflow_manager import ComponentFuture, WorkflowEngine

__version__ = "0.5.1+distaff"

__all__ = [
    "ComponentFuture",
    "ConcurrentExecutionBackend",
    "DaskExecutionBackend",
    "DependencyFailureError",
    "InputFile",
    "LocalExecutionBackend",
    "NoopExecutionBackend",
    "OutputFile",
    "WorkflowEngine",
    "backends",
    "data",
    "errors",
    "workflow_manager",
]
