"""Results → tables, pruning-limit validations and plots; pandas, pyarrow and matplotlib only.

Why no torch or Ray here: analysing a store must work on a laptop that never ran a sweep, and fast;
`import analysis` pulls in pandas and pyarrow only (matplotlib when `analysis.plots` is imported).

    from analysis import load_table, tables
    trials = load_table("demo", "trials")                  # a sweep name under ./results
    acc = tables.accuracy_at_compression(trials)           # tidy: mean/std/rank per level and view
    print(tables.render("accuracy", {"accuracy": acc}))    # Markdown
"""

from analysis import tables
from analysis.load import load_table, load_tables, resolve

__all__ = ["load_table", "load_tables", "resolve", "tables"]
