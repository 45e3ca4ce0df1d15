"""Retention rules, the legal hold, config precedence (flags > env > file > -A app), stats,
--max-runtime / --max-rate, progress and metrics, against results Celery wrote."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from conftest import age_rows, celery_app, cli, table_rows

from celery_archive import RunConfig, parse_duration, run

RULES = """
older_than = "30d"

[[rules]]
match = "reports.*"
action = "keep"

[[rules]]
name = "old failures"
match = "shop.*"
status = ["FAILURE"]
older_than = "90d"

[[rules]]
name = "fire and forget"
match = "mail.*"
older_than = "10d"
action = "delete"

[[rules]]
name = "big"
larger_than = "1KiB"

[hold]
task_ids = ["shop-2"]
names = ["billing.*"]
"""


def fill(url: str) -> dict[str, Any]:
    """Results of several task names, all 40 days old but `fresh-0` (1 day)."""
    app = celery_app(url)
    b = app.backend
    from celery.app.task import Context

    def store(tid: str, name: str, value: Any = "ok", status: str = "SUCCESS") -> None:
        b.store_result(tid, value, status, request=Context(id=tid, task=name, args=[], kwargs={}))

    for i in range(4):
        store(f"shop-{i}", "shop.checkout", {"n": i})
        store(f"report-{i}", "reports.monthly")
        store(f"billing-{i}", "billing.charge")
    store("shop-fail-0", "shop.charge", {"exc_type": "ValueError", "exc_message": ["x"], "exc_module": "builtins"}, "FAILURE")
    store("mail-0", "mail.send")
    store("mail-big", "mail.send", "x" * 5000)  # also big: the first rule that matches (delete) wins
    store("big-0", "shop.export", "y" * 5000)
    store("fresh-0", "shop.checkout")
    age_rows(url, 40, "task_id <> 'fresh-0'")
    age_rows(url, 1, "task_id = 'fresh-0'")
    return app


def test_rules_order_actions_and_the_legal_hold(sqlite_url: str, tmp_path: Path) -> None:
    fill(sqlite_url)
    config = tmp_path / "archive.toml"
    config.write_text(f'source = "{sqlite_url}"\nsink = "{tmp_path / "arch"}"\n' + RULES)
    proc = cli("rules", "check", "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    check = {r["rule"]: r for r in json.loads(proc.stdout)["rules"]}
    assert table_rows(sqlite_url).keys() >= {"mail-0", "report-0"}  # a check changes nothing

    proc = cli("run", "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    left = set(table_rows(sqlite_url))
    archived = {r["task_id"]: r["rule"] for r in ds.dataset(tmp_path / "arch" / "data", format="parquet", partitioning="hive")
                .to_table(columns=["task_id", "rule"]).to_pylist()}
    # keep: reports; not due under their rule (90d): the failure; held: shop-2 and billing.*; too young: fresh-0
    assert left == {"report-0", "report-1", "report-2", "report-3", "shop-fail-0", "shop-2", "billing-0", "billing-1",
                    "billing-2", "billing-3", "fresh-0"}
    # delete without archive: mail.*, the big one too (first match wins over "big")
    assert "mail-0" not in archived and "mail-big" not in archived and report["deleted_by_rules"] == 2
    from celery_archive.archive.audit import events
    from celery_archive.sinks import open_sink

    by_rule = [e for e in events(open_sink(str(tmp_path / "arch"))) if e.get("deleted_by_rules")]
    assert [(e["event"], e["run_id"], e["deleted_by_rules"]) for e in by_rule] == [("purge", report["run_id"], 2)]
    assert archived == {"shop-0": "default", "shop-1": "default", "shop-3": "default", "big-0": "big"}
    assert report["rules"]["hold"]["kept"] == 5 and report["rules"]["rule1:reports.*"]["kept"] == 4
    # rules check said the same beforehand
    assert check["default"]["would_archive"] == 3 and check["big"]["would_archive"] == 1
    assert check["fire and forget"]["would_delete"] == 2 and check["hold"]["would_keep"] == 5
    assert check["old failures"]["not_due"] == 1
    assert cli("verify", "--sink", str(tmp_path / "arch")).returncode == 0
    # the manifest records the rules' counts, and still validates against its schema
    import jsonschema

    from celery_archive.schemas import json_schema

    manifest = json.loads((tmp_path / "arch" / "manifests" / f"{report['run_id']}.json").read_text())
    jsonschema.Draft202012Validator(json_schema("manifest")).validate(manifest)
    assert manifest["rules"]["big"]["archived"] == 1 and manifest["rules"]["fire and forget"]["deleted"] == 2
    proc = cli("run", "--config", str(config), "--dry-run")
    assert proc.returncode == 2 and "rules check" in proc.stderr


def test_rules_on_redis(tmp_path: Path) -> None:
    """A delete rule and a keep rule on Redis: deleted keys are gone without an archive."""
    import redis

    url = "redis://127.0.0.1:6379/0"
    prefix = f"ca_rules_{tmp_path.name[-8:]}_"
    app = celery_app(url, result_backend_transport_options={"global_keyprefix": prefix})
    from celery.app.task import Context

    client = redis.Redis.from_url(url)
    try:
        for i in range(3):
            for name in ("mail.send", "shop.checkout", "reports.monthly"):
                tid = f"{name.split('.')[0]}-{i}"
                app.backend.store_result(tid, i, "SUCCESS", request=Context(id=tid, task=name, args=[], kwargs={}))
        client.pexpire(f"{prefix}celery-task-meta-shop-0", 20_000)  # Redis drops it in 20 s
        config = tmp_path / "r.toml"
        config.write_text(f'source = "{url}"\nsink = "{tmp_path / "arch"}"\nolder_than = "0s"\nkey_prefix = "{prefix}"\n'
                          'expiring_within = "1m"\n'
                          '[[rules]]\nmatch = "mail.*"\naction = "delete"\nolder_than = "0s"\n'
                          '[[rules]]\nmatch = "reports.*"\naction = "keep"\n'
                          '[[rules]]\nmatch = "shop.*"\nolder_than = "30d"\n')
        proc = cli("run", "--config", str(config), "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["deleted"] == 1 and report["deleted_by_rules"] == 3
        left = sorted(k.decode().removeprefix(prefix + "celery-task-meta-") for k in client.scan_iter(f"{prefix}*"))
        assert left == ["reports-0", "reports-1", "reports-2", "shop-1", "shop-2"]  # shop.* not due for 30 days
        archived = ds.dataset(tmp_path / "arch" / "data", format="parquet", partitioning="hive").to_table(columns=["task_id"])
        assert archived["task_id"].to_pylist() == ["shop-0"]  # not due by its rule, but about to expire
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_bad_rules_are_named(sqlite_url: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    for text, message in [
        ('[[rules]]\nmatch = "a.*"\naction = "shred"\n', "action 'shred': use archive, delete or keep"),
        ('[[rules]]\nmatch = "a.*"\nolder = "3d"\n', "unknown key(s) older"),
        ('[hold]\nids = ["x"]\n', "[hold]: unknown key(s) ids"),
        ('sinkk = "x"\n', "unknown key(s) sinkk"),
        ('older_than = \n', "is not valid TOML"),
    ]:
        config.write_text(f'source = "{sqlite_url}"\nsink = "{tmp_path}/a"\nolder_than = "1d"\n' + text if "older_than =" not in text
                          else text)
        proc = cli("rules", "check", "--config", str(config))
        assert proc.returncode == 2 and message in proc.stderr, (text, proc.stderr)


def _cutoff_age(proc: Any) -> dt.timedelta:
    assert proc.returncode == 0, proc.stderr
    cutoff = dt.datetime.fromisoformat(json.loads(proc.stdout)["cutoff"].replace("Z", "+00:00"))
    return dt.datetime.now(dt.timezone.utc) - cutoff


def test_flags_override_env_override_file_override_app(sqlite_url: str, tmp_path: Path) -> None:
    celery_app(sqlite_url).backend.store_result("x", 1, "SUCCESS")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "__init__.py").write_text("")
    (tmp_path / "proj" / "celery.py").write_text(textwrap.dedent(f"""
        from datetime import timedelta
        from celery import Celery
        app = Celery("proj", backend="{sqlite_url}")
        app.conf.result_expires = timedelta(days=45)
        app.conf.result_serializer = "json"
    """))
    config = tmp_path / "archive.toml"
    config.write_text(f'sink = "{tmp_path / "arch"}"\nolder_than = "20d"\n')

    def dry(*args: str, env: dict[str, str] | None = None) -> dt.timedelta:
        return _cutoff_age(cli("-A", "proj.celery", "run", "--dry-run", "--json", *args, env=env, cwd=tmp_path))

    def near(age: dt.timedelta, days: int) -> bool:
        return abs(age - dt.timedelta(days=days)) < dt.timedelta(minutes=5)

    assert near(dry("--sink", str(tmp_path / "a")), 45)  # the app's result_expires
    assert near(dry("--config", str(config)), 20)  # the file over the app
    assert near(dry("--config", str(config), env={"CELERY_ARCHIVE_OLDER_THAN": "12d"}), 12)  # env over the file
    assert near(dry("--config", str(config), "--older-than", "5d", env={"CELERY_ARCHIVE_OLDER_THAN": "12d"}), 5)  # flag over all
    proc = cli("-A", "proj.celery", "run", "--dry-run", "--json", "--sink", "x", cwd=tmp_path)
    assert json.loads(proc.stdout)["source"] == sqlite_url  # the source came from the app
    proc = cli("run", "--dry-run", "--sink", "x", "--older-than", "1d", cwd=tmp_path, env={"CELERY_ARCHIVE_SOURCE": ""})
    assert proc.returncode == 2 and "no --source" in proc.stderr and "CELERY_ARCHIVE_SOURCE" in proc.stderr
    assert cli("-A", "proj.celery", "run", "--sink", str(tmp_path / "arch"), cwd=tmp_path).returncode == 0
    proc = cli("runs", "--json", env={"CELERY_ARCHIVE_SINK": str(tmp_path / "arch")})  # every command's --sink
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["runs"]) == 1
    proc = cli("-A", "nothere.celery", "run", "--dry-run", "--sink", "x", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot load the Celery app 'nothere.celery'" in proc.stderr


def test_django_app_gives_a_django_source(tmp_path: Path) -> None:
    """-A with a Celery app configured from Django settings (result_backend = "django-db")."""
    from test_django_results import django

    db = tmp_path / "django.db"
    django(f"sqlite:///{db}", "migrate")
    django(f"sqlite:///{db}", "write")
    django(f"sqlite:///{db}", "age", "40")
    (tmp_path / "site_celery.py").write_text(textwrap.dedent("""
        import os, sys
        sys.path.insert(0, os.environ["CA_TESTS"])
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoproj.settings")
        import django
        django.setup()
        from celery import Celery
        app = Celery("site")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.conf.result_backend = "django-db"
    """))
    from conftest import ROOT

    env = {"CA_TESTS": str(ROOT / "tests"), "CA_DJANGO_DB": f"sqlite:///{db}"}
    proc = cli("-A", "site_celery", "run", "--sink", str(tmp_path / "arch"), "--older-than", "30d", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["source"] == f"django+sqlite:///{db}" and report["deleted"] == 11


def test_stats_figures_and_warn_above(pg_backend: str) -> None:
    url = pg_backend
    fill(url)
    app = celery_app(url)
    from celery.app.task import Context

    app.backend.store_result("running-0", None, "STARTED", request=Context(id="running-0", task="shop.slow"))
    proc = cli("stats", "--source", url, "--older-than", "30d", "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    rows = table_rows(url)
    assert st["results"] == len(rows) == 18
    assert st["by_status"] == {"SUCCESS": 16, "FAILURE": 1, "STARTED": 1}
    assert st["by_name"]["shop.checkout"] == 5 and st["by_name"]["mail.send"] == 2
    assert st["by_age"] == {"(no date)": 1, "1-7d": 1, "30-90d": 16}  # a STARTED result has no date_done
    assert st["past_retention"] == 16 and st["bytes"] > 10_000
    oldest = min(r["date_done"] for r in rows.values() if r["date_done"])
    assert st["oldest"] == oldest.date().isoformat()
    proc = cli("stats", "--source", url, "--older-than", "30d", "--warn-above", "17")
    assert proc.returncode == 7 and "above --warn-above 17" in proc.stderr
    assert cli("stats", "--source", url, "--older-than", "30d", "--warn-above", "18").returncode == 0


def test_stats_on_redis_counts_keys_without_ttl(tmp_path: Path) -> None:
    import redis

    url = "redis://127.0.0.1:6379/0"
    prefix = f"ca_stats_{tmp_path.name[-8:]}_"
    app = celery_app(url, result_backend_transport_options={"global_keyprefix": prefix})
    try:
        for i in range(3):
            app.backend.store_result(f"r{i}", i, "SUCCESS")
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{prefix}*"):
            if key.endswith(b"r0"):
                client.persist(key)
        proc = cli("stats", "--source", url, "--key-prefix", prefix, "--older-than", "1d", "--json")
        assert proc.returncode == 0, proc.stderr
        st = json.loads(proc.stdout)
        assert st["results"] == 3 and st["no_ttl"] == 1 and st["past_retention"] == 0
    finally:
        for key in redis.Redis.from_url(url).scan_iter(f"{prefix}*"):
            redis.Redis.from_url(url).delete(key)


def test_max_runtime_stops_at_a_batch_boundary_and_the_next_run_goes_on(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    for i in range(60):
        app.backend.store_result(f"t{i:02d}", i, "SUCCESS")
    age_rows(sqlite_url, 40)
    seen: list[int] = []
    cfg = RunConfig(source=sqlite_url, sink=str(tmp_path / "arch"), older_than=parse_duration("30d"), batch_size=5,
                    max_rate=20, max_runtime=dt.timedelta(seconds=1), metrics_file=tmp_path / "metrics" / "ca.prom")
    report = run(cfg, progress=seen.append)
    assert report.stopped_early and 0 < report.selected < 60 and report.selected % 5 == 0
    assert report.deleted == report.verified == report.selected  # what was taken is finished, nothing half-done
    assert seen == list(range(5, report.selected + 1, 5))  # progress after every batch
    assert len(table_rows(sqlite_url)) == 60 - report.selected
    metrics = (tmp_path / "metrics" / "ca.prom").read_text()
    assert f'celery_archive_run_deleted{{sink="{tmp_path / "arch"}"}} {report.deleted}' in metrics
    assert "celery_archive_run_stopped_early" in metrics and "# TYPE celery_archive_run_selected gauge" in metrics
    # --max-rate held: 20 results/s
    assert report.seconds >= (report.selected - 5) / 20
    second = run(RunConfig(source=sqlite_url, sink=str(tmp_path / "arch"), older_than=parse_duration("30d")))
    assert not second.stopped_early and second.deleted == 60 - report.selected and table_rows(sqlite_url) == {}


@pytest.mark.parametrize("args,message", [(["--max-rate", "0"], "--max-rate"), (["--max-runtime", "soon"], "invalid duration")])
def test_bad_limits_are_named(sqlite_url: str, tmp_path: Path, args: list[str], message: str) -> None:
    proc = cli("run", "--source", sqlite_url, "--sink", str(tmp_path), "--older-than", "1d", *args)
    assert proc.returncode == 2 and message in proc.stderr


def test_progress_lines_on_stderr_when_not_a_terminal(sqlite_url: str, tmp_path: Path) -> None:
    app = celery_app(sqlite_url)
    for i in range(60):  # 1.5 s at --max-rate 40: several progress lines even on a busy machine (30 gave one, once)
        app.backend.store_result(f"p{i}", i, "SUCCESS")
    age_rows(sqlite_url, 40)
    proc = cli("run", "--source", sqlite_url, "--sink", str(tmp_path / "a"), "--older-than", "30d", "--batch-size", "5",
               "--max-rate", "40", "--json", env={"CELERY_ARCHIVE_PROGRESS_EVERY": "0.2"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "results taken" in line]
    assert len(lines) >= 2 and lines[-1].startswith("celery-archive: ") and json.loads(proc.stdout)["deleted"] == 60


def test_app_table_names_and_redis_options_come_from_the_app(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "tabled.py").write_text(textwrap.dedent(f"""
        from celery import Celery
        app = Celery("tabled", backend="{sqlite_url}")
        app.conf.update(database_table_names={{"task": "my_tasks", "group": "my_groups"}}, result_extended=True,
                        result_expires=3600 * 24 * 30)
    """))
    from celery import Celery

    app = Celery("tabled", backend=sqlite_url, set_as_current=False)
    app.conf.update(database_table_names={"task": "my_tasks", "group": "my_groups"}, result_extended=True)
    for i in range(4):
        app.backend.store_result(f"m{i}", i, "SUCCESS")
    age_rows(sqlite_url, 40, table="my_tasks")
    proc = cli("-A", "tabled", "run", "--sink", str(tmp_path / "a"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted"] == 4 and table_rows(sqlite_url, "my_tasks") == {}

    from celery_archive.settings import from_app

    redis_app = Celery("r", backend="redis://127.0.0.1:6379/3", set_as_current=False)
    redis_app.conf.update(result_backend_transport_options={"global_keyprefix": "prod_", "master_name": "mymaster"},
                          result_serializer="msgpack", result_expires=7200)
    assert from_app(redis_app) == {"source": "redis://127.0.0.1:6379/3", "result_expires": "2h", "older_than": "2h",
                                   "key_prefix": "prod_", "master_name": "mymaster", "serializer": "msgpack",
                                   "timezone": "UTC"}  # app.now()'s zone: UTC, as enable_utc and no timezone give
