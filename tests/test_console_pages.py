"""The console's pages work on a network with no internet: every script and style they load is the
console's own, the browser is told to load nothing else, and the API's contract is published."""

from __future__ import annotations

import re
from importlib import resources

from tests.console_stack import client, console_config, running_console
from weldstream.console.app import PAGES

STATIC = resources.files("weldstream.console") / "static"
REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
CONTRACT = ("/api/review", "/api/review/{scan_id}/claim", "/api/review/{scan_id}/scan.png",
            "/api/review/{scan_id}/prelabel.png", "/api/review/{scan_id}/label", "/api/review/{scan_id}/reject",
            "/api/segment", "/api/segment/{key}/mask.png", "/api/datasets", "/api/jobs/{job_id}")


def test_every_page_loads_only_the_consoles_own_files():
    for page in PAGES:
        html = (STATIC / f"{page}.html").read_text()
        assert "<script>" not in html, page  # no inline script: the policy below forbids it
        for reference in REFERENCE.findall(html):
            assert reference.startswith("/static/") and (STATIC / reference.removeprefix("/static/")).is_file(), \
                (page, reference)
    for script in STATIC.iterdir():
        if script.name.endswith(".js"):
            text = script.read_text()
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), script.name  # the SVG namespace only


async def test_pages_carry_a_policy_that_forbids_anything_else_and_the_api_is_published(tmp_path):
    async with running_console(console_config(tmp_path, None)) as url, client(url) as http:
        for page in PAGES:
            answer = await http.get(f"/{page}")
            assert answer.status_code == 200 and "text/html" in answer.headers["content-type"], page
            policy = answer.headers["content-security-policy"]
            assert "default-src 'self'" in policy and "script-src 'self'" in policy
            assert "frame-ancestors 'none'" in policy
        assert (await http.get("/docs")).status_code == 404  # FastAPI's docs page would load a CDN's scripts
        assert (await http.get("/nowhere")).status_code == 404
        paths = (await http.get("/openapi.json")).json()["paths"]
        missing = [p for p in CONTRACT if p not in paths]
        assert not missing, (missing, sorted(paths))
