"""The ELBv2 driver against a local moto server over HTTP (the AWS client is not patched).

moto serves the ElasticLoadBalancingV2 and EC2 APIs on 127.0.0.1; boto3 (sync) builds the VPC,
subnets, ALB, target group and instances; the driver under test talks to it through
aiobotocore like it would to AWS. Throttling, which moto cannot produce, comes from a small
aiohttp server on 127.0.0.1 that answers the AWS query API with ``Throttling`` errors (and then
forwards to moto). The daemon scenario runs the real daemon with this driver: instance targets
are registered on the ports of loopback API servers, and the probe URL names 127.0.0.1 (the
instances' private addresses exist only inside moto).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from lbhealthd.config import parse_config
from lbhealthd.daemon.loop import Daemon
from lbhealthd.drivers import STATE_BLOB, Driver, make_driver
from lbhealthd.drivers.elbv2 import ELBv2Driver
from lbhealthd.errors import InvalidName, Rejected, Unavailable
from lbhealthd.model import AdminState, Member, OpState, ServerId
from lbhealthd.store import Store
from tests.daemon_harness import FAST, wait_for
from tests.fixtures_haproxy import ApiServers, free_port

pytestmark = pytest.mark.integration

REGION = "us-east-1"
TG = "web"


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``moto_server`` as a child process on 127.0.0.1 for this module; stopped by PID."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start (see {log.name})") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials through the standard chain (environment); no files, no IMDS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Cloud:
    """The resources one test built in moto."""

    url: str
    tg_arn: str
    instances: list[str]
    ports: dict[str, int]
    elbv2: Any
    ec2: Any

    def registered(self) -> dict[str, int]:
        """Target Id -> port, as moto has it now."""
        reply = self.elbv2.describe_target_health(TargetGroupArn=self.tg_arn)
        return {d["Target"]["Id"]: d["Target"]["Port"] for d in reply["TargetHealthDescriptions"]}


def build(url: str, ports: list[int], *, delay: int = 5) -> Cloud:
    """A VPC with two subnets, an ALB, target group ``web`` and one instance per port."""
    with urllib.request.urlopen(
        urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10
    ):
        pass
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
    elbv2 = boto3.client("elbv2", region_name=REGION, endpoint_url=url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{z}")[
            "Subnet"
        ]["SubnetId"]
        for i, z in enumerate("ab")
    ]
    lb = elbv2.create_load_balancer(Name="api-alb", Subnets=subnets, Type="application")
    tg = elbv2.create_target_group(
        Name=TG, Protocol="HTTP", Port=80, VpcId=vpc, TargetType="instance"
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.modify_target_group_attributes(
        TargetGroupArn=tg,
        Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": str(delay)}],
    )
    elbv2.create_listener(
        LoadBalancerArn=lb["LoadBalancers"][0]["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}],
    )
    reply = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=len(ports), MaxCount=len(ports), SubnetId=subnets[0]
    )
    instances = sorted(i["InstanceId"] for i in reply["Instances"])
    by_id = dict(zip(instances, ports, strict=True))
    elbv2.register_targets(
        TargetGroupArn=tg, Targets=[{"Id": i, "Port": p} for i, p in by_id.items()]
    )
    return Cloud(url, tg, instances, by_id, elbv2, ec2)


@pytest.fixture
def cloud(moto_url: str) -> Cloud:
    """Five instance targets on ports 8001..8005."""
    return build(moto_url, [8001, 8002, 8003, 8004, 8005])


@pytest.fixture
async def driver(moto_url: str) -> AsyncIterator[ELBv2Driver]:
    d = ELBv2Driver(REGION, moto_url, timeout=5.0, target_groups={"api": TG})
    try:
        yield d
    finally:
        await d.close()


async def members(driver: ELBv2Driver, pool: str = "api") -> dict[str, Member]:
    return {m.id.server: m for m in (await driver.snapshot(pool)).members}


# --- the driver against moto ------------------------------------------------------------------


async def test_snapshot_lists_every_target_with_its_port_and_address(
    cloud: Cloud, driver: ELBv2Driver
) -> None:
    """Five registered instances are five READY, UP members named by instance Id, weight 1."""
    protocol: Driver = driver  # the ELBv2 driver satisfies the Driver Protocol (mypy)
    assert protocol is driver
    with capture_logs() as logs:
        snap = await driver.snapshot("api")
    got = {m.id.server: m for m in snap.members}
    assert sorted(got) == cloud.instances
    for iid, m in got.items():
        assert (m.port, m.admin, m.op, m.weight, m.initial_weight) == (
            cloud.ports[iid],
            AdminState.READY,
            OpState.UP,
            1,
            1,
        )
        assert m.address.startswith("10.0.0.")  # the private IP, from ec2:DescribeInstances
    assert snap.epoch == cloud.tg_arn
    resolved = [e for e in logs if e["event"] == "elbv2_target_group_resolved"]
    assert resolved[0]["deregistration_delay_s"] == 5 and resolved[0]["arn"] == cloud.tg_arn


async def test_target_group_by_arn_and_by_pool_name(cloud: Cloud, moto_url: str) -> None:
    """A pool maps to a target group ARN; an unmapped pool is the target group of its name."""
    d = ELBv2Driver(REGION, moto_url, target_groups={"api": cloud.tg_arn})
    try:
        assert len((await d.snapshot("api")).members) == 5
        assert len((await d.snapshot(TG)).members) == 5
    finally:
        await d.close()


async def test_drain_deregisters_and_ready_registers_again_on_the_same_port(
    cloud: Cloud, driver: ELBv2Driver
) -> None:
    """DRAIN deregisters the target and it stays visible as DRAIN; READY re-registers it."""
    iid = cloud.instances[2]
    sid = ServerId("api", iid)
    await driver.snapshot("api")
    with capture_logs() as logs:
        await driver.set_state(sid, AdminState.DRAIN)
    assert iid not in cloud.registered()
    event = next(e for e in logs if e["event"] == "elbv2_target_deregistered")
    assert (event["server"], event["port"], event["deregistration_delay_s"]) == (
        f"api/{iid}",
        cloud.ports[iid],
        5,
    )
    got = await members(driver)
    assert len(got) == 5
    assert (got[iid].admin, got[iid].op, got[iid].port) == (
        AdminState.DRAIN,
        OpState.DOWN,
        cloud.ports[iid],
    )
    await driver.set_state(sid, AdminState.MAINT)  # already out: only the label changes
    assert (await members(driver))[iid].admin is AdminState.MAINT
    await driver.set_state(sid, AdminState.READY)
    assert cloud.registered()[iid] == cloud.ports[iid]
    got = await members(driver)
    assert got[iid].admin is AdminState.READY and got[iid].op is OpState.UP
    assert driver.remembered == {}


async def test_deregistered_targets_survive_a_driver_restart_with_a_state_file(
    cloud: Cloud, moto_url: str, tmp_path: Path
) -> None:
    """A new driver with the same state_file still shows and restores the drained target."""
    state = tmp_path / "elbv2.json"
    iid = cloud.instances[0]
    first = ELBv2Driver(REGION, moto_url, target_groups={"api": TG}, state_file=state)
    try:
        await first.snapshot("api")
        await first.set_state(ServerId("api", iid), AdminState.DRAIN)
    finally:
        await first.close()
    second = ELBv2Driver(REGION, moto_url, target_groups={"api": TG}, state_file=state)
    try:
        assert (await members(second))[iid].admin is AdminState.DRAIN
        await second.set_state(ServerId("api", iid), AdminState.READY)
    finally:
        await second.close()
    assert cloud.registered()[iid] == cloud.ports[iid]
    assert json.loads(state.read_text())["targets"] == {}


async def test_deregistered_targets_are_kept_in_state_dir_with_the_rest(
    cloud: Cloud, moto_url: str, tmp_path: Path
) -> None:
    """Given the store's blob (as the daemon and the CLI do), the record lives in state_dir,
    under the store's lock, and a new driver on the same state_dir restores the target."""
    store = Store(tmp_path / "state")
    iid = cloud.instances[0]
    first = ELBv2Driver(REGION, moto_url, target_groups={"api": TG}, keeper=store.blob(STATE_BLOB))
    try:
        await first.snapshot("api")
        await first.set_state(ServerId("api", iid), AdminState.MAINT)
    finally:
        await first.close()
    assert (store.load_blob(STATE_BLOB) or {})["targets"][f"api/{iid}"]["admin"] == "maint"
    second = ELBv2Driver(REGION, moto_url, target_groups={"api": TG}, keeper=store.blob(STATE_BLOB))
    try:
        assert (await members(second))[iid].admin is AdminState.MAINT
        await second.set_state(ServerId("api", iid), AdminState.READY)
    finally:
        await second.close()
    assert cloud.registered()[iid] == cloud.ports[iid]
    assert (store.load_blob(STATE_BLOB) or {})["targets"] == {}


