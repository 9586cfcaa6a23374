"""The ``runstream`` command.

Server commands need ``pip install 'runstream[server]'``; their modules are
imported only when the command runs, so the SDK's install stays light.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runstream.settings import Settings

if TYPE_CHECKING:  # the server extra; the SDK's install may not have it
    from clickhouse_connect.driver.client import Client

SERVER_EXTRA_HINT = "this command needs the server parts: pip install 'runstream[server]'"


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from runstream.storage.client import connect, database_of, redact
    from runstream.storage.cluster import Cluster, settings_missing
    from runstream.storage.migrations import MigrationError, cluster_schema, migrate_cluster, migrate_once

    dsns = args.dsn or [settings.clickhouse_dsn]
    if args.cluster is None and (len(dsns) > 1 or args.no_replication or args.print_sql):
        print("error: several --dsn, --no-replication and --print-sql go with --cluster", file=sys.stderr)
        return 2
    try:
        if args.cluster is None:
            applied = [migrate_once(connect(dsns[0]))]
        else:
            cluster = Cluster(args.cluster, replicated=not args.no_replication)
            if args.print_sql:  # for review, or to apply by hand; no server needed
                print("".join(f"{s};\n\n" for s in cluster_schema(cluster, database_of(dsns[0]))), end="")
                return 0
            clients = [connect(dsn) for dsn in dsns]
            applied = migrate_cluster(clients, cluster)
            for dsn, client in zip(dsns, clients):
                for setting in settings_missing(client, cluster):
                    print(f"warning: {redact(dsn)}: set {setting} in the servers' default profile", file=sys.stderr)
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for dsn, done in zip(dsns, applied):
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in done) or "none (the schema is up to date)"
        print(f"{redact(dsn)}: applied {names}")
    return 0


def _topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from runstream.streams.topics import ALL_TOPICS, count_brokers, create_topics, plan_replication, with_partitions

    bootstrap = args.bootstrap or settings.kafka
    if not bootstrap:
        print("error: no Kafka to talk to: pass --bootstrap host:port or set RUNSTREAM_KAFKA", file=sys.stderr)
        return 2
    topics = with_partitions(ALL_TOPICS, args.partitions)
    # Checked against the brokers up now, before anything is created (ValueError: main prints it).
    replication = plan_replication(
        asyncio.run(count_brokers(bootstrap)), args.replication_factor, args.min_insync_replicas
    )
    for warning in replication.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    created = asyncio.run(create_topics(bootstrap, topics, replication))
    for topic in topics:
        status = (
            f"created: {topic.partitions} partitions, replication factor {replication.factor}, "
            f"min.insync.replicas {replication.min_insync}"
            if topic.name in created
            else "exists: kept as it is"
        )
        print(f"{topic.name:28} {status}")
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.kafka:
        print("error: a worker consumes Kafka: set RUNSTREAM_KAFKA=host:port", file=sys.stderr)
        return 2
    from runstream.streams.app import create_app

    app = create_app(settings)
    # Faust's own worker command (signal handling, rebalancing, graceful shutdown) reads sys.argv.
    sys.argv = ["runstream", "worker", "--loglevel", args.loglevel, "--without-web"]
    app.main()
    return 0


def _api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from runstream.api.app import create_app

    # This API's own access log (with request ids, without query strings, which may hold a share token)
    # replaces uvicorn's.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings), host=args.host or settings.host, port=args.port or settings.port, access_log=False
    )
    return 0


def _sync(args: argparse.Namespace, settings: Settings) -> int:
    from runstream.sync import all_run_dirs, find_run_dirs, sync

    paths = args.paths or (["."] if not args.all else [])
    run_dirs = all_run_dirs(paths) if args.all else list(find_run_dirs(paths))
    if args.all:  # only the runs with something to send; a running one sends its own
        from runstream.spool import inspect

        running = [d for d in run_dirs if inspect(d / "spool", quick=True).live]
        for run_dir in running:
            print(f"{run_dir}: running (its process sends it)")
        run_dirs = [d for d in run_dirs if d not in running and _has_unsent(d, args.quarantined)]
    results = []
    for run_dir in run_dirs:  # each run's own server's key, unless --api-key says
        api_key = args.api_key
        if api_key is None:
            api_key = settings.key_for(args.url or _run_url(run_dir) or settings.url)
        results += sync(
            [],
            url=args.url,
            api_key=api_key,
            progress=not args.quiet,
            files_url=args.files_url or settings.files_url,
            quarantined_too=args.quarantined,
            run_dirs=[run_dir],
        )
    if not results:
        if args.all:
            print("nothing unsent on this machine")
            return 0
        print(f"no runs found in {', '.join(paths)}", file=sys.stderr)
        return 1
    failed = 0
    for result in results:
        notes = []
        if result.quarantined:
            notes.append(
                f"{result.quarantined} refused for good, set aside in {Path(result.run_dir) / 'quarantine'} "
                "(runstream sync --quarantined retries them)"
            )
        if result.damaged_bytes:
            notes.append(f"{result.damaged_bytes} damaged bytes of the spool skipped (not whole records)")
        if args.quarantined:
            notes.append(f"{result.retried} quarantined events sent")
            notes += [f"still refused: {r}" for r in result.still_refused]
        tail = f" ({'; '.join(notes)})" if notes else ""
        if result.skipped:
            failed += 1
            print(f"{result.run_dir}: skipped: {result.skipped}{tail}", file=sys.stderr)
        else:
            print(f"{result.run_dir}: sent {result.sent} events{tail}")
    return 1 if failed else 0


def _has_unsent(run_dir: Path, quarantined_too: bool) -> bool:
    from runstream.spool import QUARANTINE_DIR, inspect, quarantined

    pending = inspect(run_dir / "spool", quick=True).events  # whether, not how many
    return bool(pending or (quarantined_too and quarantined(run_dir / QUARANTINE_DIR)))


def _run_url(run_dir: Path) -> str:
    """The URL a run logged to, from its run.json ("" when unknown)."""
    from runstream.resume import RECORD_FILE, read_json

    return str(read_json(run_dir / RECORD_FILE).get("url") or "")


def _unsent(args: argparse.Namespace) -> list[str]:
    """`runstream status`: this machine's runs with something unsent or quarantined, one line each."""
    from runstream.spool import QUARANTINE_DIR, inspect, quarantined
    from runstream.sync import all_run_dirs

    lines = []
    for run_dir in all_run_dirs():
        pending = inspect(run_dir / "spool")
        batches = quarantined(run_dir / QUARANTINE_DIR)
        if not pending.events and not batches:
            continue
        what = []
        if pending.events:
            what.append(f"{pending.events} events ({_size(pending.bytes)}) unsent")
        if batches:
            events = sum(int(meta.get("events") or 0) for _, meta in batches)
            what.append(
                f"{len(batches)} quarantined batches ({events} events: {batches[-1][1].get('reason', '')[:120]})"
            )
        if pending.live:
            what.append("running")
        lines.append(f"  {run_dir}  {', '.join(what)}")
    return lines


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _accounts_client(args: argparse.Namespace, settings: Settings) -> Client:
    """A migrated client: ``keys`` may be the first thing run against a fresh database."""
    from runstream.storage.client import connect, redact
    from runstream.storage.migrations import migrate_once

    dsn = args.dsn or settings.clickhouse_dsn
    try:
        client = connect(dsn)
    except ValueError:
        raise  # a malformed DSN: its message says what to write
    except Exception as exc:  # noqa: BLE001 - the engine's reason, with what to do
        hint = (
            (
                "; the embedded engine opens a directory from one process only: while `runstream server` runs on it, "
                "manage keys through its API from this machine (POST /api/v1/teams/TEAM/keys needs no key on "
                "loopback), or stop the server first"
            )
            if dsn.startswith("chdb:")
            else ""
        )
        raise ValueError(f"cannot open the database {redact(dsn)} ({type(exc).__name__}: {exc}){hint}") from None
    migrate_once(client)
    return client


