"""A local SMTP sink for the demo and tests: every message it receives becomes one ``.eml`` file in a directory.

Alert emails then need no real relay, and a person (or a test) reads them back with ``MailSink.messages()``.
Run it in the foreground with ``python -m edge.mailsink DIR --host 127.0.0.1 --port 8025``.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import threading
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller


class _StoreHandler:
    """aiosmtpd handler that writes each message, as received, to ``<directory>/<utc timestamp>-<n>.eml``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        with self._lock:
            n = next(self._counter)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{stamp}-{n:06d}.eml"
        # Write then rename, so a reader never sees half a message.
        tmp = path.parent / f"{path.name}.part"
        tmp.write_bytes(content)
        tmp.replace(path)
        return "250 Message accepted for delivery"


class MailSink:
    """SMTP server on ``host:port`` that stores every received message as an ``.eml`` file in ``directory``."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 8025) -> None:
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self._controller: Controller | None = None

    def start(self) -> MailSink:
        """Create the directory and start listening (in a background thread); returns self."""
        if self._controller is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        controller = Controller(_StoreHandler(self.directory), hostname=self.host, port=self.port)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening; stored messages stay on disk."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def messages(self) -> list[EmailMessage]:
        """The stored messages, oldest first."""
        return read_messages(self.directory)


def read_messages(directory: Path) -> list[EmailMessage]:
    """Parse every ``.eml`` file in ``directory``, oldest first (file names sort by arrival)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    parser = BytesParser(policy=policy.default)
    return [parser.parsebytes(p.read_bytes()) for p in sorted(directory.glob("*.eml"))]  # type: ignore[misc]


def serve_forever(directory: Path, host: str = "127.0.0.1", port: int = 8025) -> None:
    """Run a MailSink in the foreground until interrupted (Ctrl-C or SIGTERM)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with MailSink(directory, host, port):
        print(f"mail sink listening on {host}:{port}, storing messages in {Path(directory).resolve()}", flush=True)
        stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edge.mailsink", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="where each received message is stored as an .eml file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    args = parser.parse_args(argv)
    serve_forever(args.directory, args.host, args.port)


if __name__ == "__main__":
    main()
