"""Run jerp-jobs workflows end to end against a real Frappe bench, with the local executor.

    python -m tests.realbench.run --bench-dir /path/to/frappe-bench [options]

The bench is one built by ``tests/realbench/build.sh`` (or any bench whose MariaDB, Redis and
Frappe RQ worker are running). This starts what jerp-jobs itself needs, all private to this run:

* a Redis (broker, job records, locks) on a free loopback port, AOF on, ``noeviction``;
* a jerp-jobs worker and Celery Beat under ``jerp-run``;

then runs, each with ``jerpctl --json enqueue ... --wait``, on a new site named
``rr<time>.realtest.example.com`` unless ``--site`` names one:

    provision SITE, backup SITE, migrate SITE, migrate-all, backup-all,
    restore SITE --db <the dump of the backup SITE job>,
    with --s3: restore SITE --from-offsite --at <UTC now>, drill SITE (a scratch site
    ``drill-<job>.jerp-drill.invalid`` made and dropped on the bench)

``--s3`` starts a local S3 server (moto, from the test extras) on a free loopback port, with a
bucket of its own, so backups are copied off-site, restores can come from there and the drill
can run.

and prints, per job, its kind, id, final state and the first failed step with its error. The
records are kept as JSON in the run folder (``records/``), with the worker's log (``jerp-run.log``).
``migrate-all`` and ``backup-all`` work on every site of the bench, not only the new one.

Settings given to jerp-jobs: ``JERP_EXECUTOR=local``, ``JERP_BENCH_DIR``, ``JERP_BENCH_BIN``
(``--bench-bin``; default the ``bench`` wrapper build.sh writes beside the bench folder),
``JERP_SITES_DIR`` (the bench's ``sites``), ``JERP_BENCH_USER`` (``--bench-user``; default: when
this runs as root and the bench's ``common_site_config.json`` has no ``frappe_user``, the owner
of the bench folder), ``MARIADB_ROOT_PASSWORD`` (read from ``--db-root-password-file``, default
build.sh's ``mariadb/root-password`` beside the bench folder), ``FRAPPE_ADMIN_PASSWORD``
(generated, kept in the run folder, mode 600), ``JERP_INSTALL_APPS`` (``--install-apps``,
default ``frappe``: nothing beyond Frappe itself). The passwords reach jerp-jobs through its
environment only, never an argv.

Exit status: 0 when every job run ended ``succeeded``, 1 otherwise, 2 on bad usage. The new
site is left in place (``--drop-site`` drops it at the end, answering bench's password prompt
on stdin). The Redis and the worker are stopped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
JOB_TIMEOUT = 3600  # seconds one `enqueue --wait` may take (a provision on 2 busy cores: a few minutes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench_dir = Path(args.bench_dir).resolve()
    problems = check_bench(bench_dir)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or ROOT / "tests" / ".run" / "realbench").resolve()
    (run_dir / "records").mkdir(parents=True, exist_ok=True)
    site = args.site or f"rr{time.strftime('%m%d%H%M%S', time.gmtime())}.realtest.example.com"

    env = jerp_env(args, bench_dir, run_dir)
    redis = start_redis(run_dir)
    env["JERP_BROKER_URL"] = f"redis://127.0.0.1:{redis}/0"
    write_env(run_dir, env)
    print(f"run folder {run_dir}; jerp-jobs Redis on 127.0.0.1:{redis}; site {site}", flush=True)
    rows: list[dict[str, Any]] = []
    s3 = None
    try:
        if args.s3:
            s3 = start_s3(run_dir, env)
        write_env(run_dir, env)
        start_jerp_run(run_dir, env)
        rows = run_all(args, env, run_dir, site)
    finally:
        if args.drop_site:
            drop_site(env, bench_dir, site)
        if not args.keep:
            stop_jerp_run(run_dir)
            stop_redis(run_dir)
        if s3 is not None:
            stop_process(s3)
    print_table(rows)
    (run_dir / "summary.json").write_text(json.dumps(rows, indent=1))
    return 0 if rows and all(row["state"] == "succeeded" for row in rows) else 1


def write_env(run_dir: Path, env: dict[str, str]) -> None:
    """The run's settings, for jerpctl by hand: ``set -a; . <run dir>/env; set +a``."""
    path = run_dir / "env"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.realbench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-dir", required=True, help="the bench folder (holds sites/ and apps/)")
    parser.add_argument("--bench-bin", help="the bench program (default: ../bench beside the bench folder, "
                        "else bench on PATH)")
    parser.add_argument("--bench-user", help="JERP_BENCH_USER (only when this runs as root)")
    parser.add_argument("--db-root-password-file", help="file holding the MariaDB root password "
                        "(default: ../mariadb/root-password beside the bench folder)")
    parser.add_argument("--site", help="the site to provision (default rr<time>.realtest.example.com)")
    parser.add_argument("--install-apps", default="frappe", help="JERP_INSTALL_APPS (default frappe)")
    parser.add_argument("--build-assets", choices=("auto", "always", "never"),
                        help="JERP_BUILD_ASSETS (default: jerp-jobs' own default, auto)")
    parser.add_argument("--run-dir", help="folder of this run's Redis, logs and records (default tests/.run/realbench)")
    parser.add_argument("--only", help="comma-separated job kinds to run, in the usual order "
                        "(" + ",".join(KINDS) + "; restore-offsite and drill need --s3)")
    parser.add_argument("--s3", action="store_true", help="a local S3 server for off-site copies, an off-site "
                        "restore and a drill")
    parser.add_argument("--drop-site", action="store_true", help="drop the new site at the end")
    parser.add_argument("--keep", action="store_true", help="leave the Redis and the worker running")
    return parser.parse_args(argv)


