"""The shared service fixtures of tests/fixtures/services.py, each exercised once."""

from __future__ import annotations

import os
import time
import urllib.request

import pytest


def test_moto_s3_fixture(moto_s3):
    assert os.environ["AWS_ENDPOINT_URL"] == moto_s3.endpoint_url.rstrip("/")
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
    bucket = moto_s3.create_bucket()
    import boto3

    client = boto3.client("s3")  # configured purely from the environment
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_mlflow_sqlite_fixture(mlflow_sqlite):
    assert mlflow_sqlite.uri.startswith("sqlite:////") and mlflow_sqlite.uri.endswith("/mlflow.db")
    client = mlflow_sqlite.client()
    exp = client.create_experiment("fixture", artifact_location=mlflow_sqlite.artifact_uri)
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.0, step=0)
    assert client.get_metric_history(run.info.run_id, "m")[0].value == 1.0
    assert mlflow_sqlite.db_path.exists()


@pytest.mark.ray
def test_ray_cluster_fixture(ray_cluster):
    import ray

    @ray.remote
    def square(x):
        return x * x

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    assert ray.cluster_resources()["CPU"] == ray_cluster.num_cpus
    # The Prometheus endpoint answers on the port the fixture chose (metrics appear a bit later).
    url = f"http://127.0.0.1:{ray_cluster.metrics_export_port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                assert resp.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.5)
