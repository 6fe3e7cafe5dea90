"""What operators rely on: the README's configuration table, the compose file and the
Dockerfile as they are written, and Redis over TLS."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from conftest import ROOT
from paglets_artifacts import ArtifactJobs, Settings
from paglets_artifacts.cli import commands as cli
from paglets_artifacts.jobs import contract
from paglets_artifacts.redis_server import free_port

README = (ROOT / "README.md").read_text(encoding="utf-8")
COMPOSE = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")


def _settings_table_module():
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------ README


def test_readme_configuration_table_is_generated_from_settings():
    table = _settings_table_module()
    assert table.replaced(README, table.render()) == README, "run: python scripts/settings_table.py --write"
    for var, _default, _doc in Settings.documented():
        assert f"| `{var}` |" in README


def test_settings_table_check_fails_on_a_stale_table(tmp_path, monkeypatch):
    table = _settings_table_module()
    stale = tmp_path / "README.md"
    stale.write_text(f"{table.BEGIN}\n| old |\n{table.END}\n")
    monkeypatch.setattr(table, "README", stale)
    assert table.main(["--check"]) == 1
    assert table.main(["--write"]) == 0
    assert table.main(["--check"]) == 0


def test_readme_starts_with_the_two_commands_and_has_the_operator_sections():
    head = README.split("## ", 1)[0]
    assert head.index("python3 scripts/dev.py demo") < head.index("python3 scripts/dev.py test")
    for section in ("## Command line", "## Configuration", "## Operations"):
        assert f"\n{section}\n" in README


def test_every_command_the_readme_lists_exists():
    section = README.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z-]+)", section, flags=re.MULTILINE))
    from typer.main import get_command

    assert listed and listed <= set(get_command(cli.app).commands)


# ------------------------------------------------------------------------ docker-compose.yml


def compose_services() -> dict[str, str]:
    """Each service's block of text (the file keeps a service's keys indented under it)."""
    body = COMPOSE.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    blocks = re.split(r"^  (?=[a-z][\w-]*:\n)", body, flags=re.MULTILINE)
    return {block.split(":", 1)[0]: block for block in blocks if block.strip() and not block.startswith(" ")}


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` with the defaults."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_compose_has_redis_workers_scheduler_and_host_with_healthchecks():
    services = compose_services()
    assert set(services) == {"redis", "worker", "scheduler", "host"}
    for name, block in services.items():
        assert "healthcheck:" in block, name
    for name in ("worker", "scheduler", "host"):
        assert "<<: *app" in services[name]  # the shared volume, image and Redis dependency
    assert "- artifacts:/data" in COMPOSE.split("x-app:", 1)[1].split("\n\n", 1)[0]


def test_compose_workers_can_be_scaled():
    worker = compose_services()["worker"]
    assert "container_name" not in worker and "ports:" not in worker  # N copies must not collide


def test_compose_environment_names_are_the_documented_variables():
    documented = {var for var, _default, _doc in Settings.documented()}
    used = set(re.findall(r"^\s+((?:PAGLETS_ARTIFACTS_|REDIS_URL)\w*):", COMPOSE, flags=re.MULTILINE))
    assert used and used <= documented


def test_compose_service_commands_are_valid_cli_invocations(monkeypatch, settings):
    import paglets_artifacts.http.server as http_server

    calls = []
    monkeypatch.setattr(cli, "_exec", lambda args, env: calls.append(args))
    monkeypatch.setattr(http_server, "serve", lambda *args: calls.append(list(args[1:])))
    services = compose_services()
    runner = CliRunner()
    for name in ("worker", "scheduler", "host"):
        line = re.search(r"^    command: (\[.*\])$", services[name], flags=re.MULTILINE).group(1)
        args = json.loads(interpolate(line))
        result = runner.invoke(cli.app, args, env=settings.to_env())
        assert result.exit_code == 0, (name, result.stderr)
    assert calls[0][3:] == ["workers.registry", "--processes", "2", "--threads", "4"]
    assert calls[1][1:] == ["-m", "workers.scheduler"]
    assert calls[2] == ["0.0.0.0", 8470]


def test_compose_requires_an_api_key_for_the_published_host(monkeypatch, settings):
    """The host listens on 0.0.0.0 and is published: Compose refuses to start without an
    API key from the environment, and ``serve`` would refuse too."""
    import yaml

    import paglets_artifacts.http.server as http_server

    document = yaml.safe_load(COMPOSE)
    key = document["x-environment"]["PAGLETS_ARTIFACTS_API_KEY"]
    assert re.fullmatch(r"\$\{PAGLETS_ARTIFACTS_API_KEY:\?[^}]+\}", key), key  # required, no empty default
    host = document["services"]["host"]
    assert host["environment"]["PAGLETS_ARTIFACTS_API_KEY"] == key  # merged into the host's environment
    assert "ALLOW_INSECURE" not in COMPOSE and "--insecure" not in host["command"]

    served = []
    monkeypatch.setattr(http_server.uvicorn, "run", lambda app, **options: served.append(options["host"]))
    command = [interpolate(part) for part in host["command"]]
    refused = CliRunner().invoke(cli.app, command, env=settings.to_env())
    assert refused.exit_code == cli.EXIT_CONFIG and served == []
    accepted = CliRunner().invoke(cli.app, command, env={**settings.to_env(), "PAGLETS_ARTIFACTS_API_KEY": "k3y"})
    assert accepted.exit_code == 0, accepted.stderr
    assert served == ["0.0.0.0"]


def test_dockerfile_installs_the_package_and_runs_the_cli():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY src ./src" in dockerfile and "COPY workers ./workers" in dockerfile
    assert 'ENTRYPOINT ["paglets-artifacts"]' in dockerfile
    assert "USER paglets" in dockerfile


# ------------------------------------------------------------------------ Redis over TLS


def _tls_redis_server() -> str | None:
    binary = shutil.which("redis-server")
    if not binary or not shutil.which("openssl"):
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return binary if out.returncode == 0 and int(re.search(r"v=(\d+)", out.stdout).group(1)) >= 6 else None


@pytest.fixture
def tls_redis(tmp_path):
    """A private redis-server listening on TLS only (the embedded one has no TLS build)."""
    binary = _tls_redis_server()
    if binary is None:
        pytest.skip("no TLS-capable redis-server and openssl on this machine")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None:
                    pytest.skip("this redis-server was built without TLS")
                import time

                time.sleep(0.025)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_jobs_run_over_redis_with_tls(tls_redis, settings, workers, files):
    tls = settings.with_changes(redis_url=tls_redis)
    workers.start(settings=tls)
    (files / "t.bin").write_bytes(os.urandom(100_000))
    result = CliRunner().invoke(cli.app, ["import", str(files / "t.bin"), "--wait", "--json"], env=tls.to_env())
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["result"]["size_bytes"] == 100_000
    with ArtifactJobs(settings=tls) as jobs:
        assert [record.kind for record in jobs.jobs()] == ["import"]

    untrusted = tls_redis.split("?")[0]  # no CA: the server's certificate cannot be verified
    refused = CliRunner().invoke(cli.app, ["jobs"], env={**tls.to_env(), "REDIS_URL": untrusted})
    assert refused.exit_code == cli.EXIT_UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr


def test_importing_workers_or_the_scheduler_builds_no_broker_and_registers_no_actor():
    code = (
        "import sys, dramatiq.broker, workers, workers.scheduler, workers.logs, workers.broker, workers.actors; "
        "print(dramatiq.broker.global_broker, 'httpx' in sys.modules, 'workers.remote_actors' in sys.modules, "
        "'workers.registry' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        env={**os.environ, "PAGLETS_ARTIFACTS_QUOTA_BYTES": "lots"},
    )  # read by no import
    assert out.stdout.split() == ["None", "False", "False", "False"]
    scheduler = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, workers.scheduler; print(sorted(name for name in sys.modules "
            "if name.startswith('workers') or name in ('httpx', 'prometheus_client')))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert scheduler.stdout.strip() == "['workers', 'workers.reconcile', 'workers.scheduler']"


def test_the_registry_builds_the_broker_and_registers_every_job_kind_once(settings):
    code = (
        "import dramatiq, workers.registry as registry; "
        "print(dramatiq.get_broker() is registry.broker, ' '.join(sorted(registry.broker.get_declared_actors())))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        env={**os.environ, **settings.to_env()},
    )
    same, *actors = out.stdout.split()
    assert same == "True"
    # Every job kind's actor, and the completion callbacks' (workers/callbacks.py).
    assert actors == sorted([*(kind.actor_name for kind in contract.KINDS.values()), "deliver_callback"])


def test_the_package_never_imports_the_worker_side():
    code = (
        "import sys, paglets_artifacts, paglets_artifacts.cli.commands, paglets_artifacts.cli.demo, "
        "paglets_artifacts.cli.console, paglets_artifacts.paglets_host, paglets_artifacts.http.server; "
        "print(sorted(name for name in sys.modules if name == 'workers' or name.startswith('workers.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------ docker-compose.paglets.yml


def compose_merged(*names: str) -> dict:
    """The services of compose files applied in order, as ``docker compose -f a -f b`` merges
    them: mappings (environment, healthcheck) key by key, a later command replaces an earlier one."""
    import yaml

    def merge(base: dict, override: dict) -> dict:
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    services: dict = {}
    for name in names:
        document = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
        for service, spec in document["services"].items():
            services[service] = merge(services.get(service, {}), spec)
    return services


def test_the_paglets_compose_variant_runs_the_host_as_a_paglets_host_sharing_its_directory(monkeypatch, settings):
    import paglets_artifacts.paglets_host as paglets_host

    services = compose_merged("docker-compose.yml", "docker-compose.paglets.yml")
    host = services["host"]
    command = [interpolate(part) for part in host["command"]]
    assert command[0] == "paglets-host"
    persistence = Path(command[command.index("--persistence-dir") + 1])
    for name in ("worker", "scheduler", "host"):  # one store: the host's; its paglets' files allowed
        env = services[name]["environment"]
        assert env["PAGLETS_ARTIFACTS_STORE_ROOT"] == str(persistence / "artifacts"), name
        assert str(persistence / "work") in env["PAGLETS_ARTIFACTS_ALLOWED_ROOTS"].split(":"), name
    assert re.fullmatch(r"\$\{PAGLETS_API_KEY:\?[^}]+\}", host["environment"]["PAGLETS_API_KEY"])
    assert "8470" in command and any(port.endswith(":8470") for port in map(interpolate, host["ports"]))
    assert "/health" in " ".join(host["healthcheck"]["test"])

    ran = []
    monkeypatch.setattr(paglets_host, "run_host", lambda settings, **options: ran.append((settings, options)))
    env = {
        **settings.to_env(),
        **{
            k: interpolate(str(v))
            for k, v in host["environment"].items()
            if k.startswith("PAGLETS_ARTIFACTS_") and "${" not in str(v)
        },
    }
    result = CliRunner().invoke(cli.app, command, env={**env, "PAGLETS_API_KEY": "k3y"})
    assert result.exit_code == 0, result.output
    [(run_settings, options)] = ran
    assert run_settings.store_root == persistence / "artifacts"
    assert (options["bind"], options["api_key"], options["persistence_dir"]) == ("0.0.0.0", "k3y", persistence)


def test_dockerfile_installs_the_paglets_extra():
    assert 'pip install ".[paglets]"' in (ROOT / "Dockerfile").read_text()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian's package) is not installed")
@pytest.mark.parametrize(
    "files",
    [
        ["docker-compose.yml"],
        ["docker-compose.yml", "docker-compose.paglets.yml"],
        ["docker-compose.yml", "docker-compose.sentinel.yml"],
        ["docker-compose.yml", "docker-compose.paglets.yml", "docker-compose.sentinel.yml"],
    ],
)
def test_docker_compose_validates_the_files_as_compose_reads_them(files):
    """``docker-compose config`` needs no engine: it parses, interpolates, merges and checks
    the schema. Without the required keys it refuses; with them it accepts."""
    args = ["docker-compose", *(arg for name in files for arg in ("-f", str(ROOT / name))), "config"]
    env = {key: value for key, value in os.environ.items() if "API_KEY" not in key}
    refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "set an API key" in refused.stderr
    keyed = {**env, "PAGLETS_ARTIFACTS_API_KEY": "k1", "PAGLETS_API_KEY": "k2"}
    accepted = subprocess.run(args, env=keyed, capture_output=True, text=True, timeout=60)
    assert accepted.returncode == 0, accepted.stderr
    assert ("paglets-host" in accepted.stdout) == ("docker-compose.paglets.yml" in files)
    assert ("redis+sentinel://" in accepted.stdout) == ("docker-compose.sentinel.yml" in files)


def test_the_sentinel_compose_variant_points_every_client_at_three_sentinels_of_one_service():
    from paglets_artifacts.redis_client import parse_sentinel_url

    services = compose_merged("docker-compose.yml", "docker-compose.sentinel.yml")
    sentinels = sorted(name for name in services if name.startswith("sentinel-"))
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    assert "--replicaof" in services["redis-replica"]["command"]
    for name in ("redis", "redis-replica", *sentinels):
        assert services[name]["healthcheck"]["test"], name
    script = " ".join(services["sentinel-1"]["command"])
    monitored = re.search(r"sentinel monitor (\S+) redis 6379 2", script)
    assert monitored and "--sentinel" in script
    for name in ("worker", "scheduler", "host"):
        url = parse_sentinel_url(interpolate(services[name]["environment"]["REDIS_URL"]))
        assert [host for host, _port in url.sentinels] == sentinels, name
        assert {port for _host, port in url.sentinels} == {26379} and url.service_name == monitored.group(1), name
        assert set(sentinels) <= set(services[name]["depends_on"]), name
