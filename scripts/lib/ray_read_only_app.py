"""Ray Serve (two replicas) on the running local cluster: scripts/ray_read_only_root.sh."""

import os
import tempfile
import urllib.request

import ray
from ray import serve

PORT = int(os.environ["SERVE_PORT"])


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5})
class Echo:
    def __call__(self, request: object) -> dict[str, int]:
        with tempfile.TemporaryDirectory() as scratch:  # as a model download does
            with open(os.path.join(scratch, "model.bin"), "wb") as out:
                out.write(b"x")
        return {"pid": os.getpid()}


ray.init(address="auto")
serve.start(http_options={"host": "127.0.0.1", "port": PORT})
serve.run(Echo.bind(), route_prefix="/")
ok = 0
for _ in range(20):
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/", timeout=10) as answer:  # nosec B310
        ok += answer.status == 200
print(f"RESULT ok {ok} of 20")
serve.shutdown()
