"""What a person sees in ``mlflow ui``, checked in a real browser (Debian's Chromium driven
by Playwright) against a store holding a short reference sweep.

The journey starts where a user starts: the ``then open http://...`` address the sweep
printed, mapped to the test's server. Each page visited is saved as a full-page
screenshot in ``tests/output/browser/`` (printed at the end of the module).

Needs ``playwright`` (the ``test`` extra) and ``/usr/bin/chromium`` (``apt-get install
chromium``; ``.ci/run`` installs it); skipped without them, except in CI, where it fails.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow.tracking import MlflowClient

# pytest puts tests/ on sys.path (no __init__.py): share the server helpers.
from test_serving import start_server, stop_server

pytestmark = [pytest.mark.mnist, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags Chromium keeps calling home, which this closed network
# refuses; --no-sandbox because tests run as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = Path(__file__).parent / "output" / "browser"
EPOCHS = 2
N_CHILDREN = 4
UI_START_SECONDS = 120  # mlflow ui takes ~10-35 s to answer on two busy cores
WAIT_MS = 30_000  # the longest any element may take to appear
# MLflow 3.17's UI shows an experiment as classic model training only with this
# query parameter (or after the user flips its sidebar switch, remembered per browser).
MODEL_TRAINING = "workflowType=machine_learning"


@dataclass(frozen=True)
class Sweep:
    """The store a short reference sweep left, and what it printed."""

    folder: Path
    tracking_uri: str
    printed_address: str  # the "then open" address, as printed
    experiment_id: str
    parent_run_id: str
    child_names: list[str]  # in start order


def require_browser() -> None:
    """Skip without playwright or Chromium; in CI (CI=true) fail instead."""
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        problems.append(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    if problems:
        message = "browser test cannot run: " + "; ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_sweep(mnist_dir: Path, folder: Path) -> Sweep:
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [
        *(sys.executable, "-m", "mnist_lr.run", "+sweep=reference"),
        f"train.epochs={EPOCHS}",
        f"tracking.uri={tracking_uri}",
        f"data.dir={mnist_dir}",
    ]
    completed = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=900)
    output = completed.stdout + completed.stderr
    (folder / "sweep.log").write_text(output)
    assert completed.returncode == 0, output[-4000:]
    addresses = re.findall(r"then open (http\S+)", output)
    assert addresses, f"the sweep printed no 'then open' address:\n{output[-4000:]}"

    client = MlflowClient(tracking_uri)
    parents = client.search_runs(
        [client.get_experiment_by_name("mnist-lr").experiment_id],
        filter_string="tags.sweep = 'reference'",
    )
    assert len(parents) == 1, f"{len(parents)} sweep parent runs; see {folder / 'sweep.log'}"
    parent = parents[0]
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return Sweep(
        folder,
        tracking_uri,
        addresses[-1],
        parent.info.experiment_id,
        parent.info.run_id,
        [child.info.run_name for child in children],
    )


def wait_until_answering(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow ui exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    pytest.fail(f"mlflow ui did not answer {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def sweep(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    require_browser()
    return run_sweep(mnist_dir, tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def ui_base(sweep: Sweep) -> Iterator[str]:
    """``mlflow ui`` on a free loopback port over the sweep's store; its base URL."""
    port = free_port()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        *(sys.executable, "-m", "mlflow", "ui"),
        *("--backend-store-uri", sweep.tracking_uri),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    server = start_server(command, sweep.folder, env, "mlflow-ui.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{base}/", server, UI_START_SECONDS)
        yield base
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def browser(ui_base: str):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()
    print(f"\nbrowser screenshots: {SCREENSHOTS}")


@pytest.fixture
def page(browser):
    """A fresh browser profile per test, as a first-time visitor."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def on_test_server(address: str, base: str) -> str:
    """``address`` as printed (default host and port) pointed at the test's server."""
    server = urlsplit(base)
    return urlsplit(address)._replace(scheme=server.scheme, netloc=server.netloc).geturl()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # Finite CSS animations (the artifact tree unfolding) are shown at their end state.
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path


