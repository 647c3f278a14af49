"""Inputs keep their dtype and per-item shape on the wire: a request whose bytes are right but
whose dtype or item shape is not the model's is refused INVALID_REQUEST with a message saying
so (real processes: emulated worker, controller, client library)."""
import numpy as np
import pytest

from clockwork.client.api import Client, RequestFailed
from clockwork.local import LocalCluster
from clockwork.status import Status

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(gpus=1) as cluster:
        c = Client(cluster.address, log=lambda *_: None)
        c.load_model("resnet50")
        yield c
        c.close()


def _resnet50(client):
    return next(m for m in client.ls() if m.source.rstrip("/").endswith("resnet50"))


def test_model_info_carries_dtypes_and_shapes(client):
    m = _resnet50(client)
    assert (m.input_dtype, m.input_shape) == ("float32", [3, 224, 224])
    assert (m.output_dtype, m.output_shape) == ("float32", [1000])


def test_wrong_dtype_with_the_right_byte_count_is_refused(client):
    m = _resnet50(client)
    x = np.ones((2, 3, 224, 112), np.float64)           # 2 x input_size bytes, but float64
    assert x.nbytes == 2 * m.input_size
    with pytest.raises(RequestFailed) as e:
        client.infer(m.model_id, inputs=x, batch_size=2)
    assert e.value.status == Status.INVALID_REQUEST
    assert "dtype float64" in e.value.message and "float32" in e.value.message


def test_wrong_item_shape_with_the_right_byte_count_is_refused(client):
    m = _resnet50(client)
    x = np.ones((2, 224, 224, 3), np.float32)           # NHWC instead of NCHW
    with pytest.raises(RequestFailed) as e:
        client.infer(m.model_id, inputs=x, batch_size=2)
    assert e.value.status == Status.INVALID_REQUEST
    assert "[224, 224, 3]" in e.value.message and "[3, 224, 224]" in e.value.message


def test_matching_and_raw_inputs_are_served(client):
    m = _resnet50(client)
    for x in (np.ones((2, 3, 224, 224), np.float32),      # dtype and shape checked, both right
              np.ones((2, 3, 224, 224), np.float32).tobytes()):   # raw bytes: not checked
        reply = client.infer(m.model_id, inputs=x, batch_size=2)
        assert reply.response.status == Status.SUCCESS
