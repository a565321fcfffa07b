"""The pools' pods, kept current by one LIST and then a WATCH from its resourceVersion (part of
the Kubernetes actuator), instead of a LIST per pool every scrape period.

The API server's documented watch contract: events ADDED, MODIFIED, DELETED (and BOOKMARK when
asked) after the given resourceVersion; a watch ends at `timeoutSeconds` and is resumed from
the last resourceVersion seen; 410 Gone (the version was compacted away) means list again.
The client is synchronous, so the loop runs in one daemon thread; readers take a copy.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)


class PodCache:
    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        selector: str,
        request_timeout_s: float = 10.0,
        watch_timeout_s: int = 60,
        retry_s: float = 1.0,
    ) -> None:
        self._core = core
        self._namespace = namespace
        self._selector = selector
        self._request_timeout = request_timeout_s
        self._watch_timeout = watch_timeout_s
        self._retry_s = retry_s
        self._pods: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.lists = 0  # how many times it had to LIST (first sync, then after 410 Gone)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pdserve-pods", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def wait_synced(self, timeout_s: float) -> bool:
        return self._synced.wait(timeout_s)

    def pods(self) -> list[Any]:
        with self._lock:
            return list(self._pods.values())

    def _run(self) -> None:
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
            except ApiException as error:
                if error.status == 410:
                    log.info("pod watch: resourceVersion %s expired, listing again", version)
                else:
                    log.warning("pod watch failed (%s), listing again", error.status)
                    self._stopping.wait(self._retry_s)
                version = None
            except Exception as error:  # the API server went away: retry, list again
                if not self._stopping.is_set():
                    log.warning("pod watch failed: %s", error)
                    self._stopping.wait(self._retry_s)
                version = None

    def _list(self) -> str:
        listed = self._core.list_namespaced_pod(
            self._namespace, label_selector=self._selector, _request_timeout=self._request_timeout
        )
        with self._lock:
            self._pods = {str(pod.metadata.name): pod for pod in listed.items if pod.metadata}
        self.lists += 1
        self._synced.set()
        return str(listed.metadata.resource_version) if listed.metadata else "0"

    def _watch(self, version: str) -> str:
        stream = watch.Watch()
        for event in stream.stream(
            self._core.list_namespaced_pod,
            self._namespace,
            label_selector=self._selector,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _request_timeout=self._watch_timeout + self._request_timeout,
        ):
            pod = event["object"]
            kind = event["type"]
            if kind in ("ADDED", "MODIFIED"):
                with self._lock:
                    self._pods[pod.metadata.name] = pod
            elif kind == "DELETED":
                with self._lock:
                    self._pods.pop(pod.metadata.name, None)
            version = stream.resource_version or version
            if self._stopping.is_set():
                stream.stop()
        return version
