"""Dashboards: TensorBoard's custom-scalars layout and HParams tab, W&B offline, and TensorBoard seen in Chromium.

The layout and hyperparameters are read back with TensorBoard's own reader, the W&B run with wandb's own
record reader. The browser test trains a tiny run, starts `tensorboard --logdir` on it and drives headless
Chromium (Debian's `chromium`, apt-installed here when missing) over the DevTools protocol: each page must
render our tags, and its screenshot is saved under the test's tmp_path.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import ROOT, SCALARS, read_rows, run_train
from smollm2.config import load_config
from smollm2.distributed import free_port
from smollm2.errors import UserError
from smollm2.metrics import DASHBOARD_LAYOUT, TENSORBOARD_TAGS, WANDB_RUN_ID_FILE, MetricsLogger, hparams
from smollm2.perf import TIME_PARTS

TASK_TAGS = ["eval/next_line/acc", "eval/next_line/acc_norm"]
SHARES = [f"time_share/{part}" for part in TIME_PARTS]  # goodput's parts, each its own tag


def test_hparams_flattens_the_config_into_numbers_and_text():
    flat = hparams({"optimizer": {"lr": 3e-3, "betas": [0.9, 0.95]}, "model": {"init_from": None, "tie": True}})
    assert flat == {
        "optimizer.lr": 3e-3,
        "optimizer.betas": "[0.9, 0.95]",
        "model.init_from": "null",
        "model.tie": "true",
    }


def test_every_chart_of_the_layout_shows_tags_a_run_writes():
    written = [*TENSORBOARD_TAGS.values(), *TASK_TAGS, *SHARES, "eval/loss/books"]
    for category, charts in DASHBOARD_LAYOUT.items():
        for title, (kind, patterns) in charts.items():
            assert kind == "Multiline"
            for pattern in patterns:
                assert any(re.search(pattern, tag) for tag in written), (
                    f"{category} / {title}: {pattern} matches nothing"
                )
    loss_chart = DASHBOARD_LAYOUT["training"]["loss: train and eval"][1]
    assert [tag for tag in written if any(re.search(p, tag) for p in loss_chart)] == ["train/loss", "eval/loss"]
    accuracy = DASHBOARD_LAYOUT["downstream tasks"]["accuracy"][1]
    assert [tag for tag in written if any(re.search(p, tag) for p in accuracy)] == ["eval/next_line/acc"]


def test_logging_wandb_accepts_off_offline_online(tmp_path):
    config_yaml = ROOT / "configs" / "smollm2-135m.yaml"
    assert load_config(config_yaml).logging.wandb is False  # `wandb: off` in YAML
    assert load_config(config_yaml, ["logging.wandb=offline"]).logging.wandb == "offline"
    with pytest.raises(UserError, match=r"logging\.wandb: expected one of \[False, 'offline', 'online'\]"):
        load_config(config_yaml, ["logging.wandb=cloud"])


def test_tensorboard_holds_the_layout_and_the_hyperparameters(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=True)
    logger.log_hparams({"optimizer": {"lr": 0.003}, "train": {"compile": False, "out_dir": "runs/x"}})
    logger.log(10, {"loss": 4.5, "eval/next_line/acc": 0.5})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    (layout_event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
    charts = {category.title: [chart.title for chart in category.chart] for category in layout.category}
    assert charts == {category: list(charts_of) for category, charts_of in DASHBOARD_LAYOUT.items()}
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.003
    assert start.hparams["train.compile"].string_value == "false"
    assert start.hparams["train.out_dir"].string_value == "runs/x"
    assert [event.value for event in events.Scalars("eval/next_line/acc")] == [0.5]


def _wandb_records(run_dir: Path) -> list:
    """The records of the W&B offline run under RUN_DIR/wandb: its .wandb file is a LevelDB-style log (a 7-byte
    ":W&B" header, then 32 KiB blocks of chunks with a 7-byte header: checksum, length, full/first/middle/last)
    of wandb's own Record protobufs."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    # wandb.finish() can return before W&B's own service process has written everything (a run on a loaded
    # machine once lacked its first history row): read the file once it holds the run's exit record.
    deadline = time.monotonic() + 60
    while True:
        records = _parse_wandb_log(path.read_bytes())
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _parse_wandb_log(data: bytes) -> list:
    from wandb.proto import wandb_internal_pb2

    assert data[:4] == b":W&B"
    position, block, records, pending = 7, 32768, [], b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        if kind == 0 or position + 7 + length > len(data):  # zeros, or a chunk being written: the end
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_gets_the_rows_samples_and_config(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False, wandb="offline")
    logger.log_hparams({"optimizer": {"lr": 0.003}})
    logger.log(10, {"loss": 4.5, "lr": 0.003, "consumed_samples": 80})
    logger.log(20, {"eval_loss": 4.0, "eval/next_line/acc": 0.5})
    logger.log_samples(20, [("To be", ", or not to be")])
    logger.close()
    run_id = (tmp_path / WANDB_RUN_ID_FILE).read_text().strip()
    records = _wandb_records(tmp_path)
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.WhichOneof("record_type") == "history"
    ]
    by_step = {row["_step"]: row for row in history}
    assert by_step[10]["train/loss"] == 4.5 and by_step[10]["train/lr"] == 0.003
    assert "consumed_samples" not in by_step[10]  # the TensorBoard tags, and only those
    assert by_step[20]["eval/loss"] == 4.0 and by_step[20]["eval/next_line/acc"] == 0.5
    assert by_step[20]["samples/_type"] == "table-file"
    config = {
        item.key: json.loads(item.value_json)
        for record in records
        if record.WhichOneof("record_type") == "config"
        for item in record.config.update
    }
    assert config["optimizer"] == {"lr": 0.003}
    # A resumed job's logger continues the same W&B run.
    MetricsLogger(tmp_path, enabled=True, tensorboard=False, wandb="offline", start_step=20).close()
    assert {path.name for path in tmp_path.glob("wandb/offline-run-*/run-*.wandb")} == {f"run-{run_id}.wandb"}


