"""gunicorn settings for the bare upload endpoint: the project's own, without its hooks.

The settings (workers, worker class, threads, timeouts, access log) are read from
the shipped gunicorn.conf.py, so both servers run alike; its hooks start docqueue's
scheduler, which the bare app has not.
"""

import runpy
import types
from pathlib import Path

_shipped = runpy.run_path(str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py"))
globals().update(
    {
        name: value
        for name, value in _shipped.items()
        if not name.startswith("_")
        and not callable(value)
        and not isinstance(value, types.ModuleType)
    }
)
