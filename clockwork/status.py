"""Status codes seen by clients (the original's) and error codes raised by workers.

Worker codes are forwarded to the client unchanged when an Infer fails at the worker, so the two
ranges never overlap.
"""
from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0
    ERROR = 1
    TIMEOUT = 4
    INITIALIZING = 5
    INVALID_REQUEST = 6
    CONTROLLER_SKIPPED = 7
    COULD_NOT_START_IN_TIME = 8
    OVERLOADED = 9            # admission bound reached: rejected at once rather than queued
    WORKER_LOST = 10          # the worker holding the request died or stopped answering
    STALE_EPOCH = 11          # the model id is from another controller lifetime (it restarted)
    # worker codes (an action failed on the worker)
    ACTION_TOO_EARLY = 20
    ACTION_TOO_LATE = 21
    UNKNOWN_MODEL = 22
    INVALID_GPU = 23
    INVALID_BATCH_SIZE = 24
    INVALID_INPUT_SIZE = 25
    NOT_ENOUGH_PAGES = 26
    WEIGHTS_NOT_PRESENT = 27
    WEIGHTS_CHANGED = 28
    WEIGHTS_ALREADY_PRESENT = 29
    IO_POOL_EXHAUSTED = 30
    WORKSPACE_EXHAUSTED = 31
    MODEL_EXISTS = 32
    LOAD_FAILED = 33
    RUNTIME_ERROR = 34
    BAD_MESSAGE = 35
    NOT_CONTROLLER = 36       # the sender is not the worker's controller link (no Reset from it)


# A window failure names the stage that missed it: (action stage, too early/late) -> message.
STAGE_NAMES = ("load_model", "load_weights", "evict", "copy_input", "exec", "copy_output", "clear_cache")


def describe(code: int) -> str:
    try:
        return Status(code).name.lower().replace("_", " ")
    except ValueError:
        return f"status {code}"
