"""Small helpers shared by the benchmark scripts (run as scripts: tools/bench is sys.path[0])."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clockwork.percentiles import percentile  # noqa: E402  (the project's one definition)

pct = percentile
