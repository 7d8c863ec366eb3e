"""/docs and /redoc render without internet: their pages load Swagger UI and ReDoc from the
serving app itself, not from a CDN. The app's own ASGI object answers, in process (no Ray)."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from ray import cloudpickle

from serving.app import api


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def _get(path: str, app: FastAPI = api) -> Answer:
    """GET ``path`` from ``app``, as an ASGI server would send it."""
    sent: list[dict[str, object]] = []
    answered = asyncio.Event()

    async def receive() -> dict[str, object]:
        if not sent and not answered.is_set():
            answered.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # the client never disconnects while the response streams
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def call() -> None:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"testserver")], "server": ("testserver", 80), "client": ("127.0.0.1", 1),
        }  # fmt: skip
        await app(scope, receive, send)  # type: ignore[arg-type]

    asyncio.run(asyncio.wait_for(call(), timeout=30))
    start = next(message for message in sent if message["type"] == "http.response.start")
    headers = dict(start["headers"])  # type: ignore[call-overload]
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")  # type: ignore[misc]
    return Answer(int(start["status"]), headers.get(b"content-type", b"").decode(), body)  # type: ignore[call-overload]


def _references(html: str) -> list[str]:
    """Every URL the page loads: src and href attributes and the quoted URLs in its scripts."""
    attributes = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    in_scripts = re.findall(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""", html)
    return attributes + in_scripts


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_the_docs_pages_load_only_files_the_app_serves(page: str, script: str) -> None:
    answer = _get(page)
    assert answer.status == 200 and answer.content_type.startswith("text/html")
    html = answer.body.decode()
    assert "http://" not in html and "https://" not in html  # no CDN, no web fonts
    references = _references(html)
    assert "/openapi.json" in references
    assert any(url.endswith(script) for url in references)
    for url in references:
        assert url.startswith("/") and not url.startswith("//"), url
        fetched = _get(url)
        assert fetched.status == 200, url
        kind = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
        expected = next(value for suffix, value in kind.items() if url.endswith(suffix))
        assert expected in fetched.content_type, (url, fetched.content_type)
        assert len(fetched.body) > 1000 or url.endswith(".png"), url


def test_swagger_ui_reads_the_openapi_version_the_app_writes() -> None:
    """FastAPI writes OpenAPI 3.1, which Swagger UI renders only from version 5 on (4.x shows
    'Unable to render this definition')."""
    spec = json.loads(_get("/openapi.json").body)
    assert spec["openapi"].startswith("3.1")
    assert {"/recommend", "/retrieve", "/rank", "/healthz"} <= set(spec["paths"])
    html = _get("/docs").body.decode()
    [bundle] = [url for url in _references(html) if url.endswith("swagger-ui-bundle.js")]
    source = _get(bundle).body.decode()
    assert "SwaggerUIBundle" in source
    [major] = re.findall(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', source)
    assert int(major) >= 5


def test_ray_serves_copy_of_the_app_serves_them_too() -> None:
    """@serve.ingress runs a pickled copy of the app in each replica: the copy keeps the static files."""
    copy = cloudpickle.loads(cloudpickle.dumps(api))
    html = _get("/docs", copy).body.decode()
    for url in _references(html):
        assert _get(url, copy).status == 200, url
