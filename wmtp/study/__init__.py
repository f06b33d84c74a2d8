"""`wmtp study`: does weighting help? (docs/RESULTS.md; the design: docs/RECIPES.md "Study")

    spec.py        the study spec (configs/study.*.yaml): stages and gates, settings, arms, claims
    experiment.py  stages with gates, then arms × seeds as one grid (wmtp.orchestration.grid,
                 the part that knows Ray); resume; report-only
    measures.py    what one finished run measured: pass@1 per task, CE per solution, its weights
    paired.py      paired differences: hierarchical bootstrap, t interval, sign-flip test, MDD
    report.py      docs/RESULTS.md from the measures on disk (byte-reproducible)
    command.py     the `wmtp study` CLI

A tools floor above the recipes and orchestration: it drives whole runs, so nothing below imports it.
"""
