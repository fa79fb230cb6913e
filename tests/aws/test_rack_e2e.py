"""End to end on moto: `convox rack install aws`, `convox rack start --provider aws --stack NAME`, the everyday
commands through the CLI logged in to that rack, `convox rack uninstall`, and nothing left in the account.

Simulated (each piece a test double under tests/, never imported by the product):
- AWS itself: moto in server mode (tests/moto_server.py). Its CloudFormation is synchronous, no instance
  boots, no container runs (a task is a record: no line of output, no exit code), ECS services never get
  tasks, and tasks stay RUNNING until stopped (pinned by the fixture).
- The rack's API on ECS: nothing runs it on moto, so the rack runs here (`rack start --stack`) against the
  installed stack, with the stack's names and password, as the API task would.
- The ECS container agent: `ecs_agent_double.register_instances` registers the auto-scaling group's
  instances in the cluster, as the agent does when an instance boots, so that RunTask places tasks.
- The ECS service scheduler: `ecs_agent_double.converge_services` runs each service's desired count of
  tasks of its current task definition (moto's services never get any), called where the test wants the
  scheduler to have acted (after a deploy, a scale, a roll-out).
- The builder task: tests/aws/builder_double.py reads what the rack gave the task (its environment, the
  source in S3), writes its output to the build's log stream and reports its images to the rack's report
  route with the build's token, exactly as the builder image would; it builds and pushes nothing. The rack
  runs on loopback, so the URL the builder reports to (RACK_AWS_REPORT_URL) is the loopback one.
- The awslogs driver: no container runs, so the test itself puts a process's lines (PutLogEvents) into its
  stream ``web/web/TASKID`` of the app's group, as the driver would, one of them with an old timestamp (a
  line ingested late).
- RDS: moto makes the postgres instance available at once and its endpoint does not listen; the URL is
  checked as the rack builds it from the endpoint, not connected to.
- Credentials: moto accepts any key, so where a test proves a credentials .csv's key is the one used, it
  leaves no other credential reachable (NO_KEYS).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from shared.provider.aws.rackstack import REQUIRED
from tests.aws import builder_double, ecs_agent_double
from tests.aws.test_install import CSV_FORMS, KEY, SECRET, convox, leftovers
from tests.conftest import ROOT, RunningRack, free_port, start_rack, stop_rack
from tests.moto_server import MotoServer

BUILDER_IMAGE = "rack-test/builder:1"
"""The rack's builder image (stack parameter BuildImage): its task is placed on moto and played by
tests/aws/builder_double.py."""
NO_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""Without these (and with moto's AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE empty, HOME the test's), no
credential is reachable but a .csv's: moto accepts any key, so that is how a test knows the .csv's is used."""
MANIFEST = "services:\n  web:\n    build: .\n    port: 3000\n    command: python -m http.server 3000\n"


def boto(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name="us-east-1")


def info(text: str) -> dict[str, str]:
    """`convox rack` / `apps info` output: ``Name  value`` lines (an empty value is a name alone)."""
    rows = [line.split(None, 1) for line in text.splitlines() if line.strip()]
    return {parts[0]: parts[1].strip() if len(parts) > 1 else "" for parts in rows}


def stack_outputs(name: str) -> dict[str, str]:
    stack = boto("cloudformation").describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[1:] if line.strip()]


def until(condition: Callable[[], object], timeout: float) -> bool:
    """Whether ``condition`` holds within ``timeout`` seconds (checked every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def cli_env(aws: MotoServer, home: Path, config: Path, *, keys: bool = True) -> dict[str, str]:
    """The CLI's environment: moto's settings, a home of the test's own, without AWS keys unless ``keys``."""
    env = {**aws.env(), "PATH": "/usr/bin:/bin", "HOME": str(home), "CONVOX_CONFIG": str(config)}
    if not keys:
        for variable in NO_KEYS:
            env.pop(variable, None)
    return {**env, "PYTHONPATH": str(ROOT)}


