"""`make bench`: every target of issue 14 as ratios measured in one run.

Run from the project root: ``.venv/bin/python -m bench.perf --help``. Keep this
package's ``__init__`` empty of imports: docqueue workers import ``bench.perf.noop``
as their processor, and every import here would count in their start-up time.
"""
