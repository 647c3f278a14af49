"""Limits on what a peer may ask for, defined once for every process that validates a request."""

MAX_COPIES = 10_000_000               # copies of a model in one LoadModel / LoadModelFromDisk (and
                                      # the default limit on instances registered: max_models)
MAX_SLO_NS = 3_600_000_000_000        # an hour: a longer SLO (or slo_factor x exec) is refused
