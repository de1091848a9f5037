"""The small RESP2 client of the read commands (jerp_jobs.resp) answers as redis-py does, on a
real redis-server of the test's own: values (binary, UTF-8, nil, big), arrays (nested, big),
pipelines, scripts, errors, AUTH (password, user and password), SELECT, TLS."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jerp_jobs import resp
from tests.private_redis import PrivateRedis, free_port

PASSWORD = "S3cret-pw-1"
READER_PASSWORD = "r3ad/er@:x"  # characters a URL must percent-encode
QUOTED = "r3ad%2Fer%40%3Ax"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    private = PrivateRedis(tmp_path_factory.mktemp("resp-redis"), password=PASSWORD).start()
    yield private
    private.kill()


def _url(server: PrivateRedis, db: int = 0) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{server.port}/{db}"


@pytest.fixture
def clients(server: PrivateRedis) -> Iterator[tuple[resp.Client, redis.Redis]]:
    """(light client, redis-py client) of database 3 of the server, emptied before and after."""
    theirs = redis.Redis.from_url(_url(server, 3))
    theirs.flushdb()
    ours = resp.connect(_url(server, 3))
    assert isinstance(ours, resp.Client)
    yield ours, theirs
    ours.close()
    theirs.flushdb()
    theirs.close()


def test_url_forms_are_read_as_redis_py_reads_them() -> None:
    assert resp.parse_url("redis://127.0.0.1:6380/9") == {
        "host": "127.0.0.1", "port": 6380, "db": 9, "username": None, "password": None, "tls": False}
    assert resp.parse_url(f"rediss://reader:{QUOTED}@Broker.Example:6390/2") == {
        "host": "broker.example", "port": 6390, "db": 2, "username": "reader", "password": READER_PASSWORD,
        "tls": True}
    assert resp.parse_url("redis://") == {
        "host": "localhost", "port": 6379, "db": 0, "username": None, "password": None, "tls": False}
    assert resp.parse_url("redis://:pw@[::1]:7000") == {
        "host": "::1", "port": 7000, "db": 0, "username": None, "password": "pw", "tls": False}
    # left to redis-py: another scheme, query parameters, a malformed port
    for url in ("unix:///run/redis.sock?db=2", "redis://h:6379/0?ssl_cert_reqs=none", "redis://h:port/0",
                "http://h:6379/0"):
        assert resp.parse_url(url) is None, url


def test_forms_it_does_not_speak_get_redis_py(tmp_path: Path) -> None:
    """A URL form the light client does not speak gets redis-py's client, whose errors are then
    among those to catch; until redis-py is loaded, only the light client's are."""
    code = (
        "import sys\nfrom jerp_jobs import resp\n"
        "print(resp.errors() == (resp.RedisFailure,), 'redis' in sys.modules)\n"
        "client = resp.connect(sys.argv[1])\n"
        "import redis\n"
        "print(isinstance(client, redis.Redis), resp.errors() == (resp.RedisFailure, redis.RedisError))\n"
        "try:\n    client.ping()\nexcept resp.errors() as exc:\n    print(type(exc).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, f"unix://{tmp_path}/redis.sock"], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split("\n")[:3] == ["True False", "True True", "ConnectionError"], done.stderr


def test_values_as_redis_py_gives_them(clients: tuple[resp.Client, redis.Redis]) -> None:
    ours, theirs = clients
    binary = bytes(range(256)) * 3 + b"\r\n$-1\r\n*2\r\n"  # bytes that look like RESP framing
    big = os.urandom(300 * 1024)  # more than a socket buffer
    theirs.set("binary", binary)
    theirs.set("text", "Zoë — 日本語 ✓".encode())
    theirs.set("big", big)
    theirs.set("empty", b"")
    theirs.hset("hash", mapping={"a": b"\x00\xff", "é": "ü", "empty": ""})
    for key in ("binary", "text", "big", "empty", "missing"):
        assert ours.get(key) == theirs.get(key)
    assert ours.get("big") == big and ours.get("missing") is None
    assert ours.mget(["binary", "missing", "text"]) == theirs.mget(["binary", "missing", "text"])
    assert ours.hgetall("hash") == theirs.hgetall("hash") == {b"a": b"\x00\xff", "é".encode(): "ü".encode(),
                                                            b"empty": b""}
    assert ours.hgetall("missing") == theirs.hgetall("missing") == {}
    assert ours.hmget("hash", ["a", "nope"]) == theirs.hmget("hash", ["a", "nope"]) == [b"\x00\xff", None]
    assert ours.exists("hash", "missing") == theirs.exists("hash", "missing") == 1
    assert ours.ping() is True


def test_big_arrays_and_scans(clients: tuple[resp.Client, redis.Redis]) -> None:
    ours, theirs = clients
    pipe = theirs.pipeline(transaction=False)
    for start in range(0, 20_000, 1000):
        pipe.zadd("index", {f"member-{i:05d}-{'x' * 20}": i for i in range(start, start + 1000)})
        pipe.sadd("set", *(f"s{i}" for i in range(start, start + 1000)))
    pipe.execute()
    mine = ours.zrevrange("index", 0, -1)
    assert len(mine) == 20_000 and mine == theirs.zrevrange("index", 0, -1)
    assert ours.sismember("set", "s17") is True and ours.sismember("set", "nope") is False
    assert ours.sismember("set", "s17") == theirs.sismember("set", "s17")
    assert sorted(ours.scan_iter(match="s*", count=10)) == sorted(theirs.scan_iter(match="s*", count=10)) == [b"set"]
    cursor, keys = ours.scan(0, count=1000)
    assert isinstance(cursor, int) and set(keys) == {b"index", b"set"}
    assert ours.zrem("index", "member-00000-" + "x" * 20, "nope") == 1
    assert ours.sadd("set", "s1", "new") == 1


def test_pipelines_answer_in_order(clients: tuple[resp.Client, redis.Redis]) -> None:
    ours, theirs = clients
    theirs.hset("h1", mapping={"kind": "backup", "blob": os.urandom(70_000)})
    theirs.set("k", "v")
    replies = []
    for client in (ours, theirs):
        pipe = client.pipeline(transaction=False)
        pipe.hgetall("h1")
        pipe.hgetall("missing")
        pipe.get("k")
        pipe.get("missing")
        pipe.sismember("nothing", "x")
        pipe.hmget("h1", ["kind", "nope"])
        replies.append(pipe.execute())
    assert replies[0] == replies[1]
    assert ours.pipeline(transaction=False).execute() == []


def test_scripts_by_sha_then_whole_when_the_server_lacks_them(clients: tuple[resp.Client, redis.Redis]) -> None:
    ours, theirs = clients
    text = ("return {1, {2, {'a', false, {}}}, redis.call('get', KEYS[1]), tonumber(ARGV[1]) * 2,"
            " cjson.encode({n = ARGV[2]})}")
    theirs.set("key", "Zoë")
    theirs.script_flush()
    mine = ours.register_script(text)
    expected = theirs.register_script(text)(keys=["key"], args=[21, "é"])
    theirs.script_flush()
    assert mine(keys=["key"], args=[21, "é"]) == expected == [1, [2, [b"a", None, []]], "Zoë".encode(), 42,
                                                           '{"n":"é"}'.encode()]
    assert mine(keys=["key"], args=[21, "é"]) == expected  # now by its SHA1
    theirs.script_flush()
    pipe = ours.pipeline(transaction=False)
    mine(keys=["key"], args=[1, "a"], client=pipe)
    pipe.get("key")
    mine(keys=["key"], args=[2, "b"], client=pipe)
    assert pipe.execute() == [[1, [2, [b"a", None, []]], "Zoë".encode(), 2, b'{"n":"a"}'], "Zoë".encode(),
                              [1, [2, [b"a", None, []]], "Zoë".encode(), 4, b'{"n":"b"}']]


def test_error_replies_raise_with_the_server_message(clients: tuple[resp.Client, redis.Redis]) -> None:
    ours, theirs = clients
    theirs.hset("hash", "a", "1")
    with pytest.raises(redis.ResponseError) as theirs_error:
        theirs.get("hash")
    with pytest.raises(resp.ReplyError) as our_error:
        ours.get("hash")
    assert str(our_error.value) == str(theirs_error.value) and "WRONGTYPE" in str(our_error.value)
    assert ours.get("missing") is None  # the connection is still usable

    pipe = ours.pipeline(transaction=False)
    pipe.get("missing")
    pipe.get("hash")
    pipe.hgetall("hash")
    with pytest.raises(resp.ReplyError, match="WRONGTYPE"):
        pipe.execute()
    assert ours.hgetall("hash") == {b"a": b"1"}  # every reply was read: the next is in step
    pipe.get("hash")
    pipe.hgetall("hash")
    got = pipe.execute(raise_on_error=False)
    assert isinstance(got[0], resp.ReplyError) and got[1] == {b"a": b"1"}

    with pytest.raises(resp.ReplyError, match="boom"):
        ours.register_script("return redis.error_reply('boom')")()
    nested = ours.register_script("return {1, redis.error_reply('inner')}")()
    theirs_nested = theirs.register_script("return {1, redis.error_reply('inner')}")()
    assert nested[0] == theirs_nested[0] == 1
    assert isinstance(nested[1], resp.ReplyError) and str(nested[1]) == str(theirs_nested[1]) == "inner"
    with pytest.raises(resp.ReplyError, match="unknown command"):
        ours.execute_command("NO-SUCH-COMMAND")
    assert all(isinstance(cls(), resp.RedisFailure) for cls in (resp.ReplyError, resp.ConnectionFailed))


def test_auth_and_select(server: PrivateRedis, clients: tuple[resp.Client, redis.Redis]) -> None:
    _, theirs = clients
    theirs.set("where", "db3")
    admin = server.client()
    admin.acl_setuser("reader", enabled=True, passwords=[f"+{READER_PASSWORD}"], keys=["*"], commands=["+@all"])
    try:
        with resp.connect(f"redis://reader:{QUOTED}@127.0.0.1:{server.port}/3") as ours:
            assert ours.get("where") == b"db3"
        with resp.connect(_url(server, 0)) as ours:
            assert ours.get("where") is None
        with resp.connect(f"redis://127.0.0.1:{server.port}/3") as ours, pytest.raises(resp.ReplyError) as denied:
            ours.get("where")
        assert denied.value.code == "NOAUTH" and str(denied.value) == "Authentication required."
        for url in (f"redis://:wrong@127.0.0.1:{server.port}/3", f"redis://reader:wrong@127.0.0.1:{server.port}/3"):
            with resp.connect(url) as ours, pytest.raises(resp.ReplyError) as wrong:
                ours.ping()
            with pytest.raises(redis.AuthenticationError) as theirs_wrong:
                redis.Redis.from_url(url).ping()
            assert wrong.value.code == "WRONGPASS" and str(wrong.value) == str(theirs_wrong.value)
            assert "wrong" not in str(wrong.value)
    finally:
        admin.acl_deluser("reader")
        admin.close()


def test_a_refused_connection_names_host_and_port_never_the_password() -> None:
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    with pytest.raises(resp.ConnectionFailed) as ours:
        resp.connect(url).ping()
    with pytest.raises(redis.ConnectionError) as theirs:
        redis.Redis.from_url(url, retry=None).ping()
    assert str(ours.value) == str(theirs.value) == f"Error 111 connecting to 127.0.0.1:{port}. Connection refused."
    assert PASSWORD not in repr(ours.value) and "S3cret" not in repr(resp.connect(url))
    with pytest.raises(resp.ConnectionFailed, match="no-such-host.invalid:6379"):
        resp.connect("redis://:pw@no-such-host.invalid:6379/0").ping()


def test_a_server_that_goes_away_is_a_connection_failure(tmp_path: Path) -> None:
    private = PrivateRedis(tmp_path, password="pw").start()
    client = resp.connect(private.url)
    assert client.ping() is True
    private.kill()
    with pytest.raises(resp.ConnectionFailed, match=f"127.0.0.1:{private.port}"):
        client.get("x")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A redis-server speaking TLS only, with a certificate for localhost and 127.0.0.1 signed by
    a CA of the test's own; (port, the CA's file)."""
    folder = tmp_path_factory.mktemp("resp-tls")
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test certificates"

    def run(*argv: str) -> None:
        subprocess.run([openssl, *argv], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=jerp test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf")
    port = free_port()
    server = shutil.which("redis-server")
    assert server
    proc = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "127.0.0.2", "--tls-cert-file", "server.pem",
         "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no", "--save", "",
         "--requirepass", PASSWORD, "--dir", str(folder)],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", ssl_ca_certs=str(folder / "ca.pem")).ping()
                break
            except redis.RedisError:
                assert proc.poll() is None and time.monotonic() < deadline, "the TLS redis-server did not start"
                time.sleep(0.1)
        yield port, folder / "ca.pem"
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_rediss_checks_the_certificate_and_the_host_name(tls_server: tuple[int, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    port, ca = tls_server
    with pytest.raises(resp.ConnectionFailed, match=f"127.0.0.1:{port}.*CERTIFICATE_VERIFY_FAILED"):
        resp.connect(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0").ping()  # a CA the system does not trust
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # as an operator trusts a private CA
    with resp.connect(f"rediss://:{PASSWORD}@127.0.0.1:{port}/1") as ours:
        assert ours.ping() is True
        pipe = ours.pipeline()
        pipe.get("missing")
        pipe.scan(0)
        assert pipe.execute() == [None, (0, [])]
        assert ours.execute_command("CLIENT", "INFO") is not None
    theirs = redis.Redis.from_url(f"rediss://:{PASSWORD}@localhost:{port}/1")
    theirs.set("tls", os.urandom(100_000))
    with resp.connect(f"rediss://:{PASSWORD}@localhost:{port}/1") as ours:
        assert ours.get("tls") == theirs.get("tls")
    theirs.flushdb()
    theirs.close()
    with pytest.raises(resp.ConnectionFailed, match="certificate|hostname|match"):
        # the certificate names localhost and 127.0.0.1, not 127.0.0.2
        resp.connect(f"rediss://:{PASSWORD}@127.0.0.2:{port}/0").ping()


def test_jerpctl_read_commands_load_no_redis_py(server: PrivateRedis, tmp_path: Path) -> None:
    """``jerpctl jobs`` over real records, in a process of its own: the table of the records,
    and redis-py never imported."""
    from jerp_jobs.jobs import JobStore

    theirs = redis.Redis.from_url(_url(server, 4))
    theirs.flushdb()
    store = JobStore(theirs, ttl_days=1)
    made = [store.create("backup", ["backup"], site=f"s{i}.example.com").id for i in range(30)]
    code = (
        "import sys\nfrom jerp_jobs.cli import main\nsys.argv = ['jerpctl', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'redis', 'pydantic', 'structlog'}))\n"
    )
    env = {**os.environ, "JERP_BROKER_URL": _url(server, 4), "JERP_ENV_FILE": os.devnull}
    try:
        done = subprocess.run([sys.executable, "-c", code, "--json", "jobs", "--limit", "25"], env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        theirs.flushdb()
        theirs.close()
    listed, verdict = done.stdout.strip().splitlines()
    assert verdict == "0 []", done.stderr
    assert [job["id"] for job in json.loads(listed)] == made[::-1][:25]
    assert PASSWORD not in done.stdout + done.stderr


def test_read_commands_print_the_same_through_either_client(server: PrivateRedis, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``jobs``, ``backups`` and ``sites`` (tables and JSON) print the same bytes whether they
    read through the light client (the default) or redis-py."""
    from click.testing import CliRunner

    from jerp_jobs.cli import Ctx, _Reader, cli
    from jerp_jobs.jobs import JobStore
    from jerp_jobs.sitestate import SiteState

    url = _url(server, 6)
    theirs = redis.Redis.from_url(url)
    theirs.flushdb()
    store = JobStore(theirs, ttl_days=1)
    now = time.time()
    for i in range(60):
        site = f"s{i:02d}.example.com"
        job = store.create("backup", ["backup", "upload-offsite"], site=site, params={"note": "Zoë ✓"})
        if i % 3 == 0:
            store.set_state(job.id, "failed", error="dump failed: ünïcode")
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(now - 3600 * i))
        manifest = {"site": site, "timestamp": stamp, "utc_timestamp": stamp, "verified": True,
                    "artifacts": [{"path": f"{site}/{stamp}-database.sql.gz", "size": 1000 + i}]}
        theirs.zadd(f"jerp:backups:{site}", {json.dumps(manifest): now - 3600 * i})
        if i % 2:
            theirs.zadd(f"jerp:offsite:{site}", {json.dumps(manifest): now - 3600 * i})
        (tmp_path / "sites" / site).mkdir(parents=True)
        (tmp_path / "sites" / site / "site_config.json").write_text(json.dumps({"maintenance_mode": i % 7 == 0}))
    (tmp_path / "sites" / "apps.txt").write_text("frappe\n")
    SiteState(theirs, ttl_s=86400).mark_attention("s05.example.com", job_id="abc", reason="restore failed")
    for name, value in {"JERP_BROKER_URL": url, "JERP_EXECUTOR": "local", "JERP_BENCH_DIR": str(tmp_path),
                        "JERP_S3_BUCKET": "bucket", "JERP_ENV_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    if os.geteuid() == 0:
        monkeypatch.setenv("JERP_BENCH_USER", "nobody")
        tmp_path.chmod(0o755)
    monkeypatch.setattr(time, "time", lambda: now + 5)  # the same ages in both

    def with_redis_py() -> Ctx:
        reader = _Reader()
        reader.redis = redis.Redis.from_url(url)
        reader.store = JobStore(reader.redis, ttl_days=1)
        reader.sites = SiteState(reader.redis, ttl_s=86400)
        return Ctx(rt=reader)

    try:
        for args in (["jobs"], ["jobs", "--limit", "50", "--state", "failed"], ["--json", "jobs", "--limit", "1000"],
                     ["jobs", "--site", "s07.example.com"], ["backups"], ["--json", "backups"],
                     ["backups", "s03.example.com"], ["sites"], ["--json", "sites"]):
            ours = Ctx()
            light = CliRunner().invoke(cli, args, obj=ours)
            assert isinstance(ours.reader.redis, resp.Client)
            heavy = CliRunner().invoke(cli, args, obj=with_redis_py())
            assert light.output == heavy.output and light.exit_code == heavy.exit_code, args
            assert light.exit_code in (0, 1) and len(light.output) > 100, (args, light.output)
    finally:
        theirs.flushdb()
        theirs.close()


@pytest.mark.parametrize("answer", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"$many\r\n"])
def test_a_reply_that_is_not_resp2_is_a_protocol_error(answer: bytes) -> None:
    """A server that answers something else (another service on the port) fails clearly."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(answer)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        first_line = answer.split(b"\r")[0]
        with pytest.raises(resp.ProtocolError, match=re.escape(f"127.0.0.1:{port}: {first_line!r}")):
            resp.connect(f"redis://127.0.0.1:{port}/0").ping()
    finally:
        thread.join(timeout=10)
        listener.close()
    assert issubclass(resp.ProtocolError, resp.ConnectionFailed)
