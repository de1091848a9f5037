"""`make demo`: the main job — the release migration of every site — on an embedded default.

No Docker and no Frappe: a private Redis and MariaDB on free loopback ports (tests/services/up.sh
with its state under ``.demo/run``), a bench of eight customer sites run by the stand-in bench
(tests/standin, real MariaDB databases), a jerp-jobs worker and Beat under ``jerp-run``, then:

1. ``jerpctl enqueue migrate-all --wait``: a canary site first, then the rest in parallel; one
   site's migrate fails on purpose (the stand-in's fault file) after committing a patch, and
   its pre-migrate backup is restored automatically (that site ends ``recovered``);
2. ``jerpctl enqueue backup-all --wait``: every site backed up, each backup verified;
3. a check of both outcomes, then where to look next.

Everything lives under ``.demo/`` (ignored by git; ``JERP_DEMO_DIR`` names another folder). ``python -m tests.demo down`` (``make
demo-down``) stops what this started and removes ``.demo/``. Running the demo again reuses the
services and the bench, and moves the bench's apps to a newer release so there is something
to migrate.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.standin.layout import BENCH_SCRIPT, create_bench, set_app_version, write_faults

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("JERP_DEMO_DIR") or ROOT / ".demo").resolve()
RUN = DEMO / "run"
LOGS = DEMO / "logs"
BENCH = DEMO / "frappe-bench"
ENV_FILE = DEMO / "env"
VENV_BIN = Path(sys.executable).parent
SITES = [
    "padaria-pao-quente.exemplo.com.br",
    "oficina-do-joao.exemplo.com.br",
    "mercado-central.exemplo.com.br",
    "clinica-sorriso.exemplo.com.br",
    "livraria-letras.exemplo.com.br",
    "ferragens-silva.exemplo.com.br",
    "farmacia-vida.exemplo.com.br",
    "escola-aprender.exemplo.com.br",
]
CANARY = SITES[0]
FAILING = SITES[3]
APPS = ("frappe", "erpnext")


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "up"
    if command == "up":
        return up()
    if command == "down":
        down()
        return 0
    print("usage: python -m tests.demo [up|down]", file=sys.stderr)
    return 2


# --- up --------------------------------------------------------------------------------------


def up() -> int:
    started = time.monotonic()
    for folder in (RUN, LOGS):
        folder.mkdir(parents=True, exist_ok=True)
    say("Private Redis and MariaDB on free loopback ports (state in .demo/run)")
    redis_port, maria_port, root_password = start_services()
    env = demo_env(redis_port, maria_port, root_password)
    write_env_file(env)

    say(f"A bench of {len(SITES)} customer sites, run by the stand-in bench (.demo/frappe-bench)")
    make_bench(redis_port, maria_port, env)

    say("jerp-run: a jerp-jobs worker and Celery Beat, each started again if it exits (log: .demo/logs/jerp-run.log)")
    stop_process("jerp-run")
    start_process("jerp-run", [str(VENV_BIN / "jerp-run"), "--grace", "10"], env,
                  ready=(b" ready.", b"beat: Starting"))

    say(f"jerpctl enqueue migrate-all --canary {CANARY} --wait "
        f"(the migrate of {FAILING} fails on purpose and is restored)")
    write_faults(BENCH, {"fail": {"migrate": [FAILING]}, "fail_after_phase": {"migrate": 1}})
    migrate = run_job(env, "migrate-all", "--canary", CANARY)
    write_faults(BENCH, {})

    say("jerpctl enqueue backup-all --wait")
    backup = run_job(env, "backup-all")

    show_sites("migrate-all", migrate)
    show_sites("backup-all", backup)
    problems = check(migrate, backup)
    say("Where to look next")
    print(f"""  set -a; . .demo/env; set +a          # this demo's settings, then:
  .venv/bin/jerpctl jobs                 # every job, newest first
  .venv/bin/jerpctl status {migrate.get('id', 'JOB')}   # the migrate-all: each site's child job
  .venv/bin/jerpctl sites                # sites, maintenance, attention marks, backup age
  .venv/bin/jerpctl backups              # last backup of every site
  logs: .demo/logs/jerp-run.log (worker and Beat); bench calls: .demo/frappe-bench/sites/.standin-calls.jsonl
  make demo-down                         # stop everything this started and remove .demo/""")
    elapsed = time.monotonic() - started
    if problems:
        print("\nThe demo did not end as expected:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"\nDemo done in {elapsed:.0f} s: {len(SITES) - 1} sites migrated, {FAILING} restored after its "
          f"failed migrate, {len(SITES)} sites backed up.")
    return 0


def start_services() -> tuple[int, int, str]:
    env = {**os.environ, "JERP_SERVICES_DIR": str(RUN)}
    for variable in ("JERP_TEST_REDIS_PORT", "JERP_TEST_MARIADB_PORT"):
        env.pop(variable, None)
    subprocess.run([str(ROOT / "tests" / "services" / "up.sh")], env=env, check=True)
    redis_port = int((RUN / "redis.port").read_text())
    maria_port = int((RUN / "mariadb.port").read_text())
    return redis_port, maria_port, (RUN / "mariadb-root-password").read_text().strip()


