"""Opening databases: paths, URLs, options, and passwords that never leak."""
from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import peewee
import pytest
from playhouse.pool import PooledMySQLDatabase, PooledPostgresqlDatabase

from sprint_runner import Store
from sprint_runner.connect import DriverMissing, describe, mask_url, open_database


def test_mask_url() -> None:
    assert mask_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("mysql://root@h/x") == "mysql://root@h/x"
    assert mask_url("/a/path:with@odd") == "/a/path:with@odd"


def test_sqlite_urls(tmp_path: Path) -> None:
    absolute = open_database(f"sqlite:///{tmp_path}/a.db")
    assert absolute.database == f"{tmp_path}/a.db"
    relative = open_database("sqlite:///rel/b.db")
    assert relative.database == "rel/b.db"
    assert isinstance(open_database(tmp_path / "c.db"), peewee.SqliteDatabase)


def test_server_urls_are_pooled_and_bounded() -> None:
    pytest.importorskip("psycopg2", reason="needs the [postgres] extra")
    pytest.importorskip("pymysql", reason="needs the [mysql] extra")
    pg = open_database("postgresql://bob:pw%40x@db.example:6543/sprint?connect_timeout=3",
                       pool_size=3)
    assert isinstance(pg, PooledPostgresqlDatabase)
    assert pg.database == "sprint" and pg._max_connections == 3
    assert pg.connect_params["password"] == "pw@x"
    assert pg.connect_params["port"] == 6543 and pg.connect_params["connect_timeout"] == 3
    my = open_database("mysql://root@127.0.0.1:3306/sprint")
    assert isinstance(my, PooledMySQLDatabase)


def test_describe_masks_passwords() -> None:
    pytest.importorskip("psycopg2", reason="needs the [postgres] extra")
    pg = open_database("postgres://bob:hunter2@db:5432/sprint")
    assert describe(pg) == "postgresql://bob:***@db:5432/sprint"
    assert "hunter2" not in repr(pg.connect_params.get("user"))


def test_describe_brackets_an_ipv6_host() -> None:
    pytest.importorskip("psycopg2", reason="needs the [postgres] extra")
    pg = open_database("postgresql://bob:hunter2@[::1]:5432/sprint")
    assert describe(pg) == "postgresql://bob:***@[::1]:5432/sprint" == mask_url(describe(pg))


@pytest.mark.parametrize(("target", "error", "fragment"), [
    ("", ValueError, "must not be empty"),
    (":memory:", ValueError, "in-memory"),
    ("redis://localhost/0", ValueError, "unsupported database URL scheme 'redis'"),
    ("postgresql://bob:hunter2@db:5432/", ValueError, "names no database"),
    ("postgresql://bob:hunter2@db:notaport/x", ValueError, "bad port"),
    ("sqlite:///", ValueError, "names no file"),
    (42, TypeError, "database must be"),
    (peewee.SqliteDatabase(None), ValueError, "not initialised"),
])
def test_bad_targets(target, error, fragment) -> None:
    with pytest.raises(error) as info:
        open_database(target)
    assert fragment in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"synchronous": "SOMETIMES"}, "synchronous"),
    ({"busy_timeout": -1}, "busy_timeout"),
    ({"busy_timeout": "30"}, "busy_timeout"),
    ({"pool_size": 0}, "pool_size"),
])
def test_bad_options(tmp_path: Path, kwargs, fragment) -> None:
    with pytest.raises((TypeError, ValueError), match=fragment):
        Store(tmp_path / "x.db", **kwargs)
    assert not (tmp_path / "x.db").exists()


def test_bad_clock(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="clock"):
        Store(tmp_path / "x.db", clock=5)  # type: ignore[arg-type]


def test_clock_returning_garbage_is_refused(tmp_path: Path) -> None:
    ticks = iter([1_700_000_000, 1.5])
    store = Store(tmp_path / "x.db", clock=lambda: next(ticks))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"clock\(\) must be an int"):
        store.create_batch(1)
    assert store.list_batches() == []