async def test_a_record_in_the_old_file_moves_into_state_dir(
    cloud: Cloud, moto_url: str, tmp_path: Path
) -> None:
    """A record an earlier version kept in its own file is read when the store holds none,
    and the file is removed once the store has the record."""
    legacy = tmp_path / "state" / "elbv2_deregistered.json"
    iid = cloud.instances[0]
    old = ELBv2Driver(REGION, moto_url, target_groups={"api": TG}, state_file=legacy)
    try:
        await old.snapshot("api")
        await old.set_state(ServerId("api", iid), AdminState.DRAIN)
    finally:
        await old.close()
    assert legacy.exists()
    store = Store(tmp_path / "state")
    new = ELBv2Driver(
        REGION,
        moto_url,
        target_groups={"api": TG},
        state_file=legacy,
        keeper=store.blob(STATE_BLOB),
    )
    try:
        assert (await members(new))[iid].admin is AdminState.DRAIN
        await new.set_state(ServerId("api", iid), AdminState.MAINT)
    finally:
        await new.close()
    assert not legacy.exists()
    assert (store.load_blob(STATE_BLOB) or {})["targets"][f"api/{iid}"]["admin"] == "maint"


def test_a_damaged_record_is_logged_and_the_driver_starts_empty(tmp_path: Path) -> None:
    """An unreadable record never stops the driver: it is logged, and nothing is remembered."""
    bad = tmp_path / "elbv2.json"
    bad.write_text('{"targets": {"api/i-1": {"id": "i-1", "admin": "sideways"}}}')
    with capture_logs() as logs:
        driver = ELBv2Driver(REGION, "http://127.0.0.1:1", state_file=bad)
    assert driver.remembered == {}
    assert [e["event"] for e in logs] == ["elbv2_state_unreadable"]
    bad.write_text('{"targets": {"api/i-1": {"id": "i-1", "admin": "drain"}}}')
    assert set(ELBv2Driver(REGION, "http://127.0.0.1:1", state_file=bad).remembered) == {
        ServerId("api", "i-1")
    }


