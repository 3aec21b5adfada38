"""The lab: the narrated demo (:mod:`.demo`), the benchmarks (:mod:`.storage`,
:mod:`.model_bench`, :mod:`.throughput`, :mod:`.overlay_bench`, :mod:`.soak`,
``negentropy_costs.py``) and the fault and flood drivers (:mod:`.faults`), written against
the ``p2psync`` library, which never imports them. ``p2psync demo`` and ``p2psync bench``
run them; they need the ``lab`` extra (``pip install -e '.[lab]'``: rich, matplotlib).
"""