# -- TensorBoard in a browser --------------------------------------------------------------------------------


def _chromium() -> str:
    """The chromium binary; installed with apt (Debian's `chromium`) when missing, as on a fresh CI machine."""
    found = shutil.which("chromium")
    if found is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.fail("chromium is missing and cannot be apt-installed here (needs root and apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for args in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", "chromium"]):
            subprocess.run(["apt-get", *args], check=True, capture_output=True, timeout=600, env=env)
        found = shutil.which("chromium")
    return found


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: the browser
    reads NUL-terminated JSON commands on its fd 3 and answers on fd 4); no web-socket library needed."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._answers, from_browser = os.pipe()

        def as_fds_3_and_4() -> None:
            import fcntl

            # Above 4 first, so that moving one to 3 or 4 cannot overwrite the other.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",  # root in a container
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--window-size=1400,3000",  # tall: TensorBoard renders only the cards in view
                "about:blank",
            ],
            preexec_fn=as_fds_3_and_4,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._next_id = 0
        self._buffer = b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the DevTools pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:  # events and other answers are not ours
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def page_call(self, method: str, **params):
        return self.call(method, session=self.session, **params)

    def text(self) -> str:
        """All text of the page, inside the shadow roots of TensorBoard's web components too."""
        script = """(() => {
            const parts = [];
            const walk = (node) => {
                if (node.shadowRoot) walk(node.shadowRoot);
                for (const child of node.childNodes) {
                    if (child.nodeType === Node.TEXT_NODE) parts.push(child.textContent);
                    else walk(child);
                }
            };
            walk(document.body);
            return parts.join(' ');
        })()"""
        return self.page_call("Runtime.evaluate", expression=script, returnByValue=True)["result"].get("value", "")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)


def _serve_tensorboard(logdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=2) as response:
                if json.loads(response.read()):  # the run is loaded
                    return process, url
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"tensorboard --logdir {logdir} did not serve the run within 60 s")


@pytest.mark.slow
def test_tensorboard_renders_our_tags_in_chromium(tmp_path, tiny_data):
    chromium = _chromium()
    task = tmp_path / "next_line.jsonl"
    task.write_text(
        "".join(
            json.dumps({"context": context, "choices": choices, "gold": 0}) + "\n"
            for context, choices in [
                ("To be, or not", ["to be", "a king"]),
                ("Good night, sweet", ["prince", "water"]),
            ]
        )
    )
    run_dir = tmp_path / "run"
    run_train(0, f"data.path={tiny_data}", f"train.out_dir={run_dir}", "train.max_steps=6", f"eval.tasks=[{task}]")
    assert read_rows(run_dir, "eval/next_line/acc")
    server, url = _serve_tensorboard(run_dir / "tensorboard")
    browser = DevTools(chromium, tmp_path / "chromium-profile")
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    pages = [  # (screenshot name, URL fragment, texts the page must show)
        # A tag filter puts the tags it matches in one open group (a page of it holds 12 charts); each chart is
        # titled by its tag.
        (
            "scalars_train_eval",
            "scalars&tagFilter=^(train|eval)/",
            [t for t in SCALARS + TASK_TAGS if t[:5] != "perf/"],
        ),
        ("scalars_perf", "scalars&tagFilter=^(perf|time_share)/", [t for t in SCALARS if t[:5] == "perf/"] + SHARES),
        (
            "custom_scalars",
            "custom_scalars",
            ["loss: train and eval", "learning rate", "tokens per second", "accuracy"],
        ),
        ("text", "text", ["samples/0", "config", "Once upon a time"]),
        ("hparams", "hparams", ["optimizer.lr", "train.max_steps"]),
    ]
    try:
        for name, fragment, expected in pages:
            browser.page_call("Page.navigate", url=f"{url}/#{fragment}")
            deadline, missing = time.monotonic() + 20, expected
            while missing and time.monotonic() < deadline:
                time.sleep(0.5)
                text = browser.text()
                missing = [tag for tag in expected if tag not in text]
            screenshot = screenshots / f"{name}.png"
            screenshot.write_bytes(base64.b64decode(browser.page_call("Page.captureScreenshot")["data"]))
            assert not missing, f"TensorBoard's {name} page does not show {missing} (screenshot {screenshot})"
    finally:
        browser.close()
        server.kill()
        server.wait()
