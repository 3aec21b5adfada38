"""The lab: the narrated demo (:mod:`.demo`), the benchmarks (:mod:`.storage`,
:mod:`.model_bench`, :mod:`.throughput`, :mod:`.overlay_bench`, :mod:`.soak`,
``negentropy_costs.py``) and the fault and flood drivers (:mod:`.faults`), written against
the ``p2psync`` library, which never imports them. ``p2psync demo`` and ``p2psync bench``
run them; they need the ``lab`` extra (``pip install -e '.[lab]'``: rich, matplotlib).
"""

import sys
from importlib.util import find_spec

if find_spec("rich") is None or find_spec("matplotlib") is None:
    # ``python -m benchmarks.faults`` (or any of the lab's own entry points) without the
    # extra says so in one line, as ``p2psync demo`` and ``bench`` do, not in a traceback.
    print("benchmarks: the lab needs the lab extra: pip install -e '.[lab]'", file=sys.stderr)
    raise SystemExit(2)
