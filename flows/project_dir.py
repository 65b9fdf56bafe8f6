"""Pull step of deployments/prefect.yaml: start each flow run in this
project's folder on the worker's own host, wherever that host keeps its clone.

Prefect's `set_working_directory: {directory: "{{ $PROJECT_DIR }}"}` does not
do this: `prefect deploy` fills the placeholder in from the deploying shell's
environment whenever PROJECT_DIR is set there, so every worker would get that
machine's path (seen with Prefect 3.9).
"""

from __future__ import annotations

import os
from pathlib import Path


def enter_project_dir(variable: str = "PROJECT_DIR") -> dict[str, str]:
    """chdir to $PROJECT_DIR as the worker sees it, else to the clone this
    package is installed from (`pip install -e .`)."""
    directory = os.environ.get(variable) or str(Path(__file__).resolve().parents[1])
    if not (Path(directory) / "flows" / "full_run.py").is_file():
        raise FileNotFoundError(
            f"{directory} is not a clone of this project (no flows/full_run.py); set {variable} "
            "in the worker's environment to the clone's path, or `pip install -e .` from the clone"
        )
    os.chdir(directory)
    return {"directory": directory}