def _told_to_api(settings: Settings, client: Client) -> Callable[[], None]:
    """Collect the member and key changes written through ``client``; the returned function sends them
    to the API replicas (cluster mode: the accounts topic, ``api/keyring.py``), so a revoked key stops
    working on every replica at once rather than at their next reload from ClickHouse (within a minute)."""
    from runstream.storage import accounts

    changes: list[dict] = []
    stop = accounts.listen(client, changes.append)

    def send() -> None:
        stop()
        if not settings.kafka or not changes:
            return
        from runstream.api.keyring import publish_changes

        try:
            asyncio.run(publish_changes(settings.kafka, changes))
        except Exception as exc:  # noqa: BLE001 - the change is stored; replicas pick it up when they reload
            print(
                f"warning: could not tell the API replicas through Kafka ({type(exc).__name__}: {exc}); "
                "they apply the change when they next reload keys, within a minute",
                file=sys.stderr,
            )

    return send


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    client = _accounts_client(args, settings)
    told = _told_to_api(settings, client)
    try:
        return _create_key(args, client)
    finally:
        told()


def _create_key(args: argparse.Namespace, client: Client) -> int:
    from runstream.storage import accounts, audit

    accounts.check_name("team", args.team)
    accounts.check_user(args.user)
    actor = audit.cli_actor()  # the CLI's changes are in the team's audit log as the API's are
    new_team = accounts.ensure_team(client, args.team)
    if new_team:
        audit.record(client, args.team, "team.create", actor, args.team)
    current = accounts.member_role(client, args.team, args.user)
    # The first member of a new team administers it; an existing member keeps their role unless --role says.
    role: accounts.Role = args.role or (current["role"] if current else "admin" if new_team else "member")
    if current is None or current["role"] != role:
        try:
            accounts.set_member(client, args.team, args.user, role)
        except accounts.LastAdminError as exc:
            print(f"error: {exc} (runstream keys create --team {args.team} --user OTHER --role admin)", file=sys.stderr)
            return 1
        change = {"role": role} if current is None else {"from": current["role"], "to": role}
        audit.record(client, args.team, "member.add" if current is None else "member.role", actor, args.user, change)
    key_id, key = accounts.create_key(client, args.team, args.user, args.name or "", args.scope)
    audit.record(
        client,
        args.team,
        "key.create",
        actor,
        key_id,
        {"user": args.user, "name": args.name or "", "scope": args.scope},
    )
    if new_team:
        print(f"created team {args.team}")
    print(f"created key {key_id} of scope {args.scope} for {args.user} ({role} of team {args.team}):")
    print(f"  {key}")
    print("This is the only time the key is shown. Set it where the SDK or runstream.Api runs:")
    print(f"  export RUNSTREAM_API_KEY={key}")
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    import datetime

    from runstream.storage import accounts

    client = _accounts_client(args, settings)
    if accounts.get_team(client, args.team) is None:
        print(
            f"error: there is no team {args.team!r}; create it with `runstream keys create --team {args.team} "
            "--user USER`",
            file=sys.stderr,
        )
        return 1
    roles = {m["user"]: m["role"] for m in accounts.list_members(client, args.team)}

    def when(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    keys = accounts.list_keys(client, args.team)
    print(f"{'KEY_ID':14}{'USER':24}{'ROLE':9}{'SCOPE':8}{'CREATED':22}{'REVOKED':22}NAME")
    for k in keys:
        role = roles.get(k["user"], "-")
        created, revoked = when(k["created_at"]), when(k["revoked_at"])
        print(f"{k['key_id']:14}{k['user']:24}{role:9}{k['scope']:8}{created:22}{revoked:22}{k['name']}")
    if not keys:
        print(f"(team {args.team} has no keys)")
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    client = _accounts_client(args, settings)
    told = _told_to_api(settings, client)
    try:
        return _revoke_key(args, client)
    finally:
        told()


def _revoke_key(args: argparse.Namespace, client: Client) -> int:
    from runstream.storage import accounts, audit

    key = accounts.get_key(client, args.key_id)
    if key is None:
        print(
            f"error: there is no key {args.key_id!r}; `runstream keys list --team T` shows a team's keys",
            file=sys.stderr,
        )
        return 1
    if not accounts.revoke_key(client, args.key_id):
        print(f"key {args.key_id} of {key['user']} (team {key['team']}) was already revoked")
        return 0
    audit.record(client, key["team"], "key.revoke", audit.cli_actor(), args.key_id, {"user": key["user"]})
    print(f"revoked key {args.key_id} of {key['user']} (team {key['team']}); it no longer works")
    return 0


def _server(args: argparse.Namespace, settings: Settings) -> int:
    from runstream.api.server import ServerError, embedded_settings, serve

    try:
        serve(embedded_settings(settings, args.data_dir, args.host, args.port), demo=args.demo)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from runstream.demo import main

    argv = ["--project", args.project, "--team", args.team] + (["--url", args.url] if args.url else [])
    return main(argv + (["--quiet"] if args.quiet else []))


def _login(args: argparse.Namespace, settings: Settings) -> int:
    from runstream.public_api import Api, ApiError
    from runstream.settings import config_path, write_config

    url = args.url or settings.url
    key = args.key if args.key is not None else getpass.getpass("API key (empty for none): ").strip()
    try:
        me = Api(url=url, api_key=key)._request("GET", "/whoami")
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    path = config_path()
    write_config(path, {"url": url, "api_key": key})
    who = (
        "local admin (no key needed on this machine)"
        if me.get("local_admin")
        else f"{me.get('user')} ({me.get('role')} of team {me.get('team')})"
        if me.get("user")
        else "anonymous"
    )
    print(f"logged in to {url} as {who}; saved to {path}")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from runstream.public_api import Api, ApiError
    from runstream.settings import config_path

    print(f"server:  {settings.url}")
    key = settings.key_for(settings.url)
    print(f"key:     {'set' if key else 'none'}   (config file: {config_path()})")
    unsent = _unsent(args)
    if unsent:
        print(f"unsent on this machine ({len(unsent)} runs; `runstream sync --all` sends them):")
        print("\n".join(unsent))
    else:
        print("unsent:  nothing (every run on this machine was delivered)")
    sys.stdout.flush()
    try:
        api = Api(url=settings.url, api_key=key)
        health = api._request("GET", "/health")
        me = api._request("GET", "/whoami")
        projects = api.projects()
    except ApiError as exc:
        print(f"status:  unreachable or refused: {exc.message}", file=sys.stderr)
        return 1
    checks = ", ".join(f"{name} {state}" for name, state in health["checks"].items())
    print(f"health:  {health['status']} ({checks})")
    who = "local admin" if me.get("local_admin") else me.get("user") or "anonymous"
    print(f"as:      {who}" + (f" ({me['role']} of team {me['team']})" if me.get("team") else ""))
    print(f"projects ({len(projects)}):")
    for project in projects:
        print(f"  {project.entity}/{project.name}  {project.run_count} runs  {project.visibility}")
    return 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from runstream.public_api import Api, ApiError

    filters = None
    if args.filters:
        try:
            filters = orjson.loads(args.filters)
        except orjson.JSONDecodeError as exc:
            print(f'error: --filters must be JSON, e.g. \'{{"config.lr": {{"$lt": 0.01}}}}\' ({exc})', file=sys.stderr)
            return 2
    url = args.url or settings.url
    api = Api(url=url, api_key=settings.key_for(url))
    try:
        written = api.export(
            args.project,
            args.output,
            runs=args.runs or None,
            filters=filters,
            metrics=args.metrics or None,
            format=args.format,
            progress=not args.quiet,
        )
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}" + (f" ({written:,} bytes)" if isinstance(written, int) else ""))
    return 0