@pytest.mark.sqlite_only
def test_synchronous_full_is_a_choice(tmp_path: Path) -> None:
    store = Store(tmp_path / "full.db", synchronous="full", busy_timeout=2.5)
    assert store.database.execute_sql("PRAGMA synchronous").fetchone()[0] == 2
    assert store.database.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 2500
    store.close()


@pytest.mark.sqlite_only
def test_existing_peewee_database_is_accepted(tmp_path: Path) -> None:
    database = peewee.SqliteDatabase(str(tmp_path / "mine.db"))
    store = Store(database)
    assert store.database is database
    assert database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.get_batch(store.create_batch(1))["max_cycles"] == 1
    store.close()


def test_store_repr_and_location_mask_password(db_target: str, store: Store) -> None:
    assert store.location in repr(store)
    if "@" in db_target and ":" in db_target.split("@")[0].split("//")[-1]:
        assert "***" in store.location


def test_missing_driver_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg2", "psycopg") else real(name, *a))
    with pytest.raises(DriverMissing, match=r"pip install 'sprint-runner\[postgres\]'") as info:
        open_database("postgresql://bob:hunter2@db:5432/sprint")
    assert isinstance(info.value, ValueError)  # as it always was
    assert "hunter2" not in str(info.value)


def test_missing_driver_is_a_problem_not_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from sprint_runner.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg2", "psycopg") else real(name, *a))
    assert main(["--db", "postgresql://bob:hunter2@db:5432/sprint", "status"]) == 1
    err = capsys.readouterr().err
    assert "needs a database driver" in err and "hunter2" not in err


def test_server_error_messages_mask_password(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="sprint_runner")
    url = "postgresql://bob:hunter2@127.0.0.1:1/nowhere"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed")
    with pytest.raises(peewee.OperationalError) as info:
        Store(url)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in caplog.text


@pytest.mark.sqlite_only
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_opens_its_own_connection(store: Store) -> None:
    batch = store.create_batch(1)  # the parent's connection is open now
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            if store.database._state.conn is None:  # the inherited one was dropped
                store.create_event(batch, None, None, "e", "k", "c", "t", "s", "child")
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [e["message"] for e in store.get_events_by_batch(batch)] == ["child"]


# -- secrets in URLs (issue 10, item 10) ----------------------------------------------------

@pytest.mark.parametrize(("url", "masked"), [
    # Unparsable: everything between :// and the last @ is masked.
    ("postgresql://postgres:ab/S3cret@host/db", "postgresql://***@host/db"),
    ("postgresql://u:12/S3cret@host/db", "postgresql://***@host/db"),
    ("postgresql://u:ab?S3cret@host/db", "postgresql://***@host/db"),
    ("postgresql://u:12#S3cret@host/db", "postgresql://***@host/db"),
    ("postgresql://u:S3cret@[::1:5432/x", "postgresql://***@[::1:5432/x"),
    ("mysql://u:S3cret@h:port/x", "mysql://***@h:port/x"),
    # Parsable: today's user:***@host form, and password-like query values.
    ("postgresql://u:S3cret@h/x?password=S3cret&sslmode=require",
     "postgresql://u:***@h/x?password=***&sslmode=require"),
    ("mysql://u@h/x?passwd=S3cret", "mysql://u@h/x?passwd=***"),
    ("mysql://u@h/x?ssl_key_password=S3cret", "mysql://u@h/x?ssl_key_password=***"),
    ("postgresql://u:S3c@ret@h/x", "postgresql://u:***@h/x"),
    ("sqlite://u:S3cret@/", "sqlite://u:***@/"),
    ("postgresql://u:1@127.0.0.1:5432/x", "postgresql://u:***@127.0.0.1:5432/x"),
])
def test_mask_url_masks_every_form_of_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("url", [
    "postgresql://u:S3cret@h/x" + chr(0xD800),
    "postgresql://u:S3cret@h/x" + chr(0xDCFF),
    "postgresql://u:S3c\nret@h/x",
])
def test_mask_url_of_bad_text_masks_and_does_not_crash(url: str) -> None:
    masked = mask_url(url)
    assert "S3c" not in masked and "ret" not in masked
    masked.encode("utf-8")  # printable: no lone surrogate left in it
    assert "\n" not in masked