def run_cli(
    env: dict[str, str], cwd: Path, *args: str, password: str = "", ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """`convox ARGS...` (``password`` on stdin for `login`); with ``ok``, it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        input=password if args[0] == "login" else None,
    )
    if ok:
        assert done.returncode == 0, f"convox {' '.join(args)}: {done.stderr}"
    return done


def test_an_installed_rack_started_against_its_stack_runs_the_everyday_cli_and_uninstalls_clean(
    aws: MotoServer, tmp_path: Path
) -> None:
    name = f"e2e{secrets.token_hex(3)}"
    config = tmp_path / "convox"
    before = asyncio.run(leftovers())
    credentials = tmp_path / "credentials.csv"  # the new-user wizard's, re-saved by Excel: BOM and CRLF
    credentials.write_bytes(CSV_FORMS["5 columns, BOM, CRLF"].encode())
    installed = convox(
        aws,
        config,
        "rack",
        "install",
        "aws",
        "--name",
        name,
        "--credentials",
        str(credentials),
        "InstanceCount=2",
        f"BuildImage={BUILDER_IMAGE}",
    )
    assert installed.returncode == 0, installed.stderr
    password = installed.stdout.split("shown only this once:\n", 1)[1].splitlines()[0].strip()
    assert {"keys", "aliases"} <= set(asyncio.run(leftovers()))  # the rack's KMS key, which uninstall must remove
    ecs_agent_double.register_instances(name)

    port = free_port()
    rack: RunningRack = start_rack(
        tmp_path / "data",
        name,
        password=None,
        port=port,
        env={
            "RACK_AWS_REPORT_URL": f"https://127.0.0.1:{port}",  # where the builder reaches this rack
            "HOME": str(tmp_path),
            "CONVOX_CONFIG": str(config),  # where install kept the .csv's path: the rack reaches AWS with it
        },
        args=("--provider", "aws", "--stack", name),
        unset=NO_KEYS,
    )
    try:
        assert rack.password == password  # the one install made (its SSM parameter), not a new one
        assert (rack.data_dir / "aws-credentials").exists()
        env = {
            **aws.env(),
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "CONVOX_CONFIG": str(config),
            "PYTHONPATH": str(ROOT),
        }
        work = tmp_path / "work"
        work.mkdir()

        def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
            return run_cli(env, work, *args, password=password, ok=ok)

        assert "Logged in to" in cli("login", rack.url).stdout  # over TLS, pinning the rack's certificate
        shown = info(cli("rack").stdout)
        assert (shown["Name"], shown["Provider"], shown["Status"]) == (name, "aws", "running")
        params = cli("rack", "params").stdout
        assert re.search(r"^InstanceCount\s+2$", params, re.M) and password not in params
        # the rack's parameters through its API (the CLI is logged in to the started rack, not the balancer)
        changed = cli("rack", "params", "set", "Ami=ami-0123456789abcdef0", "InstanceType=t3.medium")
        assert "Updating parameters" in changed.stdout + changed.stderr
        shown = info(cli("rack", "params").stdout)
        assert (shown["Ami"], shown["InstanceType"], shown["InstanceCount"]) == (
            "ami-0123456789abcdef0",
            "t3.medium",
            "2",
        )
        stack = boto("cloudformation").describe_stacks(StackName=name)["Stacks"][0]
        assert {"ParameterKey": "Ami", "ParameterValue": "ami-0123456789abcdef0"} in stack["Parameters"]
        assert set(REQUIRED) <= set(stack_outputs(name))  # the update kept the stack's outputs
        protected = cli("rack", "params", "set", "PasswordParameter=/x", ok=False)
        assert protected.returncode == 1 and "set by the installer" in protected.stderr
        unknown = cli("rack", "params", "set", "InstanceCounts=4", ok=False)
        assert unknown.returncode == 1 and "unknown parameter InstanceCounts" in unknown.stderr
        assert info(cli("rack").stdout)["Status"] == "running"

        cli("apps", "create", "shop")
        assert table(cli("apps").stdout)[0][:2] == ["shop", "created"]
        # env changes: each a release (not promoted), stored in the stack's table and bucket
        first = cli("env", "set", "GREETING=hi", "COLOR=blue", "-a", "shop")
        cli("env", "unset", "COLOR", "-a", "shop")
        assert cli("env", "get", "GREETING", "-a", "shop").stdout.strip() == "hi"
        assert "COLOR" not in cli("env", "-a", "shop").stdout
        releases = table(cli("releases", "-a", "shop").stdout)
        assert len(releases) == 2, releases
        assert releases[1][0] in first.stdout + first.stderr
        outputs = stack_outputs(name)
        apps_table = f"{outputs['TablePrefix']}-apps"
        assert boto("dynamodb").get_item(TableName=apps_table, Key={"name": {"S": "shop"}})["Item"]
        env_object = f"apps/shop/releases/{releases[0][0]}/env.json"
        stored = boto("s3").head_object(Bucket=outputs["Settings"], Key=env_object)
        assert (stored["ServerSideEncryption"], stored["SSEKMSKeyId"]) == ("aws:kms", outputs["EncryptionKey"])
        no_build = cli("releases", "rollback", releases[1][0], "-a", "shop", ok=False)
        assert no_build.returncode == 1 and "has no build to roll back to" in no_build.stderr

        # deploy: the CLI uploads the source, the rack starts the builder task, which reports with its token
        source = builder_double.source_tree(tmp_path / "source", MANIFEST)
        deploy = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "deploy", str(source), "-a", "shop"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        task = builder_double.wait_for_task(name, "shop")
        assert password not in json.dumps(task.described, default=str)  # the builder never gets the password
        assert task.described["definition"]["containerDefinitions"][0]["image"] == BUILDER_IMAGE  # the stack's
        report = f"{rack.url}/apps/shop/builds/{task.env['BUILD_ID']}/report"
        images = {"images": {"web": "busybox:latest"}}
        for headers, auth in (({}, None), ({"X-Build-Token": password}, None), ({}, ("convox", password))):
            refused = httpx.post(report, json=images, headers=headers, auth=auth, verify=rack.verify, timeout=30)
            assert refused.status_code == 401, refused.text  # only the build's own token reports it
        token = {"X-Build-Token": task.env["BUILD_TOKEN"]}
        wrong = httpx.post(report, json={"images": {"worker": "busybox"}}, headers=token, verify=rack.verify)
        assert wrong.status_code == 400 and "missing web; not built worker" in wrong.text  # and the build goes on
        build = builder_double.play(name, "shop", rack.verify)
        out, err = deploy.communicate(timeout=180)
        assert deploy.returncode == 0, err
        assert "Building web (test double: nothing is built)" in out  # the builder's output, from its log stream
        again = httpx.post(report, json=images, headers=token, verify=rack.verify, timeout=30)
        assert again.status_code == 400 and "not running" in again.text  # a token reports once
        deployed = re.search(r"Release: (R\w+)", out)
        assert deployed, out
        app = info(cli("apps", "info", "shop").stdout)
        assert (app["Status"], app["Release"]) == ("running", deployed[1])
        service = boto("ecs").describe_services(cluster=name, services=[f"{name}-shop_web"])["services"][0]
        definition = boto("ecs").describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
        container = definition["containerDefinitions"][0]
        assert container["image"].endswith(f"{name}/shop:web.{build.lower()}")
        assert {"name": "GREETING", "value": "hi"} in container["environment"]
        assert container["logConfiguration"]["options"]["awslogs-group"] == f"/convox/{name}/shop"
        assert definition["executionRoleArn"] == outputs["ExecutionRole"]

        ecs_agent_double.converge_services(name)  # the scheduler starts the service's task
        assert [r[1:3] for r in table(cli("ps", "-a", "shop").stdout)] == [["web", deployed[1]]]
        cli("scale", "web", "--count", "3", "-a", "shop")
        service = boto("ecs").describe_services(cluster=name, services=[f"{name}-shop_web"])["services"][0]
        assert service["desiredCount"] == 3
        ecs_agent_double.converge_services(name)
        scaled = table(cli("ps", "-a", "shop").stdout)
        assert [r[1:3] for r in scaled] == [["web", deployed[1]]] * 3
        assert len({r[0] for r in scaled}) == 3 and all(re.fullmatch(r"[0-9a-f]{12}", r[0]) for r in scaled)

        cli("env", "set", "GREETING=hello", "-a", "shop", "--promote")
        rolled = cli("releases", "rollback", deployed[1], "-a", "shop")
        app = info(cli("apps", "info", "shop").stdout)
        assert app["Release"] not in (deployed[1], "") and app["Release"] in rolled.stdout + rolled.stderr
        assert cli("env", "get", "GREETING", "-a", "shop").stdout.strip() == "hi"
        ecs_agent_double.converge_services(name)  # the roll-out: the old release's tasks replaced, the count kept
        services = table(cli("ps", "-a", "shop").stdout)
        assert [r[1:3] for r in services] == [["web", app["Release"]]] * 3, services

        # a one-off: RunTask on the registered instances, in ps with the app's tags, then stopped
        pid = cli("run", "--app", "shop", "--detach", "web", "sleep", "600").stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{12}", pid), pid
        rows = table(cli("ps", "-a", "shop").stdout)
        assert sorted(r[:3] for r in rows) == sorted([*[r[:3] for r in services], [pid, "web", app["Release"]]])
        assert "sleep 600" in next(line for line in cli("ps", "-a", "shop").stdout.splitlines() if pid in line)
        tasks = boto("ecs").list_tasks(cluster=name, desiredStatus="RUNNING")["taskArns"]
        described = boto("ecs").describe_tasks(cluster=name, tasks=tasks, include=["TAGS"])["tasks"]
        one_off = next(t for t in described if t["taskArn"].replace("-", "").endswith(pid))
        tags = {t["key"]: t["value"] for t in one_off["tags"]}
        assert (tags["convox.rack"], tags["convox.app"], tags["convox.type"]) == (name, "shop", "web")
        cli("ps", "stop", pid, "-a", "shop")
        assert table(cli("ps", "-a", "shop").stdout) == services

        logs = cli("logs", "-a", "shop", "--no-follow").stdout
        for event in ("release promoted", "web scaled: count 3"):
            assert event in logs, logs

        # a backing service: postgres on RDS (a stack of its own in the rack's VPC), linked as POSTGRES_URL
        # through a promoted release, which the scheduler double then rolls out
        cli("services", "create", "postgres")
        assert table(cli("services").stdout) == [["postgres", "postgres", "running"]]
        resource = boto("cloudformation").describe_stacks(StackName=f"{name}-resource-postgres")["Stacks"][0]
        assert resource["StackStatus"] == "CREATE_COMPLETE"
        unlinked = app["Release"]
        cli("services", "link", "postgres", "-a", "shop")
        assert table(cli("services").stdout) == [["postgres", "postgres", "running", "shop"]]
        url = cli("env", "get", "POSTGRES_URL", "-a", "shop").stdout.strip()
        instance = boto("rds").describe_db_instances()["DBInstances"][0]["Endpoint"]
        assert re.fullmatch(rf"postgres://app:[0-9a-f]{{48}}@{re.escape(instance['Address'])}:5432/app", url), url
        linked = info(cli("apps", "info", "shop").stdout)["Release"]
        assert linked not in (unlinked, "")  # the link made a release, promoted
        assert cli("env", "get", "GREETING", "-a", "shop").stdout.strip() == "hi"  # the rest of the env kept
        service = boto("ecs").describe_services(cluster=name, services=[f"{name}-shop_web"])["services"][0]
        definition = boto("ecs").describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
        assert {"name": "POSTGRES_URL", "value": url} in definition["containerDefinitions"][0]["environment"]
        ecs_agent_double.converge_services(name)
        web = table(cli("ps", "-a", "shop").stdout)
        assert [r[1:3] for r in web] == [["web", linked]] * 3, web
        password_in_url = url.split(":")[2].split("@")[0]
        assert password_in_url not in rack.log.read_text()  # the service's password is in no log

        # logs follow: the test puts lines in a process's stream of the app's group, as the awslogs driver
        # would; each is printed within 2 s, and once, also one ingested late (its timestamp older than the
        # rack's last poll) and those seen again by the polls' look-back
        tasks = boto("ecs").list_tasks(cluster=name, desiredStatus="RUNNING")["taskArns"]
        task_id = next(arn.rsplit("/", 1)[1] for arn in tasks if arn.replace("-", "").endswith(web[0][0]))
        group, stream = f"/convox/{name}/shop", f"web/web/{task_id}"
        cloudwatch = boto("logs")
        cloudwatch.create_log_stream(logGroupName=group, logStreamName=stream)

        def put(text: str, ago: float = 0.0) -> float:
            stamp = int((time.time() - ago) * 1000)
            cloudwatch.put_log_events(
                logGroupName=group, logStreamName=stream, logEvents=[{"timestamp": stamp, "message": text}]
            )
            return time.monotonic()

        follow = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "logs", "-a", "shop", "--since", "1m"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        printed: list[tuple[float, str]] = []
        reader = threading.Thread(target=lambda: printed.extend((time.monotonic(), x) for x in follow.stdout or []))
        reader.start()

        def seen(text: str) -> float | None:
            return next((at for at, line in list(printed) if line.rstrip("\n").endswith(" " + text)), None)

        try:
            deadline = time.monotonic() + 30
            while not until(lambda: seen("warming up"), 1.0):  # until the follow is on
                assert time.monotonic() < deadline, (printed, follow.poll())
                put("warming up")
            put_at = put("first line")
            assert until(lambda: seen("first line"), 2.0), printed
            latency = (seen("first line") or 0) - put_at
            put("ingested late", ago=4.0)  # older than the poll that printed "first line"
            put("third line")
            assert until(lambda: seen("ingested late") and seen("third line"), 5.0), printed
            put("last line")  # a poll after all those printed: the look-back window holds them again
            assert until(lambda: seen("last line"), 5.0), printed
        finally:
            follow.terminate()
            reader.join(30)  # every line it printed, to its end
            _, err = follow.communicate(timeout=30)  # and its pipes closed
        assert follow.returncode in (0, -15, 143), err
        texts = [line.split(" ", 2)[2].rstrip("\n") for _, line in printed]
        for text in ("first line", "ingested late", "third line", "last line"):
            assert texts.count(text) == 1, printed
        assert texts.index("ingested late") > texts.index("first line")  # printed when ingested, not lost
        origin = next(line.split(" ")[1] for _, line in printed if line.endswith(" first line\n"))
        assert origin == f"web:{linked}/{web[0][0]}", origin
        print(f"convox logs: PutLogEvents to printed {latency * 1000:.0f} ms", file=sys.stderr)

        cli("apps", "delete", "shop")
        assert table(cli("apps").stdout) == []
        running = boto("ecs").list_tasks(cluster=name, desiredStatus="RUNNING")["taskArns"]
        left = boto("ecs").describe_tasks(cluster=name, tasks=running)["tasks"] if running else []
        assert [t["group"] for t in left] == [f"service:{name}-api"]  # the app's tasks went; the rack's API stays
    finally:
        stop_rack(rack)
    assert SECRET not in rack.log.read_text()
    gone = convox(aws, config, "rack", "uninstall", name, "--yes")
    assert gone.returncode == 0, gone.stderr
    assert asyncio.run(leftovers()) == before


def start_against(
    stack: str, tmp_path: Path, *args: str, _env: dict[str, str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`rack start --provider aws --stack STACK ARGS...` in ``_env`` (default: the test's) with ``env``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "rack",
            "start",
            "--provider",
            "aws",
            "--stack",
            stack,
            "--data-dir",
            str(tmp_path / "data"),
            *args,
        ],
        cwd=ROOT,
        env={**(os.environ if _env is None else _env), "CONVOX_CONFIG": str(tmp_path / "convox"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rack_start_refuses_a_stack_that_is_missing_not_a_rack_or_not_this_version(
    aws: MotoServer, tmp_path: Path
) -> None:
    missing = start_against("nosuchrack", tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("ERROR: no rack stack named nosuchrack")
    template = "Resources:\n  Group:\n    Type: AWS::Logs::LogGroup\n    Properties:\n      LogGroupName: keep-me\n"
    cfn = boto("cloudformation")
    cfn.create_stack(StackName="someone-else", TemplateBody=template)
    other = start_against("someone-else", tmp_path)
    assert other.returncode == 1
    assert other.stderr.startswith("ERROR: stack someone-else is not a rack")
    # tagged as a rack, with its password parameter, but without this version's outputs
    boto("ssm").put_parameter(Name="/convox/old/password", Value="p" * 40, Type="SecureString")
    cfn.create_stack(
        StackName="old",
        TemplateBody="Parameters:\n  PasswordParameter:\n    Type: String\n" + template.replace("keep-me", "old"),
        Parameters=[{"ParameterKey": "PasswordParameter", "ParameterValue": "/convox/old/password"}],
        Tags=[{"Key": "System", "Value": "convox"}, {"Key": "Type", "Value": "rack"}],
    )
    old = start_against("old", tmp_path)
    assert old.returncode == 1
    assert old.stderr.startswith("ERROR: stack old lacks the rack outputs Cluster, Settings, TablePrefix")
    assert "p" * 40 not in old.stdout + old.stderr
    # a rack's outputs, but CONVOX_PASSWORD is not its password
    outputs = {key: f"old-{key.lower()}" for key in REQUIRED}
    outputs |= {"TablePrefix": "old", "AppsTable": "old-apps", "BuildsTable": "old-builds"}
    outputs |= {"ReleasesTable": "old-releases", "ResourcesTable": "old-resources"}
    body = "".join(f"  {key}:\n    Value: {value}\n" for key, value in outputs.items())
    cfn.update_stack(
        StackName="old",
        TemplateBody="Parameters:\n  PasswordParameter:\n    Type: String\n"
        + template.replace("keep-me", "old")
        + "Outputs:\n"
        + body,
        Parameters=[{"ParameterKey": "PasswordParameter", "ParameterValue": "/convox/old/password"}],
    )
    wrong = start_against("old", tmp_path, CONVOX_PASSWORD="q" * 40)
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("ERROR: CONVOX_PASSWORD is not the password of rack old")
    assert "p" * 40 not in wrong.stdout + wrong.stderr
    assert not (tmp_path / "data" / "password").exists()  # refused before the rack touched anything


def test_a_rack_started_with_credentials_csv_uses_that_key_kept_out_of_every_command_line_and_environment(
    aws: MotoServer, tmp_path: Path
) -> None:
    """Installed from the old 3-column .csv, which is then gone, the rack starts with `rack start --credentials`
    and today's 2-column .csv, with no other credential reachable (the 5-column form, with BOM and CRLF,
    installs and starts the everyday test's rack from install's record).

    Simulated: AWS (moto, which accepts any key: without the .csv nothing could call it, see NO_KEYS); the
    rack's API on ECS (nothing runs it on moto: the rack runs here against the stack, as the task would)."""
    name = f"csv{secrets.token_hex(3)}"
    config = tmp_path / "convox"
    old = tmp_path / "downloads" / "credentials.csv"
    old.parent.mkdir()
    old.write_bytes(CSV_FORMS["3 columns"].encode())
    before = asyncio.run(leftovers())
    installed = convox(aws, config, "rack", "install", "aws", "--name", name, "--credentials", str(old))
    assert installed.returncode == 0, installed.stderr
    password = installed.stdout.split("shown only this once:\n", 1)[1].splitlines()[0].strip()
    assert SECRET not in installed.stdout + installed.stderr + (config / "aws.json").read_text()
    old.unlink()
    credentials = tmp_path / "rack.csv"
    credentials.write_bytes(CSV_FORMS["2 columns"].encode())

    data = tmp_path / "data"
    home = {"HOME": str(tmp_path), "CONVOX_CONFIG": str(config)}
    args = ("--provider", "aws", "--stack", name, "--credentials", str(credentials))
    rack = start_rack(data, name, password=None, env=home, args=args, unset=NO_KEYS)
    try:
        kept = data / "aws-credentials"
        assert kept.stat().st_mode & 0o777 == 0o600 and KEY in kept.read_text()
        assert until(lambda: "It reaches AWS with the credentials .csv's key" in rack.log.read_text(), 30)
        supervisor = psutil.Process(rack.process.pid)
        children = supervisor.children(recursive=True)
        assert len(children) >= 6  # the gateway and the five services
        for process in [supervisor, *children]:  # the secret: in no command line, no environment of the rack's
            environ = process.environ()
            assert SECRET not in " ".join(process.cmdline()) + json.dumps(environ)
            assert not set(NO_KEYS) & set(environ)
        assert {c.environ()["AWS_SHARED_CREDENTIALS_FILE"] for c in children} == {str(kept)}

        env, work = cli_env(aws, tmp_path, config), tmp_path
        assert "Logged in to" in run_cli(env, work, "login", rack.url, password=password).stdout
        shown = info(run_cli(env, work, "rack").stdout)
        assert (shown["Name"], shown["Provider"], shown["Status"]) == (name, "aws", "running")
        run_cli(env, work, "apps", "create", "shop")  # DynamoDB, CloudFormation: the services use the .csv's key
        assert table(run_cli(env, work, "apps").stdout)[0][:2] == ["shop", "created"]
    finally:
        stop_rack(rack)
    assert not kept.exists()  # removed when the rack stops
    assert SECRET not in rack.log.read_text()
    gone = convox(aws, config, "rack", "uninstall", name, "--yes", "--credentials", str(credentials))
    assert gone.returncode == 0, gone.stderr
    assert asyncio.run(leftovers()) == before


def test_rack_start_with_no_credentials_or_a_bad_csv_is_refused_before_it_starts(
    aws: MotoServer, tmp_path: Path
) -> None:
    """Simulated: AWS (moto); nothing else runs."""
    bare = {k: v for k, v in os.environ.items() if k not in NO_KEYS}
    config = {"CONVOX_CONFIG": str(tmp_path / "convox"), "HOME": str(tmp_path)}
    none = start_against("anyrack", tmp_path, **config, _env=bare)
    assert none.returncode == 1 and none.stderr.startswith("ERROR: AWS: Unable to locate credentials"), none.stderr
    bad = tmp_path / "credentials.csv"
    bad.write_text(f"Access key ID,Secret access key\nnot-a-key,{SECRET}\n")
    wrong = start_against("anyrack", tmp_path, "--credentials", str(bad), **config, _env=bare)
    assert wrong.returncode == 1 and "not an AWS access key id" in wrong.stderr
    assert SECRET not in wrong.stdout + wrong.stderr
    assert not (tmp_path / "data").exists()  # refused before the rack made anything
