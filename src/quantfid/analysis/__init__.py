"""Analysis: read a cohort from the tracking store (or external files) and test what fidelity numbers say.

Entry points: ``load_cohort`` (tracking store), ``import_external`` (CSV / llama.cpp logs / lm-eval samples),
``analyze`` (every statistic, as one JSON-ready summary), ``write_report`` (report.html + summary.json), and the
``quantfid-analyze`` CLI.
"""

from quantfid.analysis.analyze import AnalysisConfig, AnalysisResult, analyze
from quantfid.analysis.cohort import AnalysisInputError, Cohort
from quantfid.analysis.silent import SilentZoneConfig

__all__ = ["AnalysisConfig", "AnalysisInputError", "AnalysisResult", "Cohort", "SilentZoneConfig", "analyze"]
