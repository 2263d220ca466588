"""The public Python API: edgebuild's operations (edgebuild.repo), for programs that
drive builds without the CLI."""

from edgebuild.repo import *  # noqa: F403
from edgebuild.repo import __all__  # noqa: F401
