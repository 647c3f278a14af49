"""Limits per client connection: model copies, and LS replies in pages (real processes)."""
import pytest

from clockwork.client.api import Client, RequestFailed
from clockwork.local import LocalCluster
from clockwork.status import Status

pytestmark = pytest.mark.timeout(120)
WAIT_S = 30.0


def test_per_client_limit_on_copies_and_paged_ls(tmp_path):
    """Issue 9: one client could fill the global model limit (LoadModel copies=100000), and
    the first LS then returned 8 MB. Each client connection has its own limit, and LS replies
    come in pages that the client library follows."""
    conf = tmp_path / "limits.toml"
    conf.write_text("[controller]\nmax_models = 100\nmax_models_per_client = 6\nls_page_size = 4\n")
    with LocalCluster(gpus=1, config_file=conf) as c:
        greedy = Client(c.address, log=lambda *_: None, timeout_s=WAIT_S, connect_timeout_s=30)
        other = Client(c.address, log=lambda *_: None, timeout_s=WAIT_S, connect_timeout_s=30)
        try:
            with pytest.raises(RequestFailed) as e:
                greedy.load_model("mlp", copies=7)
            assert e.value.status == Status.INVALID_REQUEST and "per client" in e.value.message
            with pytest.raises(RequestFailed):
                greedy.load_model("no-such-model", copies=6)             # failed: its copies are given back
            greedy.load_model("mlp", copies=6)
            with pytest.raises(RequestFailed, match="per client"):
                greedy.load_model("mlp", copies=1)
            first, copies, _ = other.load_model("mlp", copies=6)     # the others are not blocked
            assert other.infer(first + copies - 1).response.status == Status.SUCCESS

            pages = []
            other.ls_async(lambda r, d, lat: pages.append(r), WAIT_S)
            assert other.drain(WAIT_S) == 0
            models = other.ls()                                        # the library reads every page
            ids = [m.model_id for m in models]
            assert len(ids) == 12 and ids == sorted(ids)
            assert [m.model_id for m in pages[0].models] == ids[:4] and pages[0].next == ids[4]   # one page
        finally:
            greedy.close()
            other.close()
