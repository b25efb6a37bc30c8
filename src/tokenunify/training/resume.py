"""A resumed run must continue the run it resumes: a changed config is refused, naming the keys.

Changing the steps moves the learning-rate curve and the stage boundaries,
changing the data or model mixes two experiments; none of that may happen
silently. Keys that cannot change the numbers may differ (`RESUMABLE`), and
keys that the stored config lacks (added by a later version) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenunify.errors import ConfigError

__all__ = ["RESUMABLE", "changed_keys", "check_same_config"]

#: Dotted keys that may differ on resume: where the run lives, the thread
#: count, the time limit of this invocation, and the `init*` keys (read only
#: when a run starts).
RESUMABLE = frozenset({"out_dir", "train.threads", "train.max_minutes", "init", "init_allow_mismatch",
                       "init_keep_fresh"})


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        flat: dict[str, Any] = {}
        for key, value in config.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: config}


def changed_keys(stored: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, stored value, current value) for every leaf that differs, excluding `RESUMABLE`."""
    old, new = _flatten(stored), _flatten(current)
    changes = []
    for key in sorted(new):
        if key in RESUMABLE or key not in old:
            continue
        if _normal(old[key]) != _normal(new[key]):
            changes.append((key, old[key], new[key]))
    changes += [(key, old[key], None) for key in sorted(set(old) - set(new)) if key not in RESUMABLE]
    return changes


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def check_same_config(path: Path, stored: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Raise ConfigError naming the changed keys if `current` differs from the checkpoint's config."""
    if stored is None:
        return
    changes = changed_keys(stored, current)
    if changes:
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes[:6])
        more = f" (and {len(changes) - 6} more)" if len(changes) > 6 else ""
        raise ConfigError(f"{path}: cannot resume, the config changed: {shown}{more}; "
                          "resume with the run's own config (its config.yaml) or start a new out_dir")
