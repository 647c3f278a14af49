"""ECHO: answers every request SUCCESS at once with a zero output; uses no workers.

For measuring the controller and client paths alone (the original's ECHO controller)."""
from __future__ import annotations

from ...status import Status
from ..scheduler import Request, Scheduler
from .common import zeros


class EchoScheduler(Scheduler):
    name = "echo"

    def __init__(self, config, clock, out):
        super().__init__(config, clock, out)
        self.answered = 0

    def on_request(self, req: Request) -> None:
        m = self.models.get(req.model_id)
        self.answered += 1
        self.out.respond(req, Status.SUCCESS, "", zeros(m.output_size * req.batch_size if m else 0), 0)

    def stats(self) -> dict:
        return {"scheduler": self.name, "answered": self.answered}