def check_bench(bench_dir: Path) -> list[str]:
    problems = []
    if not (bench_dir / "sites" / "apps.txt").is_file():
        problems.append(f"{bench_dir} is not a bench folder (no sites/apps.txt)")
    for program in ("redis-server", "redis-cli"):
        if shutil.which(program) is None:
            problems.append(f"{program} not found (Debian package redis-server)")
    return problems


def jerp_env(args: argparse.Namespace, bench_dir: Path, run_dir: Path) -> dict[str, str]:
    wrapper = bench_dir.parent / "bench"
    bench_bin = args.bench_bin or (str(wrapper) if os.access(wrapper, os.X_OK) else "bench")
    password_file = Path(args.db_root_password_file or bench_dir.parent / "mariadb" / "root-password")
    try:
        root_password = password_file.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"error: cannot read the MariaDB root password from {password_file}: {exc.strerror}")
    admin_file = run_dir / "admin-password"
    if not admin_file.exists():
        admin_file.write_text(secrets.token_urlsafe(12))
        admin_file.chmod(0o600)
    env = {
        "JERP_EXECUTOR": "local",
        "JERP_BENCH_DIR": str(bench_dir),
        "JERP_BENCH_BIN": bench_bin,
        "JERP_SITES_DIR": str(bench_dir / "sites"),
        "JERP_INSTALL_APPS": args.install_apps,
        "JERP_RESUME_INTERVAL": "10",
        "JERP_ENV_FILE": str(run_dir / "no-such.env"),  # no operator .env of the current folder
        "CELERY_WORKER_CONCURRENCY": "2",
        "MARIADB_ROOT_PASSWORD": root_password,
        "FRAPPE_ADMIN_PASSWORD": admin_file.read_text().strip(),
    }
    if args.build_assets:
        env["JERP_BUILD_ASSETS"] = args.build_assets
    user = args.bench_user
    if user is None and os.geteuid() == 0 and not frappe_user(bench_dir):
        user = pwd.getpwuid(bench_dir.stat().st_uid).pw_name
    if user:
        env["JERP_BENCH_USER"] = user
    return env


def frappe_user(bench_dir: Path) -> str | None:
    try:
        config = json.loads((bench_dir / "sites" / "common_site_config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("frappe_user") if isinstance(config, dict) else None


# --- services --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(run_dir: Path) -> int:
    pid_file, port_file = run_dir / "redis.pid", run_dir / "redis.port"
    if alive(pid_file) and port_file.exists():
        port = int(port_file.read_text())
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
            return port
    port = free_port()
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
                    "--pidfile", str(pid_file), "--logfile", str(run_dir / "redis.log"), "--dir", str(run_dir),
                    "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"], check=True)
    for _ in range(50):
        done = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        if done.stdout.strip() == "PONG":
            port_file.write_text(str(port))
            return port
        time.sleep(0.2)
    raise SystemExit(f"error: redis on port {port} did not start; see {run_dir / 'redis.log'}")


