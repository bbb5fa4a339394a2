"""The dashboard in a real headless browser (Debian's chromium), with the demo running.

The page must show the live system and follow it without a reload: three
members and one leader, a new leader marked after the leader is killed,
pods appearing Running after scaling the demo's Deployment from the page, a
pod deleted from the page replaced by the controllers. Screenshots of every
page are saved under ``run/artifacts/dashboard/``.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.controllers.test_demo import DemoProcess

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "run" / "artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
# As root in a container, with no network: no sandbox, nothing fetched in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_MS = 120_000  # generous: the machine is shared and noisy
REPLICAS = 4
DEPLOYMENT = '#deployments tr[data-key="default/web"]'
PAGES = ["store", "control-plane", "workloads", "keys"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoProcess, str]]:
    """``make run`` on free ports, settled, and the dashboard URL it printed."""
    workdir = tmp_path_factory.mktemp("dashboard-demo")
    process = DemoProcess(
        [
            "--free-ports",
            "--data-dir",
            str(workdir / "data"),
            "--replicas",
            str(REPLICAS),
            "--view-every",
            "5",
        ],
        cwd=workdir,
    )
    try:
        _, printed = process.wait_for(r"^dashboard: (http://\S+)$")
        process.wait_for(rf"all {REPLICAS} pods Running on Ready nodes")
        yield process, printed[1]
        process.send("q")
        assert process.process.wait(timeout=90) == 0, process.output()
    finally:
        if process.process.poll() is None:
            os.killpg(process.process.pid, signal.SIGKILL)
            process.process.wait()


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get)")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # Playwright gives every launch a fresh, empty profile directory.
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(
    browser: Browser, demo: tuple[DemoProcess, str], request: pytest.FixtureRequest
) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    opened = await context.new_page()
    opened.set_default_timeout(STEP_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    await opened.goto(demo[1])
    yield opened
    await opened.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    await context.close()
    assert errors == [], errors  # no script error on the page


async def leader_of(page: Page) -> str:
    """Once the members table shows exactly one leader among three members, its name."""
    await page.wait_for_function(
        """() => document.querySelectorAll('#members tbody tr[data-member]').length === 3
            && document.querySelectorAll('#members tbody tr[data-role="leader"]').length === 1"""
    )
    name = await page.get_attribute('#members tbody tr[data-role="leader"]', "data-member")
    assert name is not None
    return name


async def running_pods(page: Page, count: int) -> list[str]:
    """Wait until exactly ``count`` pods of the Deployment show, all Running; their keys."""
    await page.wait_for_function(
        """(count) => {
            const rows = document.querySelectorAll('#pods tbody tr[data-deployment="web"]');
            return rows.length === count
                && [...rows].every((row) => row.dataset.phase === 'Running');
        }""",
        arg=count,
    )
    keys = await page.eval_on_selector_all(
        '#pods tbody tr[data-deployment="web"]', "rows => rows.map(row => row.dataset.key)"
    )
    return [str(key) for key in keys]


async def act_until_done(page: Page, button: str) -> str:
    """Click an action button; a conflict (the object moved meanwhile) is shown, then retried
    with the version the page now shows. Returns the success message."""
    result = page.locator("#action-result")
    for _ in range(10):
        await result.evaluate("(box) => { box.hidden = true; box.dataset.outcome = ''; }")
        await page.click(button)
        # The outcome is shown once the store answered.
        await page.wait_for_function(
            "() => document.querySelector('#action-result').dataset.outcome"
        )
        text = await result.text_content() or ""
        if await result.get_attribute("data-outcome") == "ok":
            return text
        assert text.startswith("Conflict:"), text
    pytest.fail(f"{button}: still conflicting after 10 attempts")


async def test_store_page_shows_three_members_and_one_leader(
    page: Page, demo: tuple[DemoProcess, str]
) -> None:
    leader = await leader_of(page)
    assert leader in {"kv0", "kv1", "kv2"}
    assert await page.text_content('[data-tile="leader"] .value') == leader
    assert await page.text_content('[data-tile="members"] .value') == "3/3"
    # Every other page, live too: each gets its screenshot.
    for name in PAGES:
        await page.goto(f"{demo[1]}#{name}")
        if name == "store":
            await leader_of(page)
            await page.wait_for_function(
                "() => document.querySelectorAll('#rate-chart polyline').length === 2"
            )
        elif name == "control-plane":
            await page.wait_for_function(
                """() => ['kube-controller-manager', 'kube-scheduler'].every((lock) => {
                    const key = `kube-system/${lock}`;
                    const row = document.querySelector(`#locks tr[data-lock="${key}"]`);
                    return row && row.dataset.holder;
                })"""
            )
        elif name == "workloads":
            await running_pods(page, await desired(page))
        else:
            await page.click('#keys-list li[data-folder="/registry/pods/"]')
            await page.wait_for_selector("#keys-list li[data-folder='/registry/pods/default/']")
            await page.click("#keys-list li[data-folder='/registry/pods/default/']")
            await page.click("#keys-list li[data-key]")
            await page.wait_for_selector('#key-value[data-kind="json"]')
            await page.wait_for_selector("#key-history tbody tr")
        await page.screenshot(path=ARTIFACTS / f"page-{name}.png", full_page=True)
        assert (await anyio.Path(ARTIFACTS / f"page-{name}.png").stat()).st_size > 10_000


async def desired(page: Page) -> int:
    await page.wait_for_selector(DEPLOYMENT)
    value = await page.get_attribute(DEPLOYMENT, "data-desired")
    return int(value or 0)


async def test_scaling_the_deployment_from_the_page_runs_eight_pods(
    page: Page, demo: tuple[DemoProcess, str]
) -> None:
    await page.goto(f"{demo[1]}#workloads")
    await running_pods(page, await desired(page))
    await page.fill(f"{DEPLOYMENT} input", "8")
    message = await act_until_done(page, f'{DEPLOYMENT} button[data-action="scale"]')
    assert message == "Scaled Deployment default/web to 8"
    pods = await running_pods(page, 8)
    assert len(set(pods)) == 8
    # The Deployment's status as its controller reports it: the scale is complete, with
    # one revision, whose ReplicaSet (listed on its row) was scaled to 8 by the controller.
    await page.wait_for_function(
        """(row) => {
            const d = document.querySelector(row).dataset;
            return d.updated === '8' && d.ready === '8' && d.available === '8'
                && d.rollout === 'complete';
        }""",
        arg=DEPLOYMENT,
    )
    assert await page.get_attribute(DEPLOYMENT, "data-revision") == "1"
    owned = page.locator('#replicasets tbody tr[data-deployment="web"]')
    assert await owned.count() == 1
    assert await owned.get_attribute("data-desired") == "8"
    name = (await owned.get_attribute("data-key") or "").split("/")[1]
    assert name.startswith("web-")
    assert await page.locator(f'{DEPLOYMENT} [data-replicaset="{name}"]').count() == 1
    # Its ReplicaSet is scaled through the Deployment only: no scale control of its own.
    assert await owned.locator('button[data-action="scale"]').count() == 0


async def test_a_pod_deleted_from_the_page_is_replaced(
    page: Page, demo: tuple[DemoProcess, str]
) -> None:
    await page.goto(f"{demo[1]}#workloads")
    count = await desired(page)
    before = await running_pods(page, count)
    victim = before[0]
    message = await act_until_done(
        page, f'#pods tr[data-key="{victim}"] button[data-action="delete"]'
    )
    assert message == f"Deleted pod {victim}"
    await page.wait_for_selector(f'#pods tr[data-key="{victim}"]', state="detached")
    after = await running_pods(page, count)
    assert victim not in after
    assert len(set(after) - set(before)) == 1  # one new pod took its place


async def test_killing_the_store_leader_moves_the_mark_without_a_reload(
    page: Page, demo: tuple[DemoProcess, str]
) -> None:
    process = demo[0]
    leader = await leader_of(page)
    await page.evaluate("() => { window.notReloaded = true; }")
    start = len(process.lines)
    process.send("s")
    _, killed = await anyio.to_thread.run_sync(
        process.wait_for, r"killed store member (kv\d), the leader", start
    )
    assert killed[1] == leader
    await page.wait_for_function(
        """(old) => {
            const leaders = document.querySelectorAll('#members tbody tr[data-role="leader"]');
            const dead = document.querySelector(`#members tbody tr[data-member="${old}"]`);
            return leaders.length === 1 && leaders[0].dataset.member !== old
                && dead && dead.dataset.role === 'down';
        }""",
        arg=leader,
    )
    new_leader = await leader_of_after(page)
    assert new_leader != leader
    assert await page.evaluate("() => window.notReloaded === true")
    # The timeline lists the change, and the chart draws both leaders.
    await page.wait_for_function(
        "(name) => [...document.querySelectorAll('#leader-changes td')]"
        ".some((cell) => cell.textContent === name)",
        arg=new_leader,
    )


async def leader_of_after(page: Page) -> str:
    name = await page.get_attribute('#members tbody tr[data-role="leader"]', "data-member")
    assert name is not None
    return name
