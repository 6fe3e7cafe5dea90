"""Paglets the tests run inside real paglets hosts (importable by the hosts' child processes:
the tests put this directory on their ``PYTHONPATH``)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from paglets.core.agent import Paglet
from paglets.core.messages import Message


def payload(seed: int, size: int) -> bytes:
    """The bytes a Carrier of this seed writes (so a test can check them anywhere)."""
    return random.Random(seed).randbytes(size)


@dataclass
class CarrierState:
    size: int = 0
    seed: int = 0
    mode: str = "copy"


class Carrier(Paglet[CarrierState]):
    """Writes ``size`` bytes into its work directory when created and registers the file."""

    State = CarrierState

    def on_creation(self, event) -> None:
        path = self.work_dir() / "payload.bin"
        path.write_bytes(payload(self.state.seed, self.state.size))
        self.register_file(path, name="payload.bin", mode=self.state.mode)

    def handle_message(self, message: Message):
        if message.kind == "files":
            found = []
            for ref in self.registered_files():
                path = self.file_path(ref)
                data = path.read_bytes() if path.is_file() else b""
                found.append(
                    {"ref": ref.to_wire(), "path": str(path), "on_disk_sha256": hashlib.sha256(data).hexdigest()}
                )
            return found
        return super().handle_message(message)