def stop_redis(run_dir: Path) -> None:
    port_file = run_dir / "redis.port"
    if alive(run_dir / "redis.pid") and port_file.exists():
        subprocess.run(["redis-cli", "-p", port_file.read_text().strip(), "shutdown", "nosave"], capture_output=True)


def start_s3(run_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """moto's S3 server on a free loopback port, a bucket in it; its settings into ``env``."""
    import boto3

    port = free_port()
    with open(run_dir / "s3.log", "ab") as log:
        proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="realbench")
            break
        except Exception:  # noqa: BLE001 - not listening yet
            if proc.poll() is not None:
                raise SystemExit(f"error: the S3 server did not start; see {run_dir / 's3.log'}") from None
            time.sleep(0.2)
    env.update({"JERP_S3_BUCKET": "realbench", "JERP_S3_ENDPOINT_URL": endpoint, "JERP_S3_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    print(f"S3 (moto) on {endpoint}, bucket realbench", flush=True)
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def start_jerp_run(run_dir: Path, env: dict[str, str]) -> None:
    """jerp-run (worker + Beat) in a session of its own; waits for both to be ready."""
    stop_jerp_run(run_dir)
    log_path = run_dir / "jerp-run.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(VENV_BIN / "jerp-run"), "--grace", "10"], env={**os.environ, **env},
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=run_dir)
    (run_dir / "jerp-run.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log_path.read_bytes()[offset:]
        if b" ready." in text and b"beat: Starting" in text:
            print(f"jerp-run (worker and Beat) running, pid {proc.pid}, log {log_path}", flush=True)
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise SystemExit(f"error: jerp-run did not start; the end of {log_path}:\n"
                     f"{log_path.read_text(errors='replace')[-3000:]}")


def stop_jerp_run(run_dir: Path) -> None:
    pid_file = run_dir / "jerp-run.pid"
    try:
        pid = int(pid_file.read_text())
        os.killpg(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    for _ in range(300):  # jerp-run gives its children --grace 10 s
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


# --- jobs ------------------------------------------------------------------------------------

KINDS = ("provision", "backup", "migrate", "migrate-all", "backup-all", "restore", "restore-offsite", "drill")
NEEDS_S3 = {"restore-offsite", "drill"}


def run_all(args: argparse.Namespace, env: dict[str, str], run_dir: Path, site: str) -> list[dict[str, Any]]:
    wanted = set(args.only.split(",")) if args.only else set(KINDS) - (set() if args.s3 else NEEDS_S3)
    unknown = wanted - set(KINDS)
    if unknown:
        raise SystemExit(f"error: unknown job kinds in --only: {', '.join(sorted(unknown))}")
    rows = []
    backup_record: dict[str, Any] | None = None
    for kind in KINDS:
        if kind not in wanted:
            continue
        if kind in ("provision", "backup", "migrate", "drill"):
            argv = [kind, site]
        elif kind == "restore":
            dump = newest_local_dump(env, run_dir, site) or dump_of(backup_record)
            if dump is None:
                rows.append({"kind": kind, "job_id": "-", "state": "not run",
                             "failed_step": "-", "error": "no dump: the backup job did not succeed"})
                continue
            argv = [kind, site, "--db", dump]
        elif kind == "restore-offsite":
            argv = ["restore", site, "--from-offsite", "--at", time.strftime("%Y%m%d_%H%M%S", time.gmtime())]
        else:
            argv = [kind]
        record = run_job(env, run_dir, argv)
        if kind == "backup":
            backup_record = record
        rows.append(summarize(kind, record))
        print_row(rows[-1])
    return rows


def run_job(env: dict[str, str], run_dir: Path, argv: list[str]) -> dict[str, Any]:
    print(f"\n==> jerpctl --json enqueue {' '.join(argv)} --wait", flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run([str(VENV_BIN / "jerpctl"), "--json", "enqueue", *argv, "--wait"],
                              env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=JOB_TIMEOUT, cwd=run_dir)
    except subprocess.TimeoutExpired:
        return {"id": "-", "state": f"no outcome within {JOB_TIMEOUT} s", "steps": []}
    sys.stderr.write(done.stderr[-4000:])
    try:
        record = json.loads(done.stdout)
    except ValueError:
        record = {"id": "-", "state": f"jerpctl exit {done.returncode}", "steps": [],
                  "error": (done.stderr.strip().splitlines() or ["(no output)"])[-1]}
    record["_duration_s"] = round(time.monotonic() - started, 1)
    name = f"{len(list((run_dir / 'records').glob('*.json'))):02d}-{argv[0]}-{record.get('id', '-')}.json"
    (run_dir / "records" / name).write_text(json.dumps(record, indent=1))
    return record


def newest_local_dump(env: dict[str, str], run_dir: Path, site: str) -> str | None:
    """The dump of the site's newest backup still in its backup folder (with off-site copies,
    older local sets are removed once copied), from ``jerpctl --json backups SITE``."""
    done = subprocess.run([str(VENV_BIN / "jerpctl"), "--json", "backups", site], env={**os.environ, **env},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=run_dir)
    try:
        rows = json.loads(done.stdout)
    except ValueError:
        return None
    folder = Path(env["JERP_SITES_DIR"]) / site / "private" / "backups"
    for row in rows:  # newest first
        name = f"{row.get('timestamp')}-{site.replace('.', '_')}-database.sql.gz"
        if row.get("where") == "local" and (folder / name).is_file():
            return name
    return None


def dump_of(record: dict[str, Any] | None) -> str | None:
    """The database dump of a backup job's manifest, as restore --db takes it."""
    if not record or record.get("state") != "succeeded":
        return None
    manifest = (record.get("result") or {}).get("backup") or {}
    for artifact in manifest.get("artifacts") or []:
        if artifact.get("kind") == "database" and artifact.get("path"):
            return str(artifact["path"]).rsplit("/", 1)[-1]
    return None


def summarize(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    failed = next((s for s in record.get("steps") or [] if s.get("state") == "failed"), None)
    error = (failed or {}).get("error") or record.get("error") or ""
    children = (record.get("result") or {}).get("sites") or {}
    return {
        "kind": kind,
        "job_id": record.get("id", "-"),
        "state": record.get("state", "?"),
        "duration_s": record.get("_duration_s"),
        "failed_step": (failed or {}).get("name", "-"),
        "error": error,
        "failure": (record.get("result") or {}).get("failure"),
        "sites": {s: {"state": e.get("state"), "job_id": e.get("job_id")} for s, e in children.items()},
    }


def print_row(row: dict[str, Any]) -> None:
    print(f"{row['kind']:<12} {row['job_id']:<36} {row['state']:<10} {row['duration_s'] or '-'} s  "
          f"failed step: {row['failed_step']}", flush=True)
    if row["error"]:
        print(f"    error: {row['error']}", flush=True)
    if row.get("failure"):
        print(f"    failure: {json.dumps(row['failure'])}", flush=True)
    for site, entry in sorted(row.get("sites", {}).items()):
        print(f"    {site:<40} {entry['state'] or '?':<10} job {entry['job_id'] or '-'}", flush=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| kind | job id | state | failed step | error |\n|---|---|---|---|---|")
    for row in rows:
        error = " ".join(str(row["error"]).split())[:300]
        print(f"| {row['kind']} | {row['job_id']} | {row['state']} | {row['failed_step']} | {error} |")


def drop_site(env: dict[str, str], bench_dir: Path, site: str) -> None:
    """Drop SITE with bench, the root password given on its prompt (stdin), not argv."""
    if not (bench_dir / "sites" / site / "site_config.json").exists():
        return
    argv = [env["JERP_BENCH_BIN"], "drop-site", site, "--no-backup", "--force"]
    if "JERP_BENCH_USER" in env:
        argv = ["runuser", "-u", env["JERP_BENCH_USER"], "--", *argv]
    done = subprocess.run(argv, cwd=bench_dir, input=env["MARIADB_ROOT_PASSWORD"] + "\n",
                          capture_output=True, text=True, timeout=600)
    print(f"drop-site {site}: exit {done.returncode}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
