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
    EvalPlan,
    EvalSetError,
    EvalStore,
    EvalTurnRecord,
    build_eval_graph,
    check_eval_set,
    create_eval_conversations,
    load_eval_personas,
    plan_eval_conversations,
    run_evaluation,
)

__all__ = [
    "BootstrapCIs",
    "Comparison",
    "EvalConfig",
    "EvalSetError",
    "EvalStore",
    "EvalTurnRecord",
    "Interval",
    "Metrics",
    "bootstrap",
    "build_eval_graph",
    "check_eval_set",
    "compare",
    "compute_metrics",
    "EvalPlan",
    "create_eval_conversations",
    "plan_eval_conversations",
    "fit_line",
    "load_eval_personas",
    "normalize",
    "run_evaluation",
    "run_results",
    "write_report",
]
