"""Plugins in stored results: which names a plugin registered (shown as such in the tables), and
whether one sweep mixes results of different versions of a plugin.

Why warn and not refuse: a cell id hashes a plugin's name and every resolved option, never its code
(an id that changed with every edit of a plugin would discard finished results on a comment fix);
each trials row records the plugin's module and version instead (`<role>_plugin`,
`<role>_plugin_version`, `sweeps.schema`). When one sweep holds rows of two versions, its tables
compare results of different code as one method: `prunetune status` and `tables` say so, naming
the versions and their cell counts.
"""

from __future__ import annotations

import pandas as pd

from sweeps.schema import PLUGIN_ROLES

MODULE_COLUMNS: tuple[str, ...] = tuple(f"{role}_plugin" for role in PLUGIN_ROLES)
VERSION_COLUMNS: tuple[str, ...] = tuple(f"{role}_plugin_version" for role in PLUGIN_ROLES)
COLUMNS: tuple[str, ...] = (*MODULE_COLUMNS, *VERSION_COLUMNS)
SUFFIX = " (plugin)"  # after a plugin's name in display tables; tidy frames keep the registry name


def modules(trials: pd.DataFrame, role: str) -> dict[str, str]:
    """Name → the plugin module that registered it, for the names of `role` a plugin registered."""
    column = f"{role}_plugin"
    if column not in trials.columns or role not in trials.columns:
        return {}
    known = trials[[role, column]].dropna().drop_duplicates(role)
    return dict(zip(known[role], known[column]))


def with_modules(tidy: pd.DataFrame, trials: pd.DataFrame, roles: tuple[str, ...] = PLUGIN_ROLES) -> pd.DataFrame:
    """`tidy` with a `<role>_plugin` column (the module, or None for a built-in) per role it has."""
    out = tidy.copy()
    for role in roles:
        if role in out.columns:
            out[f"{role}_plugin"] = out[role].map(modules(trials, role)).astype(object)
            out[f"{role}_plugin"] = out[f"{role}_plugin"].where(out[f"{role}_plugin"].notna(), None)
    return out


def label(name: object, module: object = None) -> str:
    """A registry name as a display table shows it: `gradw (plugin)` for a plugin's."""
    return f"{name}{SUFFIX}" if isinstance(module, str) and module else str(name)


def labelled(tidy: pd.DataFrame, role: str) -> pd.Series:
    """Column `role` of a tidy frame with its plugin names marked (frames without the module column
    are shown as they are)."""
    column = f"{role}_plugin"
    if column not in tidy.columns:
        return tidy[role].astype(str)
    return pd.Series([label(n, m) for n, m in zip(tidy[role], tidy[column])], index=tidy.index, dtype=object)


def mixed_versions(trials: pd.DataFrame) -> list[str]:
    """One warning line per sweep and plugin name whose finished rows (ok or diverged: what the tables
    use) come from more than one plugin module or version."""
    if not set(COLUMNS) <= set(trials.columns) or "status" not in trials.columns:
        return []
    rows = trials[trials["status"].isin(["ok", "diverged"])]
    sweeps = rows["sweep"] if "sweep" in rows.columns else pd.Series("", index=rows.index)
    lines = []
    for role in PLUGIN_ROLES:
        module, version = f"{role}_plugin", f"{role}_plugin_version"
        part = rows[rows[module].notna()].assign(_sweep=sweeps)
        for (sweep, name), g in part.groupby(["_sweep", role], sort=True, dropna=False):
            counts = g.groupby([module, version], dropna=False, sort=True).size()
            if len(counts) < 2:
                continue
            found = ", ".join(f"{m} {v}: {n} cell{'s' if n != 1 else ''}" for (m, v), n in counts.items())
            lines.append(f"sweep {sweep!r}: {role} {name!r} has results of {len(counts)} plugin versions ({found}); "
                         "its rows compare different code as one method: remove the older cells' files and "
                         "run again, or run the new version as a new sweep")
    return lines


__all__ = ["COLUMNS", "MODULE_COLUMNS", "SUFFIX", "VERSION_COLUMNS", "label", "labelled", "mixed_versions",
           "modules", "with_modules"]
