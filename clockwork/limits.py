"""Limits on what a peer may ask for, defined once for every process that validates a request."""

MAX_COPIES = 10_000_000               # copies of a model in one LoadModel / LoadModelFromDisk (and
                                      # the default limit on instances registered: max_models)
MAX_SLO_NS = 3_600_000_000_000        # an hour: a longer SLO (or slo_factor x exec) is refused
SHARD_ID_BITS = 40                    # shard k of a sharded controller issues model ids from
                                      # [k << SHARD_ID_BITS, (k + 1) << SHARD_ID_BITS): an id names its shard
MAX_SHARDS = 1 << 20                  # so every id stays below 2**60 (a msgpack int64)