def demo_env(redis_port: int, maria_port: int, root_password: str) -> dict[str, str]:
    admin_file = RUN / "admin-password"
    if not admin_file.exists():
        admin_file.write_text(secrets.token_urlsafe(12))
        admin_file.chmod(0o600)
    return {
        "JERP_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "JERP_EXECUTOR": "local",
        "JERP_BENCH_DIR": str(BENCH),
        "JERP_BENCH_BIN": str(BENCH_SCRIPT),
        "JERP_INSTALL_APPS": "erpnext",
        "JERP_FANOUT_CONCURRENCY": "3",
        "JERP_RESUME_INTERVAL": "10",
        "CELERY_WORKER_CONCURRENCY": "4",  # celery worker --concurrency, read by its CLI
        "MARIADB_ROOT_PASSWORD": root_password,
        "FRAPPE_ADMIN_PASSWORD": admin_file.read_text().strip(),
    }


def write_env_file(env: dict[str, str]) -> None:
    ENV_FILE.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    ENV_FILE.chmod(0o600)


def make_bench(redis_port: int, maria_port: int, env: dict[str, str]) -> None:
    fresh = not (BENCH / "sites" / "common_site_config.json").exists()
    create_bench(BENCH, db_host="127.0.0.1", db_port=maria_port, apps=APPS,
                 redis_cache=f"redis://127.0.0.1:{redis_port}/1")
    if not fresh:
        # A new release of the image: the apps move forward, so every site has work to migrate.
        version = f"15.{int(time.time())}.0"
        for app in APPS:
            set_app_version(BENCH, app, version)
        print(f"  the bench exists: apps moved to {version}")
    missing = [site for site in SITES if not (BENCH / "sites" / site / "site_config.json").exists()]

    def new_site(site: str) -> str:
        # The passwords reach the stand-in on its prompts (stdin), as jerp-jobs gives them to bench.
        done = subprocess.run(
            [str(BENCH_SCRIPT), "new-site", site, "--mariadb-user-host-login-scope=%", "--install-app", "erpnext"],
            cwd=BENCH, input=f"{env['MARIADB_ROOT_PASSWORD']}\n{env['FRAPPE_ADMIN_PASSWORD']}\n{env['FRAPPE_ADMIN_PASSWORD']}\n",
            capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise SystemExit(f"error: new-site {site} failed:\n{done.stdout}{done.stderr}")
        return site

    with ThreadPoolExecutor(max_workers=4) as pool:
        for site in pool.map(new_site, missing):
            print(f"  new site {site}")
    if not missing:
        print(f"  {len(SITES)} sites already there")


def start_process(name: str, argv: list[str], env: dict[str, str], *, ready: tuple[bytes, ...],
                  timeout: float = 90) -> None:
    """Start ``argv`` in its own session, logging to .demo/logs/NAME.log; wait for every
    ``ready`` marker in its log."""
    log_path = LOGS / f"{name}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read()
            if all(marker in text for marker in ready):
                print(f"  {name} running (pid {proc.pid})")
                return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise SystemExit(f"error: the {name} did not start; the end of {log_path}:\n{tail}")


def run_job(env: dict[str, str], *args: str) -> dict:
    """Enqueue with --wait, its live progress on the terminal; then the final record, as JSON."""
    jerpctl = str(VENV_BIN / "jerpctl")
    full_env = {**os.environ, **env}
    done = subprocess.run([jerpctl, "enqueue", *args, "--wait"], env=full_env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, text=True, timeout=900)
    sys.stdout.write(done.stdout)
    job_id = done.stdout.strip().splitlines()[0].split()[-1] if done.stdout.strip() else ""
    status = subprocess.run([jerpctl, "--json", "status", job_id], env=full_env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    try:
        return json.loads(status.stdout)
    except json.JSONDecodeError:
        return {"id": job_id, "state": f"unknown (jerpctl status exit {status.returncode}: {status.stderr.strip()})"}


def show_sites(title: str, job: dict) -> None:
    sites = (job.get("result") or {}).get("sites") or {}
    print(f"\n  {title} {job.get('id')}: {job.get('state')}")
    for site, entry in sorted(sites.items()):
        print(f"    {site:<40} {entry.get('state', '?'):<10} job {entry.get('job_id') or '-'}")


def check(migrate: dict, backup: dict) -> list[str]:
    problems = []
    migrated = (migrate.get("result") or {}).get("sites") or {}
    for site in SITES:
        want = "recovered" if site == FAILING else "succeeded"
        got = (migrated.get(site) or {}).get("state")
        if got != want:
            problems.append(f"migrate-all: {site} is {got!r}, expected {want!r}")
    backed_up = (backup.get("result") or {}).get("sites") or {}
    for site in SITES:
        got = (backed_up.get(site) or {}).get("state")
        if got != "succeeded":
            problems.append(f"backup-all: {site} is {got!r}, expected 'succeeded'")
    return problems


# --- down ------------------------------------------------------------------------------------


def stop_process(name: str) -> None:
    pid_file = RUN / f"{name}.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    for _ in range(300):  # jerp-run gives its children --grace 10 s to stop
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def down() -> None:
    stop_process("jerp-run")
    if RUN.exists():
        env = {**os.environ, "JERP_SERVICES_DIR": str(RUN)}
        subprocess.run([str(ROOT / "tests" / "services" / "up.sh"), "down"], env=env, check=False)
    shutil.rmtree(DEMO, ignore_errors=True)
    print("demo stopped; .demo/ removed")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
