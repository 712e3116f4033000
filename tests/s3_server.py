"""A real local S3 endpoint for tests: moto's server mode on 127.0.0.1 in a child process, with
signature checks on (so wrong credentials fail as they would on AWS, MinIO or OBS).

The server runs in its own process: pyarrow's S3 client waits for the server while holding the GIL
in places (closing a stream), which stalls a server thread in the same interpreter for seconds.
Run directly (``python tests/s3_server.py PORT``) it serves until killed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

NO_AUTH_SETUP_CALLS = 3  # create_user, put_user_policy, create_access_key: then signatures are checked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoS3:
    """A running server: its endpoint, a bucket, and the credentials it accepts."""

    endpoint: str
    bucket: str
    key_id: str
    secret: str

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": "us-east-1"}

    def use(self, monkeypatch) -> "MotoS3":  # noqa: ANN001
        """Point this process at the server (its AWS_* variables, no stray S3-only endpoint); returns self."""
        for k, v in self.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        return self

    def client(self):  # noqa: ANN201
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name="us-east-1")


def _wait_up(endpoint: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server at {endpoint} did not start in {timeout} s")


def _setup_user(endpoint: str, bucket: str) -> tuple[str, str]:
    """An IAM user allowed s3:* (the first calls run before auth is enforced), then the bucket."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="setup", aws_secret_access_key="setup",
                       region_name="us-east-1")
    iam.create_user(UserName="mmdata")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="mmdata", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="mmdata")["AccessKey"]
    creds = (key["AccessKeyId"], key["SecretAccessKey"])
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=creds[0], aws_secret_access_key=creds[1],
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return creds


@contextmanager
def moto_s3(bucket: str = "mmdata-test", host: str = "127.0.0.1") -> Iterator[MotoS3]:
    """Start the server on ``host`` (another address of this machine: a bridge other network
    namespaces reach), make a user and a bucket, yield; the server is stopped on exit."""
    port = free_port()
    endpoint = f"http://{host}:{port}"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(NO_AUTH_SETUP_CALLS))
    proc = subprocess.Popen([sys.executable, __file__, str(port), host], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(endpoint, proc)
        key_id, secret = _setup_user(endpoint, bucket)
        yield MotoS3(endpoint, bucket, key_id, secret)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(port: int, host: str = "127.0.0.1") -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:3])
