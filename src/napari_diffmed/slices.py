"""Slice selections, one convention everywhere: ``START:STOP`` with STOP excluded (as Python's ``range``),
or a list ``I,J,K``. The widgets' "first slice" / "stop slice (excluded)", the command line's ``--slices``
and the Python functions' ``indices=range(start, stop)`` all mean the same slices."""

from __future__ import annotations

from typing import Sequence

def parse_slices(text: str | None) -> list[int] | None:
    """``"40:52"`` (52 excluded) or ``"3,5,7"`` -> slice indices; empty or None -> None (all slices)."""
    if text is None or not str(text).strip():
        return None
    try:
        if ":" in text:
            start, stop = text.split(":")
            indices = list(range(int(start), int(stop)))
        else:
            indices = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"slices must look like 40:52 (52 excluded) or 3,5,7, got {text!r}") from None
    if not indices:
        raise ValueError(f"slices {text!r} select no slice: STOP is excluded, so it must be greater than START")
    return indices


def describe(indices: Sequence[int]) -> str:
    """``[40, 41, ..., 51]`` -> ``"40:52"``; other lists as ``"3,5,7"`` (plain numbers, the input convention)."""
    values = sorted(int(i) for i in indices)
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}:{values[-1] + 1}"
    return ",".join(str(v) for v in values)


def check_slices(indices: Sequence[int] | None, depth: int, axis: int = 0) -> list[int] | None:
    """Sorted, distinct plain ints that all lie in ``0..depth-1``; None stays None (every slice).

    Raises one ValueError naming the slices outside the scan with plain numbers, e.g.
    ``slice indices must lie in 0:25 (the scan's 25 slices along axis 0); 40:52 do not``.
    """
    if indices is None:
        return None
    values = sorted({int(i) for i in indices})
    if not values:
        raise ValueError("no slices chosen; give at least one (or none at all for every slice)")
    outside = [v for v in values if not 0 <= v < depth]
    if outside:
        raise ValueError(f"slice indices must lie in 0:{depth} (the scan's {depth} slices along axis {axis}); "
                         f"{describe(outside)} {'does' if len(outside) == 1 else 'do'} not")
    return values