async def test_a_target_registered_again_by_hand_is_ready_and_forgotten(
    cloud: Cloud, driver: ELBv2Driver
) -> None:
    """An operator's RegisterTargets wins: the member is READY and the memory is dropped."""
    iid = cloud.instances[1]
    await driver.snapshot("api")
    await driver.set_state(ServerId("api", iid), AdminState.DRAIN)
    cloud.elbv2.register_targets(
        TargetGroupArn=cloud.tg_arn, Targets=[{"Id": iid, "Port": cloud.ports[iid]}]
    )
    assert (await members(driver))[iid].admin is AdminState.READY
    assert driver.remembered == {}


async def test_unknown_target_group_is_rejected_with_its_name(cloud: Cloud, moto_url: str) -> None:
    """A target group that does not exist: Rejected, naming the group, the pool and the region."""
    d = ELBv2Driver(REGION, moto_url, target_groups={"api": "no-such-tg"})
    try:
        with pytest.raises(Rejected) as err:
            await d.snapshot("api")
        text = str(err.value)
        assert "'no-such-tg'" in text and "pool api" in text and REGION in text
        assert "not found" in text
    finally:
        await d.close()


async def test_unknown_target_is_rejected(cloud: Cloud, driver: ELBv2Driver) -> None:
    """A server that is not a target of the group: Rejected, naming target and group."""
    with pytest.raises(Rejected, match=r"'i-0000000000000dead' is not registered in target group"):
        await driver.set_state(ServerId("api", "i-0000000000000dead"), AdminState.DRAIN)


