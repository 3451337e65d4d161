"""`POST /admin/retrain` as a Ray job: the CLI's own CT run, on the serving cluster.

A request submits `mlops ct run --force --request-id <job id>` through the Ray Jobs API (the
dashboard's job manager, which KubeRay's head and the local cluster both run). The job is the
same command the CLI, Jenkins and the CronJob run, so it takes the same lock in the CT database
and passes the same gate; a promotion reaches the replicas the usual way (they follow the
`champion` alias).

Its state lives in the cluster (the job) and in the CT database (the run's `ct_runs` row, keyed
by the job id), never in one replica's memory: `GET /admin/retrain/{id}` answers the same from
every replica. A second request while a retrain job is pending or running, or while another CT
run holds the lock, gets 409.

The two replicas hold the CPUs of a small cluster, so the job asks Ray for none
(`entrypoint_num_cpus=0`, the supervisor actor asks for none either) and runs under Linux's
SCHED_IDLE policy: the OS gives it only the CPU time the replicas leave.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from ml.config import Settings
from ml.retrain import lock_holder, requested_run
from serving.deploy import replica_env
from serving.service import Answer

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

logger = logging.getLogger("ray.serve")

KIND_KEY = "mlops.kind"
KIND = "retrain"
NICENESS = 19
ACTIVE = {"PENDING", "RUNNING"}

# () -> the Jobs API client of the cluster this replica runs in
ClientFactory = Callable[[], "JobSubmissionClient"]


def cluster_client() -> JobSubmissionClient:
    """The Jobs API of the cluster this process is part of (its GCS knows the dashboard)."""
    import ray
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray.get_runtime_context().gcs_address)


def background() -> list[str]:
    """The command prefix that runs training only on CPU time the replicas leave: Linux's
    SCHED_IDLE (`chrt --idle 0`) where util-linux has `chrt`, else the weakest nice. What a
    retrain still costs the replicas is measured in docs/continuous-training.md."""
    if shutil.which("chrt"):
        return ["chrt", "--idle", "0"]
    return ["nice", "-n", str(NICENESS)]


class RetrainJobs:
    """Submit and report retrain jobs; settings and the Jobs API client are injected."""

    def __init__(self, settings: Settings, client_factory: ClientFactory = cluster_client) -> None:
        self._settings = settings
        self._client_factory = client_factory
        self._client: JobSubmissionClient | None = None

    def _jobs(self) -> JobSubmissionClient:
        if self._client is None:  # connecting checks the dashboard: not in a replica's start
            self._client = self._client_factory()
        return self._client

    def submit(self) -> Answer:
        """202 with the new job's id, 409 naming what runs already, 503 without a Jobs API."""
        try:
            return self._submit()
        except Exception as exc:  # pylint: disable=broad-exception-caught
            return _unavailable(exc)

    def _submit(self) -> Answer:
        running = self._running()
        if running is not None:
            return Answer({"detail": running, "field": "retrain"}, 409)
        job_id = f"retrain-{uuid.uuid4().hex[:16]}"
        self._jobs().submit_job(
            entrypoint=self.entrypoint(job_id),
            submission_id=job_id,
            runtime_env={"env_vars": replica_env(self._settings)},
            metadata={KIND_KEY: KIND, "model_name": self._settings.model_name},
            entrypoint_num_cpus=0,
        )
        logger.info("retrain job %s submitted", job_id)
        return Answer(
            {"job_id": job_id, "status": "PENDING", "status_url": f"/admin/retrain/{job_id}"},
            202,
            {"Location": f"/admin/retrain/{job_id}"},
        )

    def entrypoint(self, job_id: str) -> str:
        """This replica's Python and working directory, at the lowest OS priority there is."""
        command = [*background(), sys.executable, "-m", "serving.main", "ct", "run", "--force"]
        command += ["--request-id", job_id]
        return f"cd {shlex.quote(os.getcwd())} && exec {shlex.join(command)}"

    def _running(self) -> str | None:
        """Why a new retrain may not start now, or None."""
        for job in self._jobs().list_jobs():
            if (job.metadata or {}).get(KIND_KEY) == KIND and str(job.status) in ACTIVE:
                return f"retrain job {job.submission_id} is {str(job.status).lower()}"
        holder = lock_holder(self._settings)
        if holder is not None:
            return f"a CT run holds the lock: {holder}"
        return None

    def status(self, job_id: str) -> Answer:
        """The job's state and, once its CT run finished, what it did."""
        unknown = Answer({"detail": f"no retrain job {job_id!r}", "field": "job_id"}, 404)
        if not job_id.startswith(f"{KIND}-"):
            return unknown
        try:
            info = self._jobs().get_job_info(job_id)
        except RuntimeError as exc:  # the Jobs API's answer to an unknown id, and to failures
            return unknown if "status code 404" in str(exc) else _unavailable(exc)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            return _unavailable(exc)
        return Answer(
            {
                "job_id": job_id,
                "status": str(info.status),
                "message": info.message,
                "start_time": info.start_time,
                "end_time": info.end_time,
                "result": requested_run(self._settings, job_id),
            }
        )


def _unavailable(exc: Exception) -> Answer:
    logger.warning("the Ray Jobs API did not answer: %s", exc)
    detail = f"the Ray Jobs API did not answer (the cluster needs its dashboard): {exc}"
    return Answer({"detail": detail[:500], "field": "retrain"}, 503)