def close_assistant(page) -> None:
    """MLflow 3.17 opens an assistant panel beside every page; close it to see the page."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count() and close.first.is_visible():
        close.first.click()


def expect_model_training_view(page) -> None:
    """The sidebar of MLflow's classic model-training view (Runs, Models, Model registry),
    not the GenAI one (Overview, Traces, Evaluation runs, ...)."""
    from playwright.sync_api import expect

    wrong_view = (
        f"{page.url} is not in MLflow's model-training view (the GenAI sidebar shows); "
        f"MLflow 3.17 needs ?{MODEL_TRAINING} in the address (tracking.experiment_url)"
    )
    navigation = page.get_by_role("navigation")
    model_registry = navigation.get_by_role("link", name="Model registry", exact=True)
    expect(model_registry, wrong_view).to_be_visible()
    expect(navigation.get_by_role("link", name="Evaluation runs"), wrong_view).to_have_count(0)


def open_training_runs(page, ui_base: str, sweep: Sweep) -> None:
    page.goto(f"{ui_base}/#/experiments/{sweep.experiment_id}/runs?{MODEL_TRAINING}")
    page.get_by_role("link", name="reference", exact=True).wait_for()
    close_assistant(page)


def expand_parent(page, sweep: Sweep) -> None:
    """Click the expander in the parent row and wait for its children to be listed."""
    cell = page.get_by_role("gridcell").filter(
        has=page.get_by_role("link", name="reference", exact=True)
    )
    cell.get_by_role("button").click()
    page.get_by_role("link", name=sweep.child_names[-1], exact=True).wait_for()


def run_links(page) -> list[str]:
    return [link.inner_text() for link in page.get_by_role("grid").get_by_role("link").all()]


def open_artifact(page, *names: str) -> None:
    """Click through the artifact tree, e.g. ``("plots", "loss.png")``."""
    for name in names:
        page.get_by_text(name, exact=True).first.click()


def expect_image_shown(page, name: str) -> None:
    """The previewed artifact ``name`` is on screen as a decoded image."""
    from playwright.sync_api import expect

    expect(page.get_by_text(re.compile(rf"/{re.escape(name)}$")).first).to_be_visible()
    image = page.locator("img").first
    expect(image).to_be_visible()
    page.wait_for_function(
        "image => image.complete && image.naturalWidth > 0", arg=image.element_handle()
    )
    assert image.evaluate("image => image.naturalWidth") >= 400


def test_printed_address_opens_the_sweep_in_the_model_training_view(page, ui_base, sweep):
    from playwright.sync_api import expect

    assert urlsplit(sweep.printed_address).netloc == "127.0.0.1:5000", sweep.printed_address

    page.goto(on_test_server(sweep.printed_address, ui_base))
    expect(page.get_by_role("heading", name="reference", exact=True)).to_be_visible()
    for child in sweep.child_names:  # the overview's "Child runs"
        expect(page.get_by_role("link", name=child, exact=True)).to_be_visible()
    close_assistant(page)
    screenshot(page, "01_printed_address")

    expect_model_training_view(page)


def test_training_runs_table_lists_the_sweep_as_one_parent_of_four_children(page, ui_base, sweep):
    from playwright.sync_api import expect

    page.goto(on_test_server(sweep.printed_address, ui_base))
    close_assistant(page)
    page.get_by_role("link", name="Runs", exact=True).first.click()
    expect(page.get_by_role("columnheader", name="Run Name").first).to_be_visible()
    expect(page.get_by_role("link", name="reference", exact=True)).to_be_visible()
    close_assistant(page)

    assert run_links(page) == ["reference"], "only the parent is listed before expanding"
    expand_parent(page, sweep)
    screenshot(page, "02_training_runs_expanded")

    assert len(sweep.child_names) == N_CHILDREN
    assert sorted(run_links(page)) == sorted(["reference", *sweep.child_names])
    expect_model_training_view(page)


def test_child_run_shows_metric_charts_with_every_epoch(page, ui_base, sweep):
    from playwright.sync_api import expect

    child = sweep.child_names[1]
    open_training_runs(page, ui_base, sweep)
    expand_parent(page, sweep)
    page.get_by_role("link", name=child, exact=True).click()
    expect(page.get_by_role("heading", name=child, exact=True)).to_be_visible()
    close_assistant(page)

    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_placeholder("Search metric charts").fill("test/")
    for metric in ("test/accuracy", "test/loss"):
        expect(page.get_by_text(f"{child} ({metric})", exact=True)).to_be_visible()
    charts = page.locator(".js-plotly-plot")
    expect(charts).to_have_count(2)
    time.sleep(1)  # let Plotly finish drawing before the picture
    screenshot(page, "03_child_model_metrics")

    for chart in charts.all():
        points = [trace.locator("path.point").count() for trace in chart.locator("g.trace").all()]
        assert max(points) == EPOCHS, f"a chart shows {max(points)} points, not {EPOCHS}"


def test_child_run_artifacts_show_the_curves_and_pictures(page, ui_base, sweep):
    from playwright.sync_api import expect

    child = sweep.child_names[1]
    open_training_runs(page, ui_base, sweep)
    expand_parent(page, sweep)
    page.get_by_role("link", name=child, exact=True).click()
    expect(page.get_by_role("heading", name=child, exact=True)).to_be_visible()
    close_assistant(page)
    page.get_by_role("tab", name="Artifacts").click()

    for folder in ("model", "plots"):
        expect(page.get_by_text(folder, exact=True)).to_be_visible()
    open_artifact(page, "plots", "loss.png")
    for picture in ("accuracy.png", "weights.png", "confusion_matrix.png", "misclassified.png"):
        expect(page.get_by_text(picture, exact=True)).to_be_visible()
    expect_image_shown(page, "plots/loss.png")
    screenshot(page, "04_child_artifact_loss")

    for picture, name in (("accuracy.png", "05_child_artifact_accuracy"),
                          ("weights.png", "06_child_artifact_weights")):  # fmt: skip
        open_artifact(page, picture)
        expect_image_shown(page, f"plots/{picture}")
        screenshot(page, name)


def test_parent_run_artifacts_show_the_comparison(page, ui_base, sweep):
    from playwright.sync_api import expect

    open_training_runs(page, ui_base, sweep)
    page.get_by_role("link", name="reference", exact=True).click()
    expect(page.get_by_role("heading", name="reference", exact=True)).to_be_visible()
    close_assistant(page)
    page.get_by_role("tab", name="Artifacts").click()

    open_artifact(page, "compare", "table.md")
    for name in ("accuracy.png", "loss.png", "train_vs_test.png", "table.csv"):
        expect(page.get_by_text(name, exact=True)).to_be_visible()
    expect(page.get_by_text("best test accuracy @ epoch", exact=True)).to_be_visible()
    for child in sweep.child_names:
        expect(page.get_by_text(child, exact=True).first).to_be_visible()
    screenshot(page, "07_parent_comparison_table")

    open_artifact(page, "accuracy.png")
    expect_image_shown(page, "compare/accuracy.png")
    screenshot(page, "08_parent_comparison_accuracy")
