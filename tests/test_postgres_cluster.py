"""The test PostgreSQL cluster: it starts, takes a row, and fails to start with a clear error."""

from __future__ import annotations

import psycopg
import pytest

from tests.postgres_cluster import Cluster, ClusterError, start_cluster


def test_a_fresh_database_keeps_a_row(pg_database: str) -> None:
    with psycopg.connect(pg_database) as conn:
        conn.execute("CREATE TABLE visit (id BIGINT PRIMARY KEY, who TEXT NOT NULL)")
        conn.execute("INSERT INTO visit VALUES (%s, %s)", (1, "amina"))
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT id, who FROM visit").fetchall() == [(1, "amina")]
        row = conn.execute("SELECT inet_server_addr()::text, rolsuper FROM pg_roles "
                           "WHERE rolname = current_user").fetchone()
    assert row == ("127.0.0.1/32", True)


def test_a_database_from_a_template_and_dropped(postgres: Cluster) -> None:
    url = postgres.create_database("test_template_source")
    try:
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE t (a BIGINT)")
            conn.execute("INSERT INTO t VALUES (7)")
        copy = postgres.create_database("test_template_copy", template="test_template_source")
        with psycopg.connect(copy) as conn:
            assert conn.execute("SELECT a FROM t").fetchall() == [(7,)]
    finally:
        postgres.drop_database("test_template_copy")
        postgres.drop_database("test_template_source")
    with psycopg.connect(postgres.url) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert not names & {"test_template_source", "test_template_copy"}
    with pytest.raises(ValueError, match="plain lower-case identifier"):
        postgres.create_database('x"; DROP DATABASE postgres; --')


def test_a_server_that_cannot_start_says_why(postgres: Cluster) -> None:
    # Beside the session's cluster, so it is removed with it (pytest's temp dirs are 0700).
    with pytest.raises(ClusterError) as caught:
        start_cluster(postgres.root / "bad-start", shared_buffers="nonsense", timeout=20.0)
    message = str(caught.value)
    assert "did not start" in message
    assert "shared_buffers" in message  # the server's own complaint, from its log
