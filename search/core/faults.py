"""Why a job failed, and whether trying it again can help: the failure policy of a search.

Three kinds of failure are told apart, because they call for different reactions:

* the job's *worker was lost* (its node died or was preempted, its process was killed): the
  architecture is not at fault, so the job is submitted again - a training rung restarts
  from the trial's last rung checkpoint - up to ``max_retries`` times;
* the architecture *cannot be trained* as asked (a non-finite loss, the device out of
  memory): the trial fails with that reason and the search goes on, since the next
  architecture may well train;
* anything else is an *error* (a bad data file, a bug): the trial fails, and three of those
  in a row end the search, because then every trial would fail the same way.

Pure logic on the executor's error text, so it is tested without Ray.
"""
from __future__ import annotations

from dataclasses import dataclass

NON_FINITE = "non-finite loss"
OUT_OF_MEMORY = "out of memory"
WORKER_LOST = "worker lost"
ERROR = "error"
NO_PREDICTION = "no prediction"  # --throughput predicted, and the latency table lacks one of the network's parts
DEFAULT_MAX_RETRIES = 2


class NonFiniteLoss(FloatingPointError):
    """A proxy training whose loss became NaN or infinite: the architecture diverged."""


def failure_reason(message: str, lost: bool = False) -> str:
    """The failure's kind from an executor's event: ``lost`` says the worker itself died."""
    if lost:
        return WORKER_LOST
    if NonFiniteLoss.__name__ in message or NON_FINITE in message:
        return NON_FINITE
    if "OutOfMemoryError" in message or OUT_OF_MEMORY in message.lower():
        return OUT_OF_MEMORY
    return ERROR


@dataclass(frozen=True)
class RetryPolicy:
    """Lost work is retried ``max_retries`` times per trial; the trial's own failures never are."""

    max_retries: int = DEFAULT_MAX_RETRIES

    def retry(self, reason: str, retries_so_far: int) -> bool:
        return reason == WORKER_LOST and retries_so_far < self.max_retries

    @staticmethod
    def architecture_fault(reason: str) -> bool:
        """Whether the failure is the architecture's own verdict: it would fail again, so it is
        never retried nor trained again (a later sample of it is answered from the study), and
        it says nothing about the next architecture (it does not count towards the failures in
        a row that end a search)."""
        return reason in (NON_FINITE, OUT_OF_MEMORY)
