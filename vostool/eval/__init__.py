"""Evaluation of VOS predictions: DAVIS 2017 semi-supervised J&F, matching the official evaluator.

See :mod:`vostool.eval.davis` for the rules (and where they deliberately differ from the
official tool), :mod:`vostool.eval.metrics` for the formulas.
"""

from vostool.eval.davis import evaluate_davis
from vostool.eval.report import METRIC_KEYS, EvalReport, ObjectResult, report_table

__all__ = ["METRIC_KEYS", "EvalReport", "ObjectResult", "evaluate_davis", "report_table"]