async def test_weights_are_rejected(cloud: Cloud, driver: ELBv2Driver) -> None:
    """ELBv2 has no per-target weight: any weight but 1 is Rejected, and says why."""
    sid = ServerId("api", cloud.instances[0])
    await driver.set_weight(sid, 1)
    with pytest.raises(Rejected, match="weights are not supported by ELBv2 target groups"):
        await driver.set_weight(sid, 50)


def test_names_are_checked_before_any_call() -> None:
    """Hostile pool names and target group references are refused at construction."""
    with pytest.raises(InvalidName):
        ELBv2Driver(REGION, target_groups={"api": "bad name;"})
    with pytest.raises(InvalidName):
        ELBv2Driver(REGION, target_groups={"a/b": "web"})
    with pytest.raises(ValueError, match="region"):
        ELBv2Driver("not a region")


async def test_unsafe_target_ids_are_skipped_with_a_warning(
    cloud: Cloud, driver: ELBv2Driver
) -> None:
    """A target whose Id is not a safe server name is left out of the snapshot, with a warning."""
    vpc = cloud.ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    arn = cloud.elbv2.create_target_group(
        Name="ips", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="ip"
    )["TargetGroups"][0]["TargetGroupArn"]
    cloud.elbv2.register_targets(
        TargetGroupArn=arn, Targets=[{"Id": "10.0.0.7", "Port": 81}, {"Id": "x" * 70, "Port": 82}]
    )
    with capture_logs() as logs:
        got = await members(driver, "ips")
    assert list(got) == ["10.0.0.7"] and got["10.0.0.7"].address == "10.0.0.7"
    assert [e["event"] for e in logs].count("elbv2_target_skipped") == 1


# --- transient errors: a throttling endpoint --------------------------------------------------

THROTTLED = (
    '<ErrorResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/">'
    "<Error><Type>Sender</Type><Code>{code}</Code><Message>Rate exceeded</Message></Error>"
    "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
)


@dataclass
class Throttler:
    """Answers the first ``fail`` requests with an error, then forwards the rest to moto."""

    upstream: str
    fail: int
    code: str = "Throttling"
    status: int = 400
    requests: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(request.headers.get("Content-Type", ""))
        if len(self.requests) <= self.fail:
            return web.Response(
                status=self.status, text=THROTTLED.format(code=self.code), content_type="text/xml"
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as reply,
        ):
            return web.Response(
                status=reply.status,
                body=await reply.read(),
                content_type=reply.content_type,
            )


@pytest.fixture
async def throttler(moto_url: str) -> AsyncIterator[tuple[Throttler, str]]:
    t = Throttler(moto_url, fail=0)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", t.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield t, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("code", "status"),
    [("Throttling", 400), ("RequestLimitExceeded", 400), ("ServiceUnavailable", 503)],
)
async def test_persistent_throttling_is_unavailable_after_bounded_retries(
    cloud: Cloud, throttler: tuple[Throttler, str], code: str, status: int
) -> None:
    """Always throttled: Unavailable after exactly ``attempts`` tries, within the timeout."""
    t, url = throttler
    t.fail, t.code, t.status = 10_000, code, status
    d = ELBv2Driver(REGION, url, timeout=3.0, target_groups={"api": TG}, attempts=3)
    try:
        started = time.monotonic()
        with capture_logs() as logs, pytest.raises(Unavailable, match=code):
            await d.snapshot("api")
        assert time.monotonic() - started < 3.5
    finally:
        await d.close()
    assert len(t.requests) == 3
    retries = [e for e in logs if e["event"] == "driver_retry"]
    assert [e["attempt"] for e in retries] == [1, 2]