def _sweep(args: argparse.Namespace, settings: Settings) -> int:
    from runstream.public_api import ApiError
    from runstream.sweep_config import SweepConfigError
    from runstream.sweeps import create, set_state

    try:
        if args.state:  # steer an existing sweep: TARGET is its path
            changed = set_state(args.target, args.state, project=args.project, entity=args.entity)
            print(f"sweep {args.target} is {changed.get('state', args.state)}")
            return 0
        path = create(args.target, project=args.project, entity=args.entity, name=args.name)
    except SweepConfigError as exc:
        print(f"error: {args.target} is not a valid sweep configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        print("fix these and run `runstream sweep` again (docs/sweeps.md lists the keys)", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"created sweep {path}")
    print("start an agent on each machine that should train (in the program's directory):")
    print(f"  runstream agent {path}")
    return 0


def _agent(args: argparse.Namespace, settings: Settings) -> int:
    from runstream.public_api import ApiError
    from runstream.sweep_config import SweepConfigError
    from runstream.sweeps import agent

    try:
        agent(args.sweep, count=args.count, project=args.project, entity=args.entity)
    except KeyboardInterrupt:
        print("runstream agent: interrupted; its run (if one was going) was ended", file=sys.stderr)
        return 130
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except SweepConfigError as exc:  # a sweep the server took, that this SDK cannot run
        print(f"error: the sweep's configuration cannot be run here: {'; '.join(exc.problems)}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runstream", description="runstream: a self-hostable ML experiment tracker")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("sync", help="send what runs left in their spools (offline runs, crashes, outages)")
    p.add_argument(
        "paths", nargs="*", help="run directories, or folders holding runstream-runs/ (default: ., or none with --all)"
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="every run on this machine with something unsent (the registry of unsent runs, ./runstream-runs, "
        "RUNSTREAM_DIR), besides PATHS",
    )
    p.add_argument(
        "--quarantined",
        action="store_true",
        help="also send again the batches the server refused for good (after a server upgrade, say); "
        "what goes through leaves the quarantine",
    )
    p.add_argument("--api-key", help="the API key to send with (default: each run's server's key from the settings)")
    p.add_argument("--url", help="where to send: http(s)://server or kafka://host:port (default: each run's own URL)")
    p.add_argument(
        "--files-url", help="where blobs go, http(s)://server (default: each run's own, or --url when it is http)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_sync)

    p = commands.add_parser("migrate", help="apply the ClickHouse schema migrations")
    p.add_argument(
        "--dsn",
        action="append",
        help="ClickHouse DSN (default: RUNSTREAM_CLICKHOUSE_DSN); with --no-replication, once per node",
    )
    p.add_argument(
        "--cluster",
        metavar="NAME",
        help="lay the schema out on this cluster of the servers' remote_servers: Replicated tables ON CLUSTER, "
        "Distributed tables sharded by run (docs/storage.md)",
    )
    p.add_argument(
        "--no-replication",
        action="store_true",
        help="with --cluster, for servers without Keeper: plain tables, no ON CLUSTER, so give every node's --dsn",
    )
    p.add_argument("--print-sql", action="store_true", help="with --cluster: print the statements, apply nothing")
    p.set_defaults(run=_migrate)

    topics = commands.add_parser("topics", help="manage the pipeline's Kafka topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    p = topic_commands.add_parser("create", help="create the topics the pipeline needs (existing ones are kept)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: RUNSTREAM_KAFKA)")
    p.add_argument(
        "--replication-factor", type=int, help="copies of each partition (default: 3, or the brokers up if fewer)"
    )
    p.add_argument(
        "--min-insync-replicas",
        type=int,
        help="copies a record needs before it is acknowledged (default: a majority from 3 copies on, else 1)",
    )
    p.add_argument("--partitions", type=int, help="partitions of each run-keyed topic (default: the event contract's)")
    p.set_defaults(run=_topics_create)

    p = commands.add_parser("worker", help="run a stream-processing worker (Faust); start several to scale out")
    p.add_argument("--loglevel", default="info", choices=["crit", "error", "warn", "info", "debug"])
    p.set_defaults(run=_worker)

    p = commands.add_parser("api", help="serve the HTTP API (cluster mode: against Kafka and a ClickHouse server)")
    p.add_argument("--host", help="bind address (default: RUNSTREAM_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: RUNSTREAM_PORT or 8080)")
    p.set_defaults(run=_api)

    keys = commands.add_parser("keys", help="manage teams' API keys on the server (talks to ClickHouse directly)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = key_commands.add_parser("create", help="create a key for a user (and the team and member if missing)")
    p.add_argument("--team", required=True, help="the team (created if missing)")
    p.add_argument("--user", required=True, help="the member the key speaks for (added if missing)")
    p.add_argument(
        "--role",
        choices=["viewer", "member", "admin"],
        help="the member's role (default: admin in a new team, member in an existing one; "
        "an existing member keeps theirs)",
    )
    p.add_argument("--name", default="", help="a label for the key, e.g. where it is used")
    p.add_argument(
        "--scope",
        choices=["ingest", "read", "admin"],
        default="admin",
        help="what the key may do at most (its member's role still caps it): ingest writes runs and files "
        "only (for training jobs), read only reads, admin all the role allows (default)",
    )
    p.add_argument("--dsn", help="ClickHouse DSN (default: RUNSTREAM_CLICKHOUSE_DSN)")
    p.set_defaults(run=_keys_create)
    p = key_commands.add_parser("list", help="list a team's keys (never their secrets)")
    p.add_argument("--team", required=True)
    p.add_argument("--dsn", help="ClickHouse DSN (default: RUNSTREAM_CLICKHOUSE_DSN)")
    p.set_defaults(run=_keys_list)
    p = key_commands.add_parser("revoke", help="revoke a key; it stops working at once")
    p.add_argument("key_id", help="the key's id (the part after rs_, as `keys list` shows it)")
    p.add_argument("--dsn", help="ClickHouse DSN (default: RUNSTREAM_CLICKHOUSE_DSN)")
    p.set_defaults(run=_keys_revoke)
    p = commands.add_parser("server", help="run the tracker on this machine: API, web UI and processing in one process")
    p.add_argument("--data-dir", help="where the database and files live (default: RUNSTREAM_DATA_DIR or ~/.runstream)")
    p.add_argument("--host", help="bind address (default: RUNSTREAM_HOST or 127.0.0.1; others need an API key)")
    p.add_argument("--port", type=int, help="port (default: RUNSTREAM_PORT or 8080)")
    p.add_argument("--demo", action="store_true", help="also log the demo sweep into it once it is up")
    p.set_defaults(run=_server)

    p = commands.add_parser("demo", help="log a realistic sweep of 24 runs to the server, through the SDK")
    p.add_argument("--url", help="the server (default: RUNSTREAM_URL, the config file, or http://127.0.0.1:8080)")
    p.add_argument("--project", default="demo")
    p.add_argument("--team", default="default")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_demo)

    p = commands.add_parser("login", help="check a server URL and API key, and save them for the SDK and the CLI")
    p.add_argument("--url", help="the server's http(s):// address (default: RUNSTREAM_URL or the saved one)")
    p.add_argument("--key", help="the API key (asked for when not given; empty for none)")
    p.set_defaults(run=_login)

    p = commands.add_parser(
        "status", help="which server the SDK talks to, its health, who you are there, and what this machine has unsent"
    )
    p.set_defaults(run=_status)

    p = commands.add_parser("export", help="download a project's metric history as Parquet, Arrow or CSV")
    p.add_argument("project", help="team/project")
    p.add_argument("output", help="the file to write")
    p.add_argument("--format", choices=["parquet", "arrow", "csv"], default="parquet")
    p.add_argument("--runs", nargs="*", help="run ids (default: every run matching --filters)")
    p.add_argument("--filters", help='a run filter as JSON, e.g. \'{"config.lr": {"$lt": 0.01}}\'')
    p.add_argument("--metrics", nargs="*", help="metric names (default: all)")
    p.add_argument("--url", help="the server (default: RUNSTREAM_URL or the saved one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_export)

    p = commands.add_parser(
        "sweep",
        help="create a hyperparameter sweep from a W&B-style YAML file, or pause, resume, stop or cancel one",
    )
    p.add_argument(
        "target", metavar="CONFIG_OR_SWEEP", help="the sweep's YAML/JSON file; with a state flag, team/project/id"
    )
    p.add_argument("--project", help="the project (default: the file's `project`, RUNSTREAM_PROJECT, or uncategorized)")
    p.add_argument("--entity", help="the team (default: the file's `entity`, RUNSTREAM_ENTITY, or default)")
    p.add_argument("--name", help="the sweep's name (default: the file's `name`)")
    states = p.add_mutually_exclusive_group()
    for flag, state, what in (
        ("--pause", "paused", "agents wait, running runs go on"),
        ("--resume", "running", "a paused or stopped sweep hands out runs again"),
        ("--stop", "stopped", "no new runs; running ones finish"),
        ("--cancel", "canceled", "no new runs; running ones are told to stop"),
    ):
        states.add_argument(flag, dest="state", action="store_const", const=state, help=what)
    p.set_defaults(run=_sweep, state=None)

    p = commands.add_parser("agent", help="run a sweep's suggestions here, one run at a time (start one per machine)")
    p.add_argument("sweep", metavar="SWEEP", help="team/project/id, as `runstream sweep` printed it")
    p.add_argument("--count", type=int, help="the most runs this agent runs (default: until the sweep is done)")
    p.add_argument("--project", help="the project, when SWEEP is a bare id (default: RUNSTREAM_PROJECT)")
    p.add_argument("--entity", help="the team, when SWEEP names none (default: RUNSTREAM_ENTITY, or default)")
    p.set_defaults(run=_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace, Settings], int] = args.run
    try:
        return run(args, Settings.from_env())
    except ModuleNotFoundError as exc:
        print(f"error: {exc}; {SERVER_EXTRA_HINT}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad settings or DSN: the message says what to fix
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
