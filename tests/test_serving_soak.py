"""A short soak of the stand-in server (benchmarks/serving_soak.py, docs/reliability.md "Soak").

The server runs as its own process on a loopback port with the project's
export (the `pushed` fixture of test_serving.py: one pipeline run); 8 clients,
each with its own gRPC channel, send valid and malformed requests for 15 s.
"""

import pytest

from benchmarks import serving_soak
from test_serving import MODEL, pushed  # noqa: F401  (the pipeline-run fixture, reused)

pytestmark = pytest.mark.e2e


def test_a_short_soak_answers_everything_right_and_the_server_survives(pushed,  # noqa: F811
                                                                        tmp_path):
    base, _, examples = pushed
    result = serving_soak.soak(str(base), MODEL, examples, seconds=15, clients=8,
                               bad_share=0.3, warmup=3,
                               log_path=str(tmp_path / "server.log"))
    kinds = result["kinds"]
    unexpected = {kind: k["examples"] for kind, k in kinds.items() if k["unexpected"]}
    assert not unexpected and not result["prewarm_unexpected"], unexpected
    assert result["server_alive"] and result["final_request"] == "OK"
    for kind, (_, _, code) in serving_soak.MALFORMED.items():
        assert kinds[kind]["count"] >= 1, f"{kind} was never sent"
        assert kinds[kind]["codes"] == {code.name: kinds[kind]["count"]}, (kind, kinds[kind])
    for kind in serving_soak.VALID:
        assert kinds[kind]["count"] >= 1 and set(kinds[kind]["codes"]) == {"OK"}, kind
    assert result["server_stopped_cleanly"]
