"""The dashboard over HTTP, without a browser: every page answers, who may use it, that forms need the page's
secret, that it never writes, and what it shows."""

from __future__ import annotations

import re
import socket
import sqlite3

import pytest
from starlette.testclient import TestClient

from tuneloop.dashboard import access, make_app, serve
from tuneloop.errors import ConfigError, RunNotFoundError
from tuneloop.store.registry import Registry
from tuneloop.store.workspace import Workspace

LOCAL = "http://127.0.0.1"


def local_client(workspace) -> TestClient:
    _, hosts, _ = access("127.0.0.1", 8765)
    return TestClient(make_app(workspace, allowed_hosts=hosts), base_url=LOCAL)


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_every_page_answers_and_links_to_what_it_names(filled_workspace):
    client = local_client(filled_workspace)
    index = client.get("/")
    assert index.status_code == 200 and "digits-study" in index.text
    study = client.get("/studies/digits-study")
    assert study.status_code == 200
    assert all(part in study.text for part in ("Decision timeline", 'id="trials"', 'id="curves-data"'))
    run_ids = re.findall(r'href="/runs/([^"]+)"', client.get("/runs").text)
    assert len(run_ids) == len(set(run_ids)) >= 7  # 4 trials, the base model, 2 updates
    for run_id in run_ids:
        assert client.get(f"/runs/{run_id}").status_code == 200
    model = client.get("/registry/digits")
    assert model.status_code == 200 and "refused" in model.text and "drift, and the model is worse" in model.text
    assert client.get("/registry").status_code == 200
    for panel in ("importance", "seeds", "predictions"):
        drawn = client.get(f"/studies/digits-study/panels/{panel}")
        assert drawn.status_code == 200 and "<section>" in drawn.text
    assert 'src="data:image/png;base64,' in client.get("/studies/digits-study/panels/predictions").text
    live = client.get("/studies/digits-study/live").json()
    assert live["state"] == {"status": "finished", "trials": 4, "completed": 4,
                             "stop_reason": live["state"]["stop_reason"]}
    assert len(live["curves"]["trials"]) == 4 and live["trials"].count('class="trial') == 4
    tag = client.get("/studies/digits-study/live").headers["etag"]
    unchanged = client.get("/studies/digits-study/live", headers={"if-none-match": tag})
    assert unchanged.status_code == 304 and not unchanged.content, "an unchanged study costs the poll nothing"
    assert client.get("/studies/digits-study/live", headers={"if-none-match": '"old"'}).status_code == 200
    table_run = re.search(r'href="/runs/([^"]+)"', study.text).group(1)
    recipe = client.get(f"/runs/{table_run}").text.split("<h2>Recipe</h2>")[1].split("</table>")[0]
    assert "hidden_units" in recipe and "lora_rank" not in recipe, "only the knobs a table's MLP reads"
    for missing in ("/studies/nope", "/runs/nope", "/registry/nope", "/studies/nope/live"):
        assert client.get(missing).status_code == 404
    assert "script-src 'self'" in index.headers["content-security-policy"]
    assert client.get("/static/chart.umd.min.js").status_code == 200


def test_a_loopback_dashboard_answers_only_to_loopback_host_names(filled_workspace):
    client = local_client(filled_workspace)
    assert client.get("/", headers={"host": "localhost:8765"}).status_code == 200
    # A page elsewhere that rebinds its own name to 127.0.0.1 still sends its own name.
    assert client.get("/", headers={"host": "attacker.example"}).status_code == 400


def test_beyond_this_machine_every_request_needs_the_token(filled_workspace):
    token, hosts, address = access("0.0.0.0", 9000)
    assert token and hosts is None and address.endswith(f":9000/?token={token}")
    assert access("0.0.0.0", 9000, token="chosen")[0] == "chosen"
    client = TestClient(make_app(filled_workspace, token="s3cret"), base_url="http://192.0.2.1")
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    entered = client.get("/runs?token=s3cret", follow_redirects=False)
    assert entered.status_code == 303 and entered.headers["location"] == "/runs", "the token leaves the address"
    assert client.get("/runs").status_code == 200, "then the cookie carries it"
    with pytest.raises(ConfigError, match="token"):
        access("127.0.0.1", 8765, token="needless")


def test_a_form_without_the_pages_secret_changes_nothing(workspace_copy):
    client = local_client(workspace_copy)
    posted = client.post("/registry/digits/promote", data={"version": "3", "reason": "r", "csrf": "guessed"})
    assert posted.status_code == 403
    secret = csrf_of(client.get("/registry/digits").text)
    other = client.post("/registry/digits/archive", data={"version": "3", "reason": "r", "csrf": secret})
    assert other.status_code == 404, "only promote and roll back are offered"
    with Workspace.open(workspace_copy) as store:
        assert Registry(store).production("digits").version == 1


def test_promote_and_roll_back_record_the_reason_and_escape_it(workspace_copy):
    client = local_client(workspace_copy)
    secret = csrf_of(client.get("/registry/digits").text)
    missing = client.post("/registry/digits/promote", data={"version": "3", "reason": " ", "csrf": secret})
    assert missing.status_code == 400 and "Give a reason" in missing.text
    promoted = client.post("/registry/digits/promote", data={"version": "3", "reason": "<b>new digits</b>",
                                                             "csrf": secret})
    assert promoted.status_code == 200 and "digits:3 is production" in promoted.text
    assert "&lt;b&gt;new digits&lt;/b&gt;" in promoted.text and "<b>new digits</b>" not in promoted.text
    back = client.post("/registry/digits/rollback", data={"version": "1", "reason": "the old one", "csrf": secret})
    assert back.status_code == 200 and "digits:1 is production again" in back.text
    with Workspace.open(workspace_copy) as store:
        registry = Registry(store)
        assert registry.production("digits").version == 1
        assert [(e["action"], e["version"], e["reason"]) for e in registry.events("digits")][-2:] == [
            ("promote", 3, "<b>new digits</b>"), ("rollback", 1, "the old one")]


def test_the_dashboards_connection_refuses_writes(filled_workspace, store):
    if store is not None:
        with Workspace.open(filled_workspace.parent / "pg", create=True, store=store):
            pass
        folder = filled_workspace.parent / "pg"
    else:
        folder = filled_workspace
    with Workspace.open(folder, read_only=True) as reader:
        assert reader.studies() is not None
        with pytest.raises(Exception, match="(?i)read.?only"):
            reader.record_drift("digits", 1, "x.csv", {})
    if store is None:
        with pytest.raises(sqlite3.OperationalError):
            Workspace.open(folder, read_only=True).connection.execute("DELETE FROM runs")


def test_a_missing_workspace_or_a_taken_port_is_a_clear_error(filled_workspace, tmp_path):
    with pytest.raises(RunNotFoundError, match="no tuneloop workspace"):
        make_app(tmp_path / "none")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="--port"):
            serve(filled_workspace, port=taken.getsockname()[1])
