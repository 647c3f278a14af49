"""The wire schema: every message any two clockwork processes exchange.

A message is one ZeroMQ multipart message: [identity (ROUTER side only)], header, *data.
The header frame is one protocol-version byte followed by a msgpack array (msgspec, array_like
structs with an integer tag, so encoding costs about a microsecond and no field names travel).
Data frames are raw tensor bytes sent with copy=False: inputs for Infer (one frame per request,
so the controller never concatenates them) and the output of an Infer.

A header starting with FATAL_PREFIX is plain UTF-8 text: a version-independent way for a peer
to say "I cannot talk to you" (e.g. a protocol mismatch) that any version can print.

Controller epoch: a controller picks a random non-zero 63-bit number when it starts and puts it
in every reply to a client. Model ids are only meaningful within one epoch (a restarted
controller counts them from 0 again), so an InferRequest names the epoch its model id came from;
the controller answers one from another epoch STALE_EPOCH instead of serving whatever model has
that id now. Epoch 0 in a request means "not checked" (clients older than the field). Appended
fields with defaults keep the schema readable by older peers.

Times are integer nanoseconds. Actions carry their [earliest, latest] window in the *receiving
worker's* clock (the controller converts, see transport.clocksync); results carry worker times
which the controller converts back.
"""
from __future__ import annotations

import typing

import msgspec

PROTOCOL_VERSION = 1
VERSION_BYTE = bytes([PROTOCOL_VERSION])
FATAL_PREFIX = b"\xff"


class ProtocolError(ValueError):
    """A frame could not be decoded: wrong version, truncated, or not a known message."""


class Message(msgspec.Struct, array_like=True, tag_field="t"):
    """Base of all messages: the tag (an int, set per class) selects the type."""


# ---------------------------------------------------------------- descriptions (nested values)

class ModelInfo(msgspec.Struct, array_like=True):
    """What the controller and clients know of one model instance (one copy)."""
    model_id: int
    source: str                   # model directory it was loaded from
    input_size: int               # bytes of ONE input (batch 1)
    output_size: int              # bytes of ONE output
    weights_size: int             # bytes of weights
    num_pages: int                # weights-cache pages it occupies on a GPU
    batch_sizes: list[int]        # compiled (supported) batch sizes, ascending
    exec_ns: list[int]            # profiled exec time per entry of batch_sizes
    weights_load_ns: int          # profiled LoadWeights time
    # one item's tensors (batch dim excluded, numpy dtype names) for protocol front ends that
    # describe and check tensors (clockwork.frontend); empty when the worker did not say
    input_shape: list[int] = []
    input_dtype: str = ""
    output_shape: list[int] = []
    output_dtype: str = ""


class GpuState(msgspec.Struct, array_like=True):
    gpu_id: int
    total_pages: int
    free_pages: int
    io_pool_size: int
    workspace_pool_size: int
    loaded_models: list[int]      # model ids whose weights are in this GPU's cache
    name: str = "emulated"


class WorkerState(msgspec.Struct, array_like=True):
    page_size: int
    gpus: list[GpuState]
    models: list[ModelInfo]


class GpuReading(msgspec.Struct, array_like=True):
    """Device telemetry sampled by a worker (NVML on real GPUs, emulated values otherwise)."""
    gpu_id: int
    sm_clock_mhz: int
    mem_clock_mhz: int
    temperature_c: int
    memory_used: int
    memory_total: int
    utilization: float


# ---------------------------------------------------------------- client <-> controller

class InferRequest(Message, tag=1):
    """Data frames: `batch_size` inputs as one or more frames (or none: generate at controller)."""
    request_id: int
    model_id: int
    batch_size: int = 1
    slo_factor: float = 0.0       # > 0: SLO = slo_factor x batch-1 exec estimate
    slo_ns: int = 0               # > 0: explicit SLO; 0: controller default
    user_id: int = 0
    epoch: int = 0                # controller epoch model_id belongs to (0: unchecked)
    sent_ns: int = 0              # client's monotonic clock at send (0: unknown), see QueueWait
    dtype: str = ""               # the inputs' numpy dtype ("": not checked), see ModelInfo
    item_shape: list[int] | None = None   # one input's shape (None: not checked)


