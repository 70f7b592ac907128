"""Links and run cards."""

from __future__ import annotations

from wandbflow import links
from wandbflow.display import RunCard


def test_online_urls_come_from_the_resolved_host():
    assert links.app_url(None) == "https://wandb.ai"
    assert links.app_url("https://api.wandb.ai") == "https://wandb.ai"
    assert links.app_url("https://wandb.acme.internal/") == "https://wandb.acme.internal"
    assert links.run_url(None, "me", "demo", "abc") == "https://wandb.ai/me/demo/runs/abc"
    assert links.group_url("https://w.acme", "me", "demo", "g1") == "https://w.acme/me/demo/groups/g1"
    assert links.sweep_url(None, "me", "demo", "sw1") == "https://wandb.ai/me/demo/sweeps/sw1"


def test_sync_command_quotes_paths():
    assert links.sync_command("/tmp/a b/run-1") == "wandb sync '/tmp/a b/run-1'"


def test_offline_card_shows_dir_and_sync_command_then_the_end_state():
    card = RunCard(name="prep", run_id="s-prep-1", mode="offline", run_dir="/w/offline-run-x")
    assert "wandb sync /w/offline-run-x" in card.text()
    html = card.html()
    assert "<code>/w/offline-run-x</code>" in html and "wandb sync" in html and "state" not in html
    card.state, card.exit_code, card.duration, card.summary = "failed", 1, 2.5, {"loss": 0.123456}
    assert "failed (exit 1) in 2.5s: loss=0.1235" in card.text()
    assert "failed" in card.html() and "loss=0.1235" in card.html()


def test_online_card_links_the_run_and_escapes_html():
    card = RunCard(
        name="<b>x</b>",
        run_id="r1",
        mode="online",
        url="https://wandb.ai/me/p/runs/r1",
        group="g",
        group_url="https://wandb.ai/me/p/groups/g",
    )
    assert card.where == "https://wandb.ai/me/p/runs/r1"
    assert "&lt;b&gt;x&lt;/b&gt;" in card.html() and 'href="https://wandb.ai/me/p/runs/r1"' in card.html()
    assert 'href="https://wandb.ai/me/p/groups/g"' in card.html()
