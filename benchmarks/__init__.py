"""The lab: the narrated demo (:mod:`.demo`), the benchmarks (:mod:`.storage`,
:mod:`.model_bench`, :mod:`.throughput`, :mod:`.overlay_bench`, :mod:`.soak`,
``negentropy_costs.py``) and the fault and flood drivers (:mod:`.faults`), written against
the ``p2psync`` library, which never imports them. ``p2psync demo`` and ``p2psync bench``
run them; they need the ``lab`` extra (``pip install -e '.[lab]'``: rich, matplotlib).
"""

from importlib.util import find_spec

#: What the lab's own entry points (``python -m benchmarks.faults``) say, exiting 2,
#: without the extra, as ``p2psync demo`` and ``bench`` do.
LAB_MISSING = "benchmarks: the lab needs the lab extra: pip install -e '.[lab]'"


def lab_installed() -> bool:
    """Whether the ``lab`` extra is there (checked, not imported: importing this package
    must work without it, since tests import its rich-free modules)."""
    return find_spec("rich") is not None and find_spec("matplotlib") is not None