class InferResponse(Message, tag=2):
    """Data frame on success: the output (batch_size x output_size bytes)."""
    request_id: int
    status: int
    message: str = ""
    model_id: int = -1
    batch_size: int = 0
    latency_ns: int = 0           # controller arrival -> response, controller clock
    exec_ns: int = 0              # measured exec time of the batch that served it
    is_coldstart: bool = False
    epoch: int = 0                # the answering controller's epoch
    within_slo: bool = False      # answered by its deadline (arrival + SLO): a success that counts as goodput


class LoadModelRequest(Message, tag=3):
    request_id: int
    path: str                     # model directory, relative to the workers' model dir
    copies: int = 1


class LoadModelResponse(Message, tag=4):
    request_id: int
    status: int
    message: str = ""
    model_id: int = -1            # first id; copies get consecutive ids
    copies: int = 0
    input_size: int = 0
    output_size: int = 0
    epoch: int = 0                # the ids above are valid in this controller epoch only


class LsRequest(Message, tag=5):
    request_id: int
    first: int = 0                # list models with ids >= first (one page; see LsResponse.next)


class LsResponse(Message, tag=6):
    request_id: int
    status: int
    message: str = ""
    models: list[ModelInfo] = []
    epoch: int = 0
    next: int = -1                # first id of the next page (-1: this was the last)


class ErrorResponse(Message, tag=7):
    """Sent when a request could not even be decoded (request_id -1 if unknown)."""
    request_id: int
    status: int
    message: str
    epoch: int = 0


class InferRequestBatch(Message, tag=8):
    """Several InferRequests in one message: the client library sends the requests made
    between two polls together, so a request costs a fraction of a ZeroMQ message each way.
    Data frames: request i's input frames, in request order; `frames[i]` says how many are
    request i's (empty list: no request carries inputs)."""
    requests: list[InferRequest]
    frames: list[int] = []


class InferResponseBatch(Message, tag=9):
    """Several InferResponses to one client in one message: the controller's answers to that
    client from one pass of its loop. Sent only to clients that sent an InferRequestBatch.
    Data frames: response i's output frames, in order; `frames[i]` says how many (0 or 1)."""
    responses: list[InferResponse]
    frames: list[int] = []


# ---------------------------------------------------------------- controller -> worker actions

class LoadModelFromDisk(Message, tag=20):
    action_id: int
    earliest: int
    latest: int
    model_id: int                 # first id; copies take consecutive ids
    path: str
    copies: int = 1
    max_batch_size: int = 16
    max_exec_ns: int = 250_000_000
    # True: answer with one ModelInfo for all copies (LoadModelFromDiskResult.copies), so a
    # million copies cost one entry on the wire; older workers ignore it and list every copy
    compact: bool = False


class LoadWeights(Message, tag=21):
    action_id: int
    earliest: int
    latest: int
    model_id: int
    gpu_id: int
    expected_ns: int = 0


class EvictWeights(Message, tag=22):
    action_id: int
    earliest: int
    latest: int
    model_id: int
    gpu_id: int


class Infer(Message, tag=23):
    """Data frames: the inputs, concatenated in order (any number of frames adding up to
    batch_size x input_size bytes), or none, in which case the worker generates them."""
    action_id: int
    earliest: int
    latest: int
    model_id: int
    gpu_id: int
    batch_size: int
    expected_ns: int = 0


class ClearCache(Message, tag=24):
    action_id: int
    earliest: int = 0
    latest: int = 0


class GetWorkerState(Message, tag=25):
    action_id: int


class Reset(Message, tag=26):
    """Sent by a controller when it connects: drop all models and queued actions."""
    action_id: int