_SPECIALS = "/?#@:[]%& =+\\'\"\t"


def test_no_unencoded_password_leaks_from_a_url() -> None:
    # Every pair of URL-significant characters, written unencoded inside a password.
    pytest.importorskip("psycopg2", reason="needs the [postgres] extra")
    for first in _SPECIALS:
        for second in _SPECIALS:
            password = f"S3{first}cr{second}et"
            url = f"postgresql://u:{password}@db.example:5432/x"
            masked = mask_url(url)
            assert masked in ("postgresql://u:***@db.example:5432/x",
                              "postgresql://***@db.example:5432/x"), url
            try:
                database = open_database(url)
            except ValueError as exc:
                assert "S3" not in str(exc) and "cr" not in str(exc), url
                assert masked == "postgresql://***@db.example:5432/x", url
            else:  # parsed as written: the whole password reaches the driver
                assert database.connect_params["password"] == password, url
                assert database.connect_params["host"] == "db.example", url
                assert describe(database) == "postgresql://u:***@db.example:5432/x"

def test_mask_secrets_in_driver_messages_is_structural() -> None:
    from sprint_runner.connect import mask_secrets

    url = "postgresql://u:1@127.0.0.1:1/x"
    message = ('connection to server at "127.0.0.1", port 1 failed: '
               f"Connection refused (while opening {url}); dsn: user=u password=1 host=127.0.0.1")
    assert mask_secrets(message, url) == (
        'connection to server at "127.0.0.1", port 1 failed: Connection refused '
        "(while opening postgresql://u:***@127.0.0.1:1/x); "
        "dsn: user=u password=*** host=127.0.0.1")
    other = "mysql://root:S3cret@db/x"
    assert "S3cret" not in mask_secrets(f"see {other}", url)
    assert mask_secrets("password='a b' x", url) == "password=*** x"
    assert mask_secrets("{'user': 'u', 'password': b'S3cret'}", url) == (
        "{'user': 'u', 'password': ***}")
    assert mask_secrets("Access denied for user 'u'@'h' (using password: YES)", url) == (
        "Access denied for user 'u'@'h' (using password: YES)")
    assert mask_secrets("plain /a/path", "/a/path") == "plain /a/path"


_SECRET = "S3cret"


