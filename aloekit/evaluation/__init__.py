"""ALOE evaluation: the benchmark task, its metrics with confidence intervals, comparisons and reports."""

from aloekit.evaluation.metrics import (
    BootstrapCIs,
    Comparison,
    Interval,
    Metrics,
    bootstrap,
    compare,
    compute_metrics,
    fit_line,
    normalize,
)
from aloekit.evaluation.report import run_results, write_report
from aloekit.evaluation.task import (
    EvalConfig,
    EvalStore,
    EvalTurnRecord,
    build_eval_graph,
    create_eval_conversations,
    load_eval_personas,
    run_evaluation,
)

__all__ = [
    "BootstrapCIs",
    "Comparison",
    "EvalConfig",
    "EvalStore",
    "EvalTurnRecord",
    "Interval",
    "Metrics",
    "bootstrap",
    "build_eval_graph",
    "compare",
    "compute_metrics",
    "create_eval_conversations",
    "fit_line",
    "load_eval_personas",
    "normalize",
    "run_evaluation",
    "run_results",
    "write_report",
]
