"""``phenovec bench``: this machine's rates on the user's model and data (or the synthetic plate).

Modules: ``measure`` (repeats, medians, peak RSS, machine description; shared with ``bench/*.py``), ``eval_data``
(synthetic well profiles), ``stages`` (decode, crop, model per provider and precision, the profiling pipeline,
evaluation), ``record`` (the JSON record, reading and comparing records), ``plot`` (the PNG), ``command``.
"""