async def test_throttling_then_success_is_retried_transparently(
    cloud: Cloud, throttler: tuple[Throttler, str]
) -> None:
    """Two throttled answers, then moto: the snapshot succeeds on the third attempt."""
    t, url = throttler
    t.fail = 2
    d = ELBv2Driver(REGION, url, timeout=5.0, target_groups={"api": TG}, attempts=4)
    try:
        assert len((await d.snapshot("api")).members) == 5
    finally:
        await d.close()
    assert len(t.requests) > 2


async def test_connection_refused_is_unavailable() -> None:
    """Nobody listening: Unavailable (retried), never a hang past the timeout."""
    d = ELBv2Driver(REGION, f"http://127.0.0.1:{free_port()}", timeout=1.5, attempts=2)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await d.snapshot("api")
        assert time.monotonic() - started < 2.5
    finally:
        await d.close()


# --- the daemon with this driver --------------------------------------------------------------


@pytest.fixture
async def api5() -> AsyncIterator[ApiServers]:
    servers = ApiServers()
    try:
        await servers.start(5)
        yield servers
    finally:
        await servers.stop()


async def test_daemon_deregisters_overloaded_targets_and_registers_them_on_recovery(
    moto_url: str, api5: ApiServers, tmp_path: Path
) -> None:
    """Four of five overloaded: the worst two are deregistered (cap 40 %), never three; when
    they recover they are registered again on their own ports."""
    cloud = build(moto_url, api5.ports)
    doc = {
        "daemon": {
            "state_dir": str(tmp_path / "state"),
            "control_socket": str(tmp_path / "control.sock"),
            "http": f"127.0.0.1:{free_port()}",
            "round_interval": "1s",
        },
        "load_balancer": {
            "type": "aws_elbv2",
            "aws_elbv2": {"region": REGION, "endpoint_url": moto_url, "target_groups": {"api": TG}},
        },
        "pools": [
            {
                "name": "api",
                **FAST,
                # Fast confirmation off: the four streaks complete in one round, so the
                # worst two are the ones drained (with it on, the first two to complete are).
                "probe": {
                    **FAST["probe"],
                    "url": "http://127.0.0.1:{port}/health",
                    "fast_interval": FAST["probe"]["interval"],
                },
                "expected_weights": {"default": 1},
            }
        ],
    }
    config = parse_config(yaml.safe_dump(doc), "elbv2-test")
    driver = make_driver(config)  # built from the config, as `lbhealthd run` does
    by_port = {p: i for i, p in cloud.ports.items()}
    for i, cpu in enumerate([0.91, 0.99, 0.92, 0.98]):
        api5.set(i, cpu=cpu)
    worst = {by_port[api5.ports[1]], by_port[api5.ports[3]]}

    def out() -> set[str]:
        return set(cloud.instances) - set(cloud.registered())

    daemon = Daemon(config, driver=driver)
    task = asyncio.create_task(daemon.run())
    try:
        with capture_logs() as logs:
            await wait_for(lambda: out() == worst, 8, "the worst two deregistered")
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                assert len(out()) <= 2
                await asyncio.sleep(0.05)
            for i in range(4):
                api5.set(i, cpu=0.1)
            await wait_for(lambda: not out(), 10, "both registered again")
        assert cloud.registered() == cloud.ports
        blocked = {e["server"] for e in logs if e["event"] == "drain_blocked"}
        assert blocked == {f"api/{by_port[api5.ports[i]]}" for i in (0, 2)}
        assert not [e for e in logs if e["event"] == "lb_command_failed"]
    finally:
        daemon.stopping.set()
        await asyncio.wait_for(task, timeout=10)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_planted_old_record_is_refused_not_followed(tmp_path: Path, kind: str) -> None:
    """The old record's file is read without following a link or blocking on a FIFO: the
    driver logs it as unreadable and starts with none (a regular file is read: see above)."""
    path = tmp_path / "elbv2.json"
    if kind == "symlink":
        target = tmp_path / "elsewhere.json"
        target.write_text('{"targets": {"api/i-1": {"id": "i-1", "admin": "drain"}}}')
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    with capture_logs() as logs:
        driver = ELBv2Driver(REGION, "http://127.0.0.1:1", state_file=path)
    assert driver.remembered == {}
    assert [e["event"] for e in logs] == ["elbv2_state_unreadable"]
