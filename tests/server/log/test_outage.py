"""A database outage holds acknowledgements back; nothing is acknowledged that is not stored."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from ltrr.v1 import decisions_pb2_grpc, feedback_pb2, feedback_pb2_grpc
from ltrr_client.client import decide_request, reward_event
from tests.conftest import PG_URL, server_settings
from tests.helpers import rows


@pytest.mark.postgres
def test_acks_wait_for_the_database_to_come_back(make_server: Any, pg_url: str) -> None:
    import psycopg

    server = make_server(server_settings(pg_url))
    ch = server.channel()
    event_id = decisions_pb2_grpc.DecisionServiceStub(ch).Decide(decide_request("demo")).event_id
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        acks: list[feedback_pb2.RewardAck] = []
        t = threading.Thread(target=lambda: acks.append(
            feedback_pb2_grpc.FeedbackServiceStub(ch).ReportReward(reward_event(event_id, 1.0), timeout=60)))
        t.start()
        time.sleep(2.0)
        assert acks == [], "acknowledged while the database was away"
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        t.join(30)
    assert [a.status for a in acks] == [feedback_pb2.REWARD_STATUS_ACCEPTED]
    assert [r["event_id"] for r in rows(pg_url, "rewards")] == [event_id]
    assert server.registry.get_sample_value("ltrr_db_write_errors_total") >= 1
