"""Label Studio's REST API, the few calls weldstream makes, over plain HTTP (httpx).

Plain calls rather than the SDK's client: the SDK's dependencies would hold weldstream's numpy back. A
legacy token is sent as ``Token <key>``; a personal access token (a JWT refresh token) is first exchanged
for a short-lived access token. Errors name the call and Label Studio's answer, never the token.
"""

from __future__ import annotations

from typing import Any

import httpx

from weldstream.console.label_studio_config import LabelStudioConfig

WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


class LabelStudioError(Exception):
    """A call Label Studio refused or did not answer."""


class LabelStudio:
    def __init__(self, cfg: LabelStudioConfig) -> None:
        self.cfg = cfg
        self.http = httpx.AsyncClient(base_url=cfg.label_studio_url.rstrip("/"), verify=cfg.verify(),
                                      timeout=cfg.timeout_s)

    async def __aenter__(self) -> LabelStudio:
        token = self.cfg.token()
        if token.count(".") == 2:  # a personal access token: trade it for an access token
            answer = await self._call("POST", "/api/token/refresh", json={"refresh": token})
            self.http.headers["Authorization"] = f"Bearer {answer['access']}"
        else:
            self.http.headers["Authorization"] = f"Token {token}"
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"{method} {path}: Label Studio at {self.cfg.label_studio_url} did not answer "
                                   f"({type(exc).__name__}: {exc})") from None
        if response.status_code >= 400:
            raise LabelStudioError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    async def project(self, title: str, label_config: str) -> dict[str, Any]:
        """The project with this title, created with ``label_config`` when there is none."""
        listed = await self._call("GET", "/api/projects", params={"title": title, "page_size": 1000})
        for project in listed.get("results", listed) if isinstance(listed, dict) else listed:
            if project.get("title") == title:
                return project
        return await self._call("POST", "/api/projects", json={
            "title": title, "label_config": label_config, "show_collab_predictions": True,
            "evaluate_predictions_automatically": True, "maximum_annotations": 1,
            "description": "Scans the weldstream servers doubted; submitted masks go to weld.scans.labeled."})

    async def open_tasks(self, project_id: int) -> int:
        """Tasks of the project nobody has annotated yet."""
        project = await self._call("GET", f"/api/projects/{project_id}")
        return int(project.get("task_number") or 0) - int(project.get("num_tasks_with_annotations") or 0)

    async def connect_backend(self, project_id: int, url: str, user: str, password: str) -> dict[str, Any]:
        """The project's ML backend at ``url`` (basic auth with a console account and its token)."""
        auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": user, "basic_auth_pass": password}
        for backend in await self._call("GET", "/api/ml", params={"project": project_id}):
            if backend.get("url", "").rstrip("/") == url.rstrip("/"):
                return await self._call("PATCH", f"/api/ml/{backend['id']}",
                                        json={**auth, "url": url, "project": project_id})
        return await self._call("POST", "/api/ml", json={
            "url": url, "project": project_id, "title": "weldstream", "is_interactive": False, "auto_update": True,
            "description": "The live weldstream server's masks as brush pre-annotations", **auth})

    async def connect_webhook(self, project_id: int, url: str, bearer: str) -> dict[str, Any]:
        """The project's webhook to ``url`` for annotations created, updated and deleted (Label Studio makes one
        for every action when an ML backend is connected; it is narrowed and given the console's token)."""
        hook = {"url": url, "project": project_id, "send_payload": True, "send_for_all_actions": False,
                "actions": list(WEBHOOK_ACTIONS), "is_active": True, "headers": {"Authorization": f"Bearer {bearer}"}}
        for existing in await self._call("GET", "/api/webhooks", params={"project": project_id}):
            if existing.get("url", "").rstrip("/") == url.rstrip("/"):
                return await self._call("PATCH", f"/api/webhooks/{existing['id']}", json=hook)
        return await self._call("POST", "/api/webhooks", json=hook)

    async def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import tasks (with their predictions); returns their ids in order."""
        answer = await self._call("POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"},
                                  json=tasks)
        return [int(i) for i in answer.get("task_ids", [])]

    async def finished(self, project_id: int) -> list[dict[str, Any]]:
        """Every task with at least one annotation, with its annotations (Label Studio's JSON export)."""
        return await self._call("GET", f"/api/projects/{project_id}/export",
                                params={"exportType": "JSON", "download_all_tasks": "false"})

    async def user(self, user_id: int) -> dict[str, Any]:
        return await self._call("GET", f"/api/users/{user_id}")
