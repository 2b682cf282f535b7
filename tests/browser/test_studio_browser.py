"""Vesper Studio in headless Chromium: every page, a live training with Stop/Resume, data inspect, a benchmark
to its plots, chat (or its not-available state), and the guards (missing token, forged request, traversal).

Set VESPER_STUDIO_SCREENSHOTS=DIR to save a PNG of each page there (docs/studio/ holds the README's).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a server, Chromium and real trainings
SHOTS = os.environ.get("VESPER_STUDIO_SCREENSHOTS")


def _shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=name == "data")


@pytest.fixture(scope="module")
def page(browser, server):
    url, _, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(90_000)
    assert page.goto(url).status == 200
    yield page
    context.close()


def test_every_page_opens(page, server):
    _, base, _ = server
    for name, heading in (("runs", "Runs"), ("train", "Train"), ("benchmark", "Benchmark"), ("chat", "Chat"),
                          ("data", "Data"), ("models", "Models")):
        response = page.goto(f"{base}/{name}")
        assert response.status == 200
        assert page.locator("h1").first.inner_text().startswith(heading)
    assert page.evaluate("typeof Plotly") == "object"  # plotly.js served locally
    page.goto(f"{base}/models")
    assert "Machine" in page.content()
    _shot(page, "models")


def test_train_chart_grows_stop_resume(page, server):
    _, base, workspace = server
    page.goto(f"{base}/train")
    page.fill("#train-name", "browser-run")
    page.select_option("#train-dataset", "corpus.txt")
    page.select_option("#train-tokenizer", "byte")
    page.select_option("#train-preset", "nano")
    page.fill("input[name=seq_len]", "16")
    page.fill("input[name=batch_size]", "2")
    page.fill("#train-steps", "3000")
    page.fill("input[name=eval_every]", "5")
    page.wait_for_selector("#scale-result table")
    assert "20 tokens per parameter" in page.inner_text("#scale-result")
    _shot(page, "train")
    page.click("#train-start")
    page.wait_for_url("**/runs/runs/browser-run")
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points || 0) >= 3")
    first = int(page.get_attribute("#chart-loss", "data-points"))
    page.wait_for_function(f"Number(document.getElementById('chart-loss').dataset.points) > {first}")
    _shot(page, "runs-live")
    page.click("#stop-button")
    page.wait_for_function("document.getElementById('run-status').textContent.startsWith('stopped')")
    page.wait_for_selector("#checkpoints em")  # the emergency checkpoint is listed
    emergency = [p for p in (workspace / "runs" / "browser-run").glob("checkpoint-emergency-step*.safetensors")
                 if not p.name.endswith(".state.safetensors")]
    assert len(emergency) == 1
    stopped_at = int(page.inner_text("#run-step"))
    page.wait_for_function("!document.getElementById('resume-button').disabled")
    page.click("#resume-button")
    page.wait_for_function(f"Number(document.getElementById('run-step').textContent) > {stopped_at}")
    page.click("#stop-button")
    page.wait_for_function("document.getElementById('run-status').textContent.startsWith('stopped')")
    page.goto(f"{base}/runs")
    assert "browser-run" in page.inner_text("#runs-table")
    _shot(page, "runs")


def test_data_inspect(page, server):
    _, base, workspace = server
    page.goto(f"{base}/data")
    page.select_option("#inspect-file", "corpus.txt")
    page.click("#inspect-button")
    page.wait_for_selector("#inspect-table")
    assert page.inner_text("#inspect-format") == "text"
    size = (workspace / "corpus.txt").stat().st_size
    assert page.inner_text("#inspect-tokens").replace(",", "") == str(size)
    page.select_option("#inspect-file", "pairs.jsonl")
    page.click("#inspect-button")
    page.wait_for_function("document.getElementById('inspect-result').textContent.includes('instruction / response')")
    page.fill("#fineweb-tokens", "1M")
    page.click("#fineweb-form button")
    page.wait_for_function("document.getElementById('download-result').textContent.includes('offline')")
    _shot(page, "data")


def test_benchmark_to_plots(page, server):
    _, base, _ = server
    page.goto(f"{base}/benchmark")
    page.fill("#bench-name", "browser-bench")
    page.select_option("#bench-dataset", "corpus.txt")
    assert page.input_value("#bench-preset") == "nano"  # the default
    page.fill("input[name=seq_len]", "16")
    page.fill("input[name=batch_size]", "2")
    page.fill("input[name=max_steps]", "8")
    page.click("#bench-start")
    page.wait_for_url("**/benchmark/browser-bench")
    page.wait_for_selector("#chart-bench-loss[data-drawn='1']", timeout=120_000)
    rows = page.locator("#report-table tr")
    assert rows.count() == 3  # header + velvet + adamw
    assert page.locator("#chart-bench-loss .scatterlayer .trace").count() == 2
    _shot(page, "benchmark")
    page.goto(f"{base}/benchmark")
    assert "browser-bench" in page.inner_text("#reports")


def _chat_checkpoint(workspace: Path) -> str:
    """A nano fine-tuned for two steps on conversations (its tokenizer has the chat tokens), workspace-relative."""
    import json

    from tests.cli.conftest import run_subprocess

    turns = [{"messages": [{"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": "hi there"}]}
             for i in range(8)]
    (workspace / "chat.jsonl").write_text("".join(json.dumps(t) + "\n" for t in turns), encoding="utf-8")
    common = ("--max-steps", "2", "--seq-len", "48", "--batch-size", "2", "--save-every", "0", "--device", "cpu")
    for args in (("--dataset", "corpus.txt", "--model-size", "nano", "--output-dir", "runs/chat-base"),
                 ("--init-from", "runs/chat-base", "--dataset", "chat.jsonl", "--output-dir", "runs/chat-sft")):
        done = run_subprocess("train", *args, *common, cwd=workspace)
        assert done.returncode == 0, done.stderr
    return "runs/chat-sft/checkpoint-final.safetensors"


def test_chat(page, server):
    from vesper_cli.studio.features import chat_available

    _, base, workspace = server
    page.goto(f"{base}/chat")
    if not chat_available():
        assert "not available in this build" in page.inner_text("#chat-unavailable")
        _shot(page, "chat")
        return
    checkpoint = _chat_checkpoint(workspace)
    page.reload()
    page.select_option("#chat-checkpoint", checkpoint)
    page.click("#chat-open")
    page.wait_for_function("document.getElementById('message').textContent.includes('loaded')")
    for turn, text in enumerate(("hello", "and again"), start=1):
        page.fill("#chat-input", text)
        page.click("#chat-send")
        page.wait_for_function(f"document.querySelectorAll('.chat-log .assistant[data-done=\"1\"]').length >= {turn}")
    assert page.locator(".chat-log .user").count() == 2
    assert all(len(reply) > 0 for reply in page.locator(".chat-log .assistant").all_inner_texts())
    _shot(page, "chat")


def test_guards_in_the_browser(browser, server):
    url, base, _ = server
    context = browser.new_context()
    page = context.new_page()
    assert page.goto(f"{base}/runs").status == 401  # no token
    assert page.goto(url).status == 200
    assert page.goto(f"{base}/api/inspect?path=../../etc/passwd").status == 403
    assert page.goto(f"{base}/api/inspect?path=%2Fetc%2Fpasswd").status == 403
    status = page.evaluate("""async () => (await fetch('/api/stop', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify({job: '1'})})).status""")
    assert status == 403  # same page, but no CSRF header
    token = url.split("token=")[1]
    page.set_content(f"<form id=f method=post action='{base}/api/train?token={token}'>"
                     f"<input name=name value=forged></form>")
    with page.expect_navigation():
        page.evaluate("document.getElementById('f').submit()")
    assert "Refused" in page.content()
    context.close()
