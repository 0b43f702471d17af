"""A local stand-in for the Roboflow API: a real HTTP server on 127.0.0.1 that answers the calls the
roboflow SDK (1.7.x) makes to export and download a dataset version, and serves a zip in Roboflow's
YOLO export layout. Point the SDK at it with ``API_URL=<server.url>`` before roboflow is imported.

Calls answered (all but the download carry ``?api_key=``)::

    POST /                             check_key            -> {"workspace": <ws>}
    GET  /<ws>                         Roboflow.workspace   -> {"workspace": {...}}
    GET  /<ws>/<project>               Workspace.project, Project.version -> {"project": {...}, "versions": [...]}
    GET  /<ws>/<project>/<v>           Version.export's "still generating?" poll -> {"version": {...}}
    GET  /<ws>/<project>/<v>/<format>  rfapi.get_version_export -> {"export": {"link": <signed url>}}
    GET  /signed/export.zip?token=...  the export itself (no api key: a signed URL, as on Google Cloud Storage)
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlparse

from stagetrain.data import synthetic

SPLITS = {"train": 3, "valid": 2, "test": 1}  # Roboflow names the validation split `valid`
CLASSES = ("blue_cone", "yellow_cone", "orange_cone", "large_orange_cone", "unknown_cone")


def export_zip(readme: str = "") -> bytes:
    """A Roboflow-style YOLOv8 export: ``{train,valid,test}/{images,labels}``, ``data.yaml``, README files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        index = 0
        for split, count in SPLITS.items():
            for _ in range(count):
                image, boxes = synthetic.render(0, "source", index, 64, CLASSES)
                jpeg = io.BytesIO()
                image.save(jpeg, format="JPEG", quality=90)
                stem = f"cone_{index:03d}_jpg.rf.{index:032x}"
                zf.writestr(f"{split}/images/{stem}.jpg", jpeg.getvalue())
                zf.writestr(f"{split}/labels/{stem}.txt", "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in boxes))
                index += 1
        names = "".join(f"- {n}\n" for n in CLASSES)
        zf.writestr(
            "data.yaml", f"train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: {len(CLASSES)}\nnames:\n{names}"
        )
        zf.writestr("README.roboflow.txt", "Cones - v1\nThis dataset was exported via roboflow.com\n" + readme)
        zf.writestr("README.dataset.txt", "# Cones > v1\nLicense: CC BY 4.0\n")
    return buffer.getvalue()


class FakeRoboflow:
    """``with FakeRoboflow(api_key) as server:`` serves on ``server.url`` and records ``server.requests``.

    Args:
        api_key: the only key the server accepts (401 otherwise, as Roboflow answers).
        workspace, project, version: the one dataset version it knows (404 for anything else).
        echo_key_in_readme: put the key and the signed link into README.roboflow.txt, to prove the
            client scrubs them even if a server ever did that.
    """

    def __init__(self, api_key: str, workspace: str = "fsb", project: str = "cones", version: int = 1, echo_key_in_readme: bool = False):
        self.api_key, self.workspace, self.project, self.version = api_key, workspace, project, version
        self.echo_key_in_readme = echo_key_in_readme
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.link = f"{self.url}/signed/export.zip?token=sig-{time.time_ns()}"

    def __enter__(self) -> Self:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _project_json(self) -> dict:
        ident = f"{self.workspace}/{self.project}"
        version = {
            "id": f"{ident}/{self.version}", "name": "Cones", "version": str(self.version), "created": 1700000000,
            "images": sum(SPLITS.values()), "splits": dict(SPLITS), "augmentation": {}, "preprocessing": {},
            "exports": ["yolov8"], "generating": False, "progress": 1.0,
        }  # fmt: skip
        project = {
            "id": ident, "name": "Cones", "type": "object-detection", "annotation": "cones", "created": 1700000000,
            "updated": 1700000000, "images": sum(SPLITS.values()), "unannotated": 0, "public": False,
            "splits": dict(SPLITS), "classes": {c: 1 for c in CLASSES}, "colors": {},
        }  # fmt: skip
        return {"workspace": {"name": self.workspace, "url": self.workspace}, "project": project, "versions": [version]}

    def _answer(self, method: str, path: str, query: dict) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        if path == "/signed/export.zip":
            readme = f"api_key={self.api_key}\nlink={self.link}\n" if self.echo_key_in_readme else ""
            return 200, "application/zip", export_zip(readme)
        if query.get("api_key") != [self.api_key]:
            return (
                401,
                "application/json",
                json.dumps({"error": {"message": "This API key does not exist (or has been revoked)."}}).encode(),
            )
        parts = [p for p in path.split("/") if p]
        ours = [self.workspace, self.project, str(self.version)]
        body: dict | None = None
        if method == "POST" and not parts:
            body = {"welcome": "Welcome to the Roboflow API.", "workspace": self.workspace}
        elif parts == ours[:1]:
            body = {"workspace": {"name": self.workspace, "url": self.workspace, "projects": [self._project_json()["project"]]}}
        elif parts == ours[:2]:
            body = self._project_json()
        elif parts == ours:
            body = {"version": self._project_json()["versions"][0]}
        elif parts[:3] == ours and len(parts) == 4:
            body = {"export": {"link": self.link, "format": parts[3]}}
        if body is None:
            return 404, "application/json", json.dumps({"error": {"message": f"Unsupported request. `{path}` does not exist."}}).encode()
        return 200, "application/json", json.dumps(body).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                server.requests.append((self.command, self.path))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlparse(self.path)
                status, kind, body = server._answer(self.command, url.path, parse_qs(url.query))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _reply

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        return Handler