class ActionBatch(Message, tag=27):
    """Several actions to one worker in one message: what one pass of the controller's loop
    sent to that worker, in send order. Each entry is one encoded action, decoded on its own
    (`unbatch`), so an entry the worker cannot read is answered BAD_MESSAGE and the others still
    run. Data frames: action i's frames, in order; `frames[i]` says how many (empty list: no
    action carries data). Never nested."""
    actions: list[msgspec.Raw]
    frames: list[int] = []


# ---------------------------------------------------------------- worker -> controller results

class ErrorResult(Message, tag=40):
    action_id: int
    action_tag: int               # tag of the failed action's type
    status: int
    message: str
    received: int = 0
    sent: int = 0


class LoadModelFromDiskResult(Message, tag=41):
    action_id: int
    received: int
    sent: int
    begin: int
    end: int
    models: list[ModelInfo]       # one per copy; or, with copies > 0, models[0] for all of them
    copies: int = 0               # > 0: models[0] describes copies model_id .. model_id + copies - 1


class LoadWeightsResult(Message, tag=42):
    action_id: int
    received: int
    sent: int
    begin: int
    end: int
    duration: int


class EvictWeightsResult(Message, tag=43):
    action_id: int
    received: int
    sent: int
    begin: int
    end: int


class InferResult(Message, tag=44):
    """Data frame: the outputs, batch_size x output_size bytes."""
    action_id: int
    received: int
    sent: int
    copy_input_begin: int
    copy_input_end: int
    exec_begin: int
    exec_end: int
    exec_duration: int            # device-measured (CUDA events) or emulated
    copy_output_begin: int
    copy_output_end: int
    gpu_clock_before: int         # MHz
    gpu_clock: int                # MHz


class ClearCacheResult(Message, tag=45):
    action_id: int
    received: int
    sent: int


class WorkerStateResult(Message, tag=46):
    action_id: int
    received: int
    sent: int
    state: WorkerState


class ResultBatch(Message, tag=48):
    """Several results to the controller in one message: those a worker's loop made ready in
    one turn, in the order they were made. Entries and frames as in ActionBatch."""
    results: list[msgspec.Raw]
    frames: list[int] = []


class Heartbeat(Message, tag=47):
    """Worker -> controller every heartbeat interval, also when idle."""
    sent: int
    pending: int
    readings: list[GpuReading] = []


ACTIONS = (LoadModelFromDisk, LoadWeights, EvictWeights, Infer, ClearCache, GetWorkerState, Reset)
RESULTS = (ErrorResult, LoadModelFromDiskResult, LoadWeightsResult, EvictWeightsResult,
           InferResult, ClearCacheResult, WorkerStateResult, Heartbeat)
BATCHES = (ActionBatch, ResultBatch)
CLIENT_REQUESTS = (InferRequest, LoadModelRequest, LsRequest, InferRequestBatch)
CLIENT_RESPONSES = (InferResponse, LoadModelResponse, LsResponse, ErrorResponse, InferResponseBatch)

_encoder = msgspec.msgpack.Encoder()


def _union(types):
    return typing.Union[tuple(types)]


# One decoder per direction: a peer can only send what its role may send.
ACTION_DECODER = msgspec.msgpack.Decoder(_union(ACTIONS + (ActionBatch,)))
RESULT_DECODER = msgspec.msgpack.Decoder(_union(RESULTS + (ResultBatch,)))
# an entry of an ActionBatch / ResultBatch: one action / result, never another batch
_ENTRY_DECODERS = {ActionBatch: msgspec.msgpack.Decoder(_union(ACTIONS)),
                   ResultBatch: msgspec.msgpack.Decoder(_union(RESULTS))}
REQUEST_DECODER = msgspec.msgpack.Decoder(_union(CLIENT_REQUESTS))
RESPONSE_DECODER = msgspec.msgpack.Decoder(_union(CLIENT_RESPONSES))


def encode(msg: Message) -> bytes:
    """Header frame for `msg`: version byte + msgpack array."""
    return VERSION_BYTE + _encoder.encode(msg)


