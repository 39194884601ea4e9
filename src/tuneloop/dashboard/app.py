"""The dashboard: a Starlette app of server-rendered pages over one workspace.

Pages read the workspace read-only (the database itself refuses writes on the dashboard's connections); the
only writes are promote and roll back, which go through ``continual.versions`` exactly as the command line's
``registry promote|rollback`` do, so a promotion passes the same gate and records the same reason.

Who may use it: bound to a loopback address (the default), requests must name a loopback host, which stops a
web page elsewhere from reaching the dashboard through DNS rebinding; bound to any other address, every
request needs the token printed at start (kept in a same-site cookie after the first visit). Every form
carries a per-process secret, so another site cannot post a promotion through the user's browser.
"""

from __future__ import annotations

import html
import ipaddress
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from tuneloop.dashboard import views
from tuneloop.errors import TuneloopError
from tuneloop.report import html as report
from tuneloop.store.registry import Registry
from tuneloop.store.workspace import Workspace, workspace_root

HERE = Path(__file__).parent
TOKEN_COOKIE = "tuneloop_dashboard_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
REFRESH_SECONDS = 2.0  # how often a page of a running study asks for news
PANEL_CACHE_SIZE = 64  # rendered plots (importance, seed check, predictions) kept, keyed by what they show


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenGate:
    """Every request carries the token, as ``?token=`` (then kept in a cookie and dropped from the address)
    or as the cookie; others get 401 and a page that says where the token is."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and secrets.compare_digest(given, self.token):
            rest = {k: v for k, v in request.query_params.items() if k != "token"}
            response: Response = RedirectResponse(request.url.path + (f"?{urlencode(rest)}" if rest else ""), 303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        elif secrets.compare_digest(request.cookies.get(TOKEN_COOKIE, ""), self.token):
            await self.app(scope, receive, send)
            return
        else:
            response = PlainTextResponse("This dashboard needs the token it printed when it started: open the "
                                         "address it printed (…/?token=…).", status_code=401)
        await response(scope, receive, send)


class SecurityHeaders:
    """No script but the dashboard's own files, no framing by other sites, no sniffing of types."""

    POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
              "frame-ancestors 'none'; form-action 'self'")

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(b"content-security-policy", self.POLICY.encode()),
                                       (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


class PanelCache:
    """Rendered plot panels by key; a key names what the panel shows (a study's trials as they stand), so a
    panel is drawn once per change, not once per visit."""

    def __init__(self, size: int = PANEL_CACHE_SIZE):
        self._items: OrderedDict[tuple, str] = OrderedDict()
        self._size, self._lock = size, threading.Lock()

    def get(self, key: tuple, draw: Callable[[], str | None]) -> str | None:
        """The panel ``key`` names, drawn by ``draw`` where it is not kept (None: nothing to draw, not kept)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        drawn = draw()
        if drawn is None:
            return None
        with self._lock:
            self._items[key] = drawn
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return drawn


def make_app(workspace: str | Path | None = None, *, token: str | None = None,
             allowed_hosts: list[str] | None = None) -> Starlette:
    """The dashboard over ``workspace``. ``token``: required on every request where given. ``allowed_hosts``:
    the Host names requests may carry (None: any)."""
    root = workspace_root(workspace)
    with Workspace.open(root, read_only=True):  # fail now, clearly, where there is no workspace
        pass
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(duration=report._duration, value=report._value, refresh_ms=int(REFRESH_SECONDS * 1000))
    csrf = secrets.token_urlsafe(24)
    panels = PanelCache()

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        return templates.TemplateResponse(request, name, {"root": root, "csrf": csrf, **context}, status_code=status)

    def not_found(request: Request, what: str) -> Response:
        return page(request, "message.html", {"title": "Not found", "message": what}, 404)

    def read() -> Workspace:
        return Workspace.open(root, read_only=True)

    def studies(request: Request) -> Response:
        with read() as store:
            found = views.study_summaries(store)
            counts = {"runs": len(store.runs()), "models": len(Registry(store).names())}
        return page(request, "studies.html", {"studies": found, **counts})

    def study_record(store: Workspace, study_id: str) -> report.StudyRecord | None:
        try:
            return report.read_study(store, study_id)
        except TuneloopError:
            return None

    def study_fragments(request: Request, study: report.StudyRecord) -> dict[str, Any]:
        knobs = report.varying_knobs([t["recipe"] for t in study.trials])
        table = templates.get_template("_trials.html").render(rows=views.trial_rows(study), metric=study.metric,
                                                              request=request, duration=report._duration,
                                                              value=report._value)
        return {"state": views.study_state(study), "header": report.header_section(study), "trials": table,
                "timeline": report.timeline_section(study, knobs), "curves": views.study_curves(study)}

    def study(request: Request) -> Response:
        with read() as store:
            found = study_record(store, request.path_params["study"])
        if found is None:
            return not_found(request, f"No study '{request.path_params['study']}' in {root}.")
        return page(request, "study.html", {"study": found, **study_fragments(request, found)})

    def study_live(request: Request) -> Response:
        """The study as it stands; 304 where the page's copy (``If-None-Match``) is still current, which costs a
        few queries instead of reading and drawing the whole study every poll."""
        study_id = request.path_params["study"]
        with read() as store:
            tag = f'"{views.study_fingerprint(store, study_id)}"'
            if request.headers.get("if-none-match") == tag:
                return Response(status_code=304, headers={"etag": tag})
            found = study_record(store, study_id)
        if found is None:
            return JSONResponse({"error": "no such study"}, 404)
        return JSONResponse(study_fragments(request, found), headers={"etag": tag, "cache-control": "no-cache"})

    def study_panel(request: Request) -> Response:
        study_id, kind = request.path_params["study"], request.path_params["panel"]
        drawers = {"importance": report.importance_section, "seeds": report.seed_check_section,
                   "predictions": report.confusion_section}
        if kind not in drawers:
            return HTMLResponse("<p>Not found.</p>", 404)
        with read() as store:
            # What the panel depends on: the study as it stands (a new or finished trial draws it again); the
            # study itself is read only where the panel must be drawn.
            key = (kind, study_id, views.study_fingerprint(store, study_id))

            def draw() -> str | None:
                found = study_record(store, study_id)
                return None if found is None else drawers[kind](found)

            drawn = panels.get(key, draw)
        return HTMLResponse("<p>Not found.</p>", 404) if drawn is None else HTMLResponse(drawn)

    def runs(request: Request) -> Response:
        with read() as store:
            found = views.run_summaries(store)
        return page(request, "runs.html", {"runs": found})

    def run(request: Request) -> Response:
        with read() as store:
            record = store.run(request.path_params["run"])
            if record is None:
                return not_found(request, f"No run '{request.path_params['run']}' in {root}.")
            detail = views.run_detail(store, record)
        return page(request, "run.html", detail)

    def run_panel(request: Request) -> Response:
        with read() as store:
            record = store.run(request.path_params["run"])
        if record is None:
            return HTMLResponse("<p>Not found.</p>", 404)
        return HTMLResponse(panels.get(("predictions", record.id), lambda: predictions_panel(record)))

    def registry(request: Request) -> Response:
        with read() as store:
            found = views.registry_summary(store)
        return page(request, "registry.html", {"models": found})

    def model(request: Request, notice: dict[str, Any] | None = None, status: int = 200) -> Response:
        name = request.path_params["name"]
        with read() as store:
            try:
                detail = views.model_detail(store, name)
            except TuneloopError as exc:
                return not_found(request, str(exc))
        if not detail["versions"]:
            return not_found(request, f"No model named '{name}' in {root}.")
        return page(request, "model.html", {**detail, "notice": notice}, status)

    async def change_stage(request: Request) -> Response:
        """Promote (through the gate) or roll back, with the reason the form gives; the page shows the outcome."""
        from tuneloop.continual import versions

        if request.path_params["action"] not in ("promote", "rollback"):
            return PlainTextResponse("A model's page can promote or roll back, nothing else.", 404)
        form = await request.form()
        if not secrets.compare_digest(str(form.get("csrf", "")), csrf):
            return PlainTextResponse("The form is stale or came from elsewhere: reload the page.", 403)
        name, action = request.path_params["name"], request.path_params["action"]
        reason = str(form.get("reason", "")).strip()
        version = str(form.get("version", "")).strip()
        if not reason:
            return model(request, {"ok": False, "title": f"Not {action}d", "lines": ["Give a reason: it is "
                                                                                  "recorded in the history."]}, 400)
        reference = f"{name}:{version}" if version else name
        try:
            if action == "promote":
                promotion = await run_in_threadpool(versions.promote, reference, workspace=root, reason=reason)
                lines = [check.summary for check in promotion.decision.checks] if promotion.decision else []
                notice = {"ok": True, "title": f"{promotion.version.ref} is production", "lines": lines}
            else:
                version_now = await run_in_threadpool(versions.rollback, reference, workspace=root, reason=reason)
                notice = {"ok": True, "title": f"{version_now.ref} is production again", "lines": []}
        except versions.GateRefused as refused:
            lines = [("passed: " if c.passed else "FAILED: ") + c.summary for c in refused.decision.checks]
            if refused.decision.caveat:
                lines.append(refused.decision.caveat)
            notice = {"ok": False, "title": f"The gate refused {refused.version.ref}; production is unchanged",
                      "lines": lines}
        except TuneloopError as exc:
            notice = {"ok": False, "title": f"Not {action}d", "lines": [str(exc)]}
        # A refusal is an outcome the page reports, not a failed request: 200 either way.
        return model(request, notice)

    def report_css(request: Request) -> Response:
        return Response(report.STYLE, media_type="text/css")

    def favicon(request: Request) -> Response:
        return RedirectResponse("/static/favicon.svg", 301)

    routes = [
        Route("/", studies), Route("/studies/{study}", study), Route("/studies/{study}/live", study_live),
        Route("/studies/{study}/panels/{panel}", study_panel),
        Route("/runs", runs), Route("/runs/{run}", run), Route("/runs/{run}/predictions", run_panel),
        Route("/registry", registry), Route("/registry/{name}", model),
        Route("/registry/{name}/{action:str}", change_stage, methods=["POST"]),
        Route("/report.css", report_css), Route("/favicon.ico", favicon),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    if token is not None:
        middleware.append(Middleware(TokenGate, token=token))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.root = root
    return app


def predictions_panel(record: Any) -> str:
    """A run's model on its validation data, measured now: the confusion matrix of a classifier, predicted
    against true values of a regressor or forecaster (the study report's own drawing)."""
    from tuneloop.pipeline import task_of_run
    from tuneloop.run import load_run

    title = "<h2>Predictions on the validation set</h2>"
    if record.status != "completed" or record.artifact is None:
        why = record.note or f"the run is {record.status}"
        return f"<section>{title}<p>No model to evaluate: {html.escape(why)}.</p></section>"
    try:
        task, run = task_of_run(record), load_run(record.artifact)
        return report.prediction_section(task, run, f"run {record.id}, on the validation set")
    except (TuneloopError, OSError) as exc:
        return (f"<section>{title}<p>Not available: the validation data or the model could not be read again "
                f"({html.escape(str(exc))}).</p></section>")