@pytest.mark.parametrize(("url", "fragment"), [
    ("postgresql://postgres:ab/S3cret@host/db", "'@' after the host"),
    ("postgresql://u:S3cret@[::1:5432/x", "bad host"),
    ("postgresql://u:S3cret@db:notaport/x", "bad port"),
    ("postgresql://u:S3cret@db:99999/x", "bad port"),
    ("postgresql://u:S3cret@h/x#frag", "fragment"),
    ("postgresql://u:S3cret@h/x" + chr(0xD800), "lone surrogate"),
    ("postgresql://u:S3cret@h/x\x00", "control character"),
    ("mysql://u:S3cret@h/x" + chr(0xDCFF), "lone surrogate"),
    ("sqlite://u:S3cret@/", "must not name a user or host"),
    ("sqlite://u:S3cret@/x.db", "must not name a user or host"),
    ("sqlite://localhost/x.db", "must not name a user or host"),
    ("postgresql://u:S3cret@h/x?password=S3cret", "'password'"),
    ("mysql://u:S3cret@h/x?passwd=S3cret", "'passwd'"),
])
def test_bad_urls_are_clean_errors_without_the_password(url: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        open_database(url)
    message = str(info.value)
    assert fragment in message
    assert _SECRET not in message
    message.encode("utf-8")  # printable as it is


# -- URL options: an allowlist per backend (issue 10, item 11) ----------------------------

@pytest.mark.parametrize(("url", "names"), [
    ("mysql://u:S3cret@h/x?init_command=DROP%20TABLE%20events", ["init_command"]),
    ("mysql://u:S3cret@h/x?local_infile=1", ["local_infile"]),
    ("mysql://u:S3cret@h/x?client_flag=65536", ["client_flag"]),
    ("mysql://u:S3cret@h/x?read_default_file=/etc/passwd", ["read_default_file"]),
    ("mysql://u:S3cret@h/x?bogus=1&sql_mode=x", ["bogus", "sql_mode"]),
    ("postgresql://u:S3cret@h/x?options=-c%20search_path%3Dx", ["options"]),
    ("postgresql://u:S3cret@h/x?passfile=/etc/shadow", ["passfile"]),
    ("postgresql://u:S3cret@h/x?sslmode=require&sslmode=disable", ["sslmode"]),
    ("mysql://u:S3cret@h/x?connect_timeout=1&connect_timeout=2", ["connect_timeout"]),
    ("postgresql://u:S3cret@h/x?connect_timeout=soon", ["connect_timeout"]),
    ("postgresql://u:S3cret@h/x?connect_timeout=" + "9" * 400, ["connect_timeout"]),
    ("postgresql://u:S3cret@h/x?sslmode=sometimes", ["sslmode"]),
    ("postgresql://u:S3cret@h/x?sslrootcert=/no/such/ca.pem", ["sslrootcert"]),
    ("postgresql://u:S3cret@h/x?application_name=", ["application_name"]),
    ("mysql://u:S3cret@h/x?read_timeout=0", ["read_timeout"]),
    ("mysql://u:S3cret@h/x?write_timeout=nan", ["write_timeout"]),
    ("mysql://u:S3cret@h/x?connect_timeout=0", ["connect_timeout"]),
    ("mysql://u:S3cret@h/x?ssl_verify_cert=maybe", ["ssl_verify_cert"]),
    ("mysql://u:S3cret@h/x?ssl_ca=/no/such/ca.pem", ["ssl_ca"]),
    ("mysql://u:S3cret@h/x?sslmode=require", ["sslmode"]),  # PostgreSQL's, not MySQL's
    ("postgresql://u:S3cret@h/x?ssl_ca=/etc/ssl", ["ssl_ca"]),  # MySQL's, not PostgreSQL's
])
def test_url_options_outside_the_allowlist_are_refused(url: str, names: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        open_database(url)
    message = str(info.value)
    for name in names:
        assert repr(name) in message
    assert _SECRET not in message
    assert "9" * 400 not in message


@pytest.fixture
def ca_file() -> str:
    """A CA bundle in PEM form that the ssl module loads."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile):
        if path and os.path.isfile(path):
            return path
    pytest.skip("no CA bundle on this machine")


def test_postgresql_options_reach_the_driver(ca_file: str) -> None:
    psycopg2 = pytest.importorskip("psycopg2", reason="needs the [postgres] extra")
    pg = open_database(f"postgresql://u:pw@h/x?sslmode=verify-full&sslrootcert={ca_file}"
                       "&connect_timeout=5&application_name=sprint%20runner")
    assert pg.connect_params == {
        "user": "u", "password": "pw", "host": "h", "sslmode": "verify-full",
        "sslrootcert": ca_file, "connect_timeout": 5, "application_name": "sprint runner"}
    dsn = psycopg2.extensions.parse_dsn(
        psycopg2.extensions.make_dsn(dbname=pg.database, **pg.connect_params))
    assert dsn["sslmode"] == "verify-full" and dsn["connect_timeout"] == "5"
    assert dsn["application_name"] == "sprint runner" and dsn["sslrootcert"] == ca_file


def test_mysql_options_reach_pymysql(ca_file: str) -> None:
    pymysql = pytest.importorskip("pymysql", reason="needs the [mysql] extra")
    my = open_database(f"mysql://u:pw@h/x?ssl_ca={ca_file}&ssl_verify_identity=false"
                       "&ssl_verify_cert=true&connect_timeout=5&read_timeout=2.5"
                       "&write_timeout=7")
    params = my.connect_params
    assert (params["ssl_ca"], params["ssl_verify_identity"], params["ssl_verify_cert"]) == (
        ca_file, False, True)
    assert (params["connect_timeout"], params["read_timeout"], params["write_timeout"]) == (
        5, 2.5, 7)
    # What PyMySQL makes of them (the same call peewee makes, without connecting).
    conn = pymysql.connections.Connection(database=my.database, autocommit=True,
                                          defer_connect=True, **params)
    assert (conn.connect_timeout, conn._read_timeout, conn._write_timeout) == (5, 2.5, 7)
    assert conn._ssl_required and conn.ctx.verify_mode == ssl.CERT_REQUIRED
    assert conn.ctx.check_hostname is False
    assert conn.client_flag & 2  # FOUND_ROWS stays on


def test_mysql_password_outside_latin1_reaches_pymysql() -> None:
    pymysql = pytest.importorskip("pymysql", reason="needs the [mysql] extra")
    my = open_database("mysql://u:p%E2%82%ACss@h/x")
    pymysql.connections.Connection(database=my.database, defer_connect=True,
                                   **my.connect_params)  # no UnicodeEncodeError naming '€'
    assert my.connect_params["password"] == "p€ss".encode()


def test_url_options_reach_a_live_server(server_url: str) -> None:
    from conftest import BACKEND

    options = ("application_name=sprint-runner-test&connect_timeout=5"
               if BACKEND == "postgresql" else "connect_timeout=5&read_timeout=30")
    store = Store(f"{server_url}?{options}", migrate=False)
    try:
        conn = store.database.connection()
        if BACKEND == "postgresql":
            with conn.cursor() as cur:
                cur.execute("SHOW application_name")
                assert cur.fetchone()[0] == "sprint-runner-test"
        else:
            assert (conn.connect_timeout, conn._read_timeout) == (5, 30)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone()[0] == 1
    finally:
        store.close()


@pytest.mark.parametrize(("target", "fragment"), [
    ("sqlite:///q.db?mode=ro", "takes no options"),
    ("sqlite:///q.db?mode=memory&cache=shared", "takes no options"),
    ("sqlite:///q.db#x", "fragment"),
    ("file:mem1?mode=memory", "pass a plain path"),
    ("file:q.db", "pass a plain path"),
    ("file:///tmp/q.db", "pass a plain path"),
    ("sqlite:///file:q.db", "pass a plain path"),
    ("file::memory:", "pass a plain path"),
    (".", "is a directory, not a database file"),
    ("sqlite:///.", "is a directory, not a database file"),
    ("q" + chr(0xD800) + ".db", "lone surrogate"),
    ("q" + chr(0xDCFF) + ".db", "lone surrogate"),
    ("sqlite:///q" + chr(0xD800) + ".db", "lone surrogate"),
    ("q\x00.db", "NUL"),
])
def test_bad_sqlite_targets_create_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           target: str, fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        Store(target)
    assert fragment in str(info.value)
    str(info.value).encode("utf-8")
    assert os.listdir(tmp_path) == []


def test_file_uri_of_an_existing_database_leaves_it_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Store("real.db").close()
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with pytest.raises(ValueError, match="pass a plain path"):
        Store("file:real.db")
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"^{tmp_path} is a directory, not a database file"):
        open_database(tmp_path)


def test_repr_of_parsed_url_hides_the_password() -> None:
    from sprint_runner.connect import parse_url

    url = parse_url("postgresql://u:S3cret@h:5432/x?sslmode=require")
    assert (url.backend, url.user, url.password, url.host, url.port) == (
        "postgresql", "u", "S3cret", "h", 5432)
    assert url.query == (("sslmode", "require"),)
    assert url.masked == "postgresql://u:***@h:5432/x?sslmode=require"
    assert "S3cret" not in repr(url)