def decode(frame, decoder: msgspec.msgpack.Decoder) -> Message:
    """Decode a header frame (bytes, memoryview or zmq.Frame) with one of the decoders above.

    Raises ProtocolError with a message fit to send back to the peer.
    """
    buf = frame.buffer if hasattr(frame, "buffer") else frame
    if len(buf) == 0:
        raise ProtocolError("empty header frame")
    version = buf[0]
    if version != PROTOCOL_VERSION:
        if buf[:1] == FATAL_PREFIX:
            raise ProtocolError("peer error: " + bytes(buf[1:]).decode("utf-8", "replace"))
        raise ProtocolError(f"protocol version mismatch: peer speaks v{version}, "
                            f"this clockwork {__import__('clockwork').__version__} speaks v{PROTOCOL_VERSION}")
    try:
        return decoder.decode(buf[1:])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ProtocolError(f"malformed message: {e}") from None


def batch(cls, messages: list, data: list):
    """(`cls` ActionBatch or ResultBatch of `messages`, its data frames): data[i] is the list of
    messages[i]'s frames."""
    encode_one = _encoder.encode
    frames = [f for d in data for f in d]
    return cls([msgspec.Raw(encode_one(m)) for m in messages],
               [len(d) for d in data] if frames else []), frames


def split_frames(counts: list, n: int, data, what: str = "entries") -> tuple[list | None, str | None]:
    """The data frames of each of a batch's `n` entries, from its per-entry frame `counts`:
    ([frames of entry 0, ...], None), or (None, why) when the counts do not fit the frames
    carried (then no entry can be given its own). Every batch message (requests, answers,
    actions, results) is read through this, by each process that reads it."""
    if counts:
        if len(counts) != n or sum(counts) != len(data) or min(counts) < 0:
            return None, (f"batch of {n} {what} names {sum(counts)} data frames in {len(counts)} "
                          f"counts but carries {len(data)}")
        out = []
        at = 0
        for k in counts:
            out.append(data[at:at + k])
            at += k
        return out, None
    if data:
        return None, f"batch of {n} {what} carries data frames but no per-entry frame counts"
    return [()] * n, None


class BadEntry(typing.NamedTuple):
    """An entry of a batch that could not be read: the action id and type tag it seems to
    carry (-1 / 0 when not even those), and why. Its peer answers it like any bad message."""
    action_id: int
    tag: int
    error: str


def unbatch(msg, data: list) -> list:
    """[(entry, its data frames)] of an ActionBatch or ResultBatch, in order: each entry decoded
    on its own, so one that does not decode (a BadEntry) costs only itself. Frame counts that
    do not add up make every entry a BadEntry (no entry can be given the right frames).
    The worker, the simulated worker and the controller all read batches through this."""
    entries = msg.actions if type(msg) is ActionBatch else msg.results
    decode_one = _ENTRY_DECODERS[type(msg)].decode
    per_entry, frames_bad = split_frames(msg.frames, len(entries), data)
    out = []
    for i, raw in enumerate(entries):
        frames = per_entry[i] if per_entry is not None else ()
        try:
            entry = decode_one(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            entry = BadEntry(*_id_and_tag(raw), f"malformed batch entry {i}: {e}")
        if frames_bad is not None and type(entry) is not BadEntry:
            entry = BadEntry(getattr(entry, "action_id", -1), entry.__struct_config__.tag, frames_bad)
        out.append((entry, frames))
    return out


def _id_and_tag(raw) -> tuple[int, int]:
    """(action id, tag) of an entry that did not decode, if it is an array starting with two
    integers (every action and result but Heartbeat is); else (-1, 0)."""
    try:
        items = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        return -1, 0
    if isinstance(items, list) and len(items) >= 2 and type(items[0]) is int and type(items[1]) is int:
        return items[1], items[0]
    return -1, 0


def fatal(text: str) -> bytes:
    """A version-independent error header (see module docstring)."""
    return FATAL_PREFIX + text.encode("utf-8")
