"""storage_sweep on the real local SeaweedFS through the CLI, under the real mpirun; the secret key
is nowhere in what a run writes or prints; S3 bad inputs give one line and exit 2."""

from __future__ import annotations

import pytest
from helpers import run_cli

from dlio_ext.s3server import ServerInfo, server_env


@pytest.mark.parametrize(("client", "ranks"), [("obstore", 2), ("boto3", 4)])
def test_sweep_on_s3_with_mpirun(tmp_path, s3_server: ServerInfo, s3_admin, client, ranks):
    n, size = 6, 6 << 20  # above the 5 MiB part size: multipart on every object
    prefix = f"sweep-{client}-{ranks}"
    d = run_cli(
        "run",
        "storage=s3",
        f"storage.client={client}",
        f"storage.prefix={prefix}",
        "storage.part_size=5242880",
        f"run.results_dir={tmp_path}",
        f"workload.objects_per_rank={n}",
        f"workload.object_size={size}",
        "workload.io_depth=2",
        "workload.phases=[write,read_random,stat]",
        np=ranks,
        env=server_env(s3_server),
    )
    assert d.code == 0, d.err
    s = d.summary()
    assert s["valid"] and s["ranks"] == ranks and s["storage"]["client"] == client
    for name in ("write", "read_random", "stat"):
        assert s["phases"][name]["ops"] == ranks * n
    assert s["phases"]["read_random"]["bytes"] == ranks * n * size
    # the objects really are in the bucket, under the prefix, at full size
    pages = s3_admin.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket, Prefix=prefix + "/")
    objs = [o for p in pages for o in p.get("Contents", [])]
    assert len(objs) == ranks * n and all(o["Size"] == size for o in objs)


def test_secret_key_never_written_or_printed(tmp_path, s3_server: ServerInfo):
    secret = s3_server.secret_key
    env = server_env(s3_server)
    runs = [
        # from the environment
        run_cli(
            "run",
            "storage=s3",
            "storage.prefix=secrets1",
            f"run.results_dir={tmp_path}/a",
            "workload.objects_per_rank=4",
            "workload.object_size=4096",
            env=env,
            np=2,
        ),
        # on the command line (it is then in the argv every rank sees: the results must not repeat it)
        run_cli(
            "run",
            "storage=s3",
            "storage.prefix=secrets2",
            f"storage.secret_key={secret}",
            f"storage.access_key={s3_server.access_key}",
            f"run.results_dir={tmp_path}/b",
            "workload.objects_per_rank=4",
            "workload.object_size=4096",
            env={k: v for k, v in env.items() if not k.startswith("AWS_SECRET")},
        ),
        # a failing run: wrong secret, its error line must not echo either key
        run_cli(
            "run",
            "storage=s3",
            "storage.secret_key=WRONG-but-also-secret-123",
            f"run.results_dir={tmp_path}/c",
            env=env,
        ),
    ]
    assert runs[0].code == 0 and runs[1].code == 0, (runs[0].err, runs[1].err)
    assert runs[2].code == 2 and "WRONG-but-also-secret-123" not in runs[2].err
    assert runs[1].summary()["valid"]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "summary.json" for p in files) and any(p.name == "run.log" for p in files)
    for p in files:
        text = p.read_bytes()
        assert secret.encode() not in text, p
        assert b"WRONG-but-also-secret-123" not in text, p
    for r in runs:
        assert secret not in r.out + r.err


@pytest.mark.parametrize(
    ("case", "args", "words"),
    [
        ("bad-credentials", ["storage.secret_key=not-the-key"], ["denied", "AWS_SECRET_ACCESS_KEY"]),
        ("missing-bucket", ["storage.bucket=no-such-bucket-here"], ["no-such-bucket-here"]),
        ("no-bucket-at-all", ["storage.bucket=null"], ["bucket"]),
    ],
)
def test_s3_bad_input(tmp_path, s3_server: ServerInfo, case, args, words):
    env = server_env(s3_server)
    if case == "no-bucket-at-all":
        env = {k: v for k, v in env.items() if k != "DLIO_EXT_S3_BUCKET"} | {"DLIO_EXT_S3_BUCKET": ""}
    d = run_cli("run", "storage=s3", *args, f"run.results_dir={tmp_path}", env=env)
    assert d.code == 2, (d.out, d.err)
    lines = [ln for ln in d.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlio-ext: error: "), d.err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    assert s3_server.secret_key not in d.err
