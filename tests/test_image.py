"""The pipeline image (docs/image.md).

`make image` without a Docker engine writes a `docker load` archive with
scripts/build_image.py. These tests build one with the same code (into a
temporary directory), check it structurally (manifests, digests, diff_ids, the
config against the Dockerfile), check that re-running reuses the base layer,
and then run the image: its layers are extracted in order and its Entrypoint
runs under chroot with the config's Env and WorkingDir, as a container runtime
would.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tarfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "build_image", os.path.join(REPO, "scripts", "build_image.py"))
build_image = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_image)

PACKAGES = ("keras_models", "transform", "tfx_pipeline", "serving")
SPEC = build_image.parse_dockerfile(os.path.join(REPO, "Dockerfile"))


# ----------------------------------------------------------------- fast checks

def test_dockerfile_gives_the_runtime_layout():
    fields = build_image.image_config_fields(SPEC)
    env = dict(item.split("=", 1) for item in fields["Env"])
    assert fields["Entrypoint"] == ["python", "-m", "tfx_pipeline"]
    assert env["PATH"].split(":")[0] == "/opt/funnelstack-venv/bin"   # `python` is the venv's
    assert env["VIRTUAL_ENV"] == "/opt/funnelstack-venv"
    assert env["PYTHONPATH"] == fields["WorkingDir"] == "/opt/funnelstack"
    assert SPEC["base_image"] == "debian:trixie-slim"
    # The venv path is the rootfs runtime's (scripts/common.sh).
    with open(os.path.join(REPO, "scripts", "common.sh")) as handle:
        assert "FUNNEL_ROOTFS_VENV=/opt/funnelstack-venv\n" in handle.read()


def test_project_layer_holds_the_packages_and_no_caches():
    paths = dict(build_image.project_entries(REPO, SPEC))
    for package in PACKAGES:
        assert f"/opt/funnelstack/{package}/__init__.py" in paths
    assert "/opt/funnelstack/tfx_pipeline/__main__.py" in paths
    assert "/opt/funnelstack/requirements.txt" in paths
    assert not [path for path in paths if "__pycache__" in path or path.endswith(".pyc")]
    assert not [path for path in paths if not path.startswith("/opt")]


def test_dockerignore_matching():
    patterns = ["**/__pycache__", "*.csv", "pipelines"]
    assert build_image._ignored("serving/deploy/__pycache__", patterns)
    assert build_image._ignored("x/__pycache__/a.pyc", patterns)
    assert build_image._ignored("rows.csv", patterns)
    assert not build_image._ignored("transform/rows.csv", patterns)   # '*' stays in one segment
    assert build_image._ignored("pipelines/demo/metadata.sqlite", patterns)
    assert not build_image._ignored("tfx_pipeline/pipeline.py", patterns)


def test_unsupported_dockerfile_forms_are_refused(tmp_path):
    for line in ("ENV PATH=/x:$PATH", "ENTRYPOINT python -m tfx_pipeline",
                 "COPY --chown=1:1 a /b/", "ADD a.tar /"):
        dockerfile = tmp_path / "Dockerfile"
        dockerfile.write_text(f'FROM x\n{line}\nENTRYPOINT ["python"]\n'
                              if not line.startswith("ENTRYPOINT") else f"FROM x\n{line}\n")
        with pytest.raises(build_image.DockerfileError):
            spec = build_image.parse_dockerfile(str(dockerfile))
            build_image.project_entries(str(tmp_path), spec)


# ----------------------------------------------------------------- the image itself

def _rootfs() -> str | None:
    """The project's rootfs: '/' when the tests run inside it (scripts/run), else
    FUNNEL_ROOTFS or its default, if set up."""
    if os.path.exists("/.funnelstack-bootstrapped"):
        return "/"
    candidate = build_image.default_rootfs()
    if os.path.exists(os.path.join(candidate, ".funnelstack-bootstrapped")):
        return candidate
    return None


def _sha256_of(fileobj) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: fileobj.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("building from the rootfs and running the image under chroot need root")
    rootfs = _rootfs()
    if rootfs is None:
        pytest.skip("no project root filesystem (the venv runtime is in use); "
                    "FUNNEL_RUNTIME=rootfs scripts/setup.sh sets one up")
    work = tmp_path_factory.mktemp("image")
    free = shutil.disk_usage(work).free
    if free < 12e9:
        pytest.skip(f"needs about 12 GB free in {work} (archive + extracted tree); {free / 1e9:.1f} GB")
    started = time.monotonic()
    result = build_image.build(rootfs, str(work / "funnelstack-image.tar"))
    result["build_seconds"] = time.monotonic() - started
    result["work"] = work
    try:
        yield result
    finally:
        shutil.rmtree(work / "context", ignore_errors=True)
        if os.path.exists(result["path"]):
            os.unlink(result["path"])


def _read_archive(path):
    with tarfile.open(path, mode="r:") as tar:
        members = {member.name: member for member in tar.getmembers()}
        read = lambda name: tar.extractfile(members[name]).read()      # noqa: E731
        manifest = json.loads(read("manifest.json"))
        config_bytes = read(manifest[0]["Config"])
        index = json.loads(read("index.json"))
        oci_manifest_name = "blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]
        oci_manifest_bytes = read(oci_manifest_name)
        layer_digests = {name: _sha256_of(tar.extractfile(members[name]))
                         for name in manifest[0]["Layers"]}
        return {"members": members, "manifest": manifest, "config_bytes": config_bytes,
                "index": index, "oci_manifest_name": oci_manifest_name,
                "oci_manifest_bytes": oci_manifest_bytes, "layer_digests": layer_digests,
                "repositories": json.loads(read("repositories")),
                "oci_layout": json.loads(read("oci-layout"))}


@pytest.mark.e2e
def test_archive_is_a_loadable_image_matching_the_dockerfile(image):
    archive = _read_archive(image["path"])
    (entry,) = archive["manifest"]
    assert entry["RepoTags"] == ["funnelstack:latest"]
    assert len(entry["Layers"]) == 2
    # Blobs are named by their digests; the config's diff_ids are the layers' digests.
    config_hex = hashlib.sha256(archive["config_bytes"]).hexdigest()
    assert entry["Config"] == f"blobs/sha256/{config_hex}"
    config = json.loads(archive["config_bytes"])
    for name in entry["Layers"]:
        assert name == f"blobs/sha256/{archive['layer_digests'][name]}"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [
        "sha256:" + archive["layer_digests"][name] for name in entry["Layers"]]}
    assert len(config["history"]) == 2
    assert config["os"] == "linux" and config["architecture"] in ("amd64", "arm64")
    created = datetime.datetime.strptime(config["created"], "%Y-%m-%dT%H:%M:%S.%fZ")
    age = datetime.datetime.now(datetime.timezone.utc) - created.replace(tzinfo=datetime.timezone.utc)
    assert datetime.timedelta(0) <= age < datetime.timedelta(hours=1)
    # The Dockerfile's runtime settings, exactly.
    fields = build_image.image_config_fields(SPEC)
    for key in ("Env", "Entrypoint", "WorkingDir", "Cmd"):
        assert config["config"][key] == fields[key], key
    # The OCI layout describes the same image.
    assert archive["oci_layout"] == {"imageLayoutVersion": "1.0.0"}
    assert archive["oci_manifest_name"].split("/")[-1] == \
        hashlib.sha256(archive["oci_manifest_bytes"]).hexdigest()
    oci = json.loads(archive["oci_manifest_bytes"])
    assert oci["config"]["digest"] == f"sha256:{config_hex}"
    assert oci["config"]["size"] == len(archive["config_bytes"])
    assert [layer["digest"] for layer in oci["layers"]] == config["rootfs"]["diff_ids"]
    assert [layer["size"] for layer in oci["layers"]] == [
        archive["members"][name].size for name in entry["Layers"]]
    assert archive["index"]["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"] == "latest"
    assert archive["repositories"] == {"funnelstack": {"latest": entry["Layers"][1].split("/")[-1]}}

    # Layer 1 is the rootfs without its mounts and caches; layer 2 the project files.
    with tarfile.open(image["path"], mode="r:") as tar:
        base = tar.extractfile(archive["members"][entry["Layers"][0]])
        names = set()
        with tarfile.open(fileobj=base, mode="r|") as layer:
            for member in layer:
                names.add(member.name)
        project = tar.extractfile(archive["members"][entry["Layers"][1]])
        with tarfile.open(fileobj=project, mode="r|") as layer:
            project_names = {member.name for member in layer}
    assert "opt/funnelstack-venv/bin/python" in names
    assert any(name.startswith("opt/funnelstack-venv/lib/python3") and
               name.endswith("site-packages/tfx/__init__.py") for name in names)
    for empty in ("proc", "sys", "dev", "tmp"):
        assert empty in names
        assert not [name for name in names if name.startswith(empty + "/")], empty
    for left_out in ("etc/resolv.conf", "root/.cache", ".funnelstack-bootstrapped"):
        assert left_out not in names
    repo_parent = os.path.dirname(REPO).lstrip("/")
    assert not [name for name in names if name == repo_parent or name.startswith(repo_parent + "/")]
    assert not [name for name in names if name.startswith("var/lib/apt/lists/")]
    assert "opt/funnelstack/tfx_pipeline/cli.py" in project_names
    assert not [name for name in project_names if not name.startswith("opt")]


@pytest.mark.e2e
def test_rebuild_is_a_no_op_or_rewrites_only_the_project_layer(image):
    path = image["path"]
    again = build_image.build(_rootfs(), path)
    assert again["action"] == "up to date" and again["seconds"] < 30
    # A changed project file: the base layer stays where it is in the archive.
    with tarfile.open(path, mode="r:") as tar:
        before = {member.name: member.offset for member in tar.getmembers()}
    context = image["work"] / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "requirements.txt", "constraints.txt"):
        shutil.copy2(os.path.join(REPO, name), context / name)
    for package in PACKAGES:
        shutil.copytree(os.path.join(REPO, package), context / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    with open(context / "tfx_pipeline" / "cli.py", "a") as handle:
        handle.write("\n# changed\n")
    changed = build_image.build(_rootfs(), path, context=str(context))
    assert changed["action"] == "project layer rebuilt, base layer reused"
    assert changed["seconds"] < 60
    assert changed["config"]["rootfs"]["diff_ids"][0] == image["config"]["rootfs"]["diff_ids"][0]
    assert changed["config"]["rootfs"]["diff_ids"][1] != image["config"]["rootfs"]["diff_ids"][1]
    with tarfile.open(path, mode="r:") as tar:
        after = {member.name: member.offset for member in tar.getmembers()}
    base_name = "blobs/sha256/" + image["config"]["rootfs"]["diff_ids"][0].split(":")[1]
    assert after[base_name] == before[base_name]
    # And back to the repository's files, still without touching the base layer.
    restored = build_image.build(_rootfs(), path)
    assert restored["action"] == "project layer rebuilt, base layer reused"
    assert restored["config"]["rootfs"] == image["config"]["rootfs"]
    _read_archive(path)       # still a complete archive


def _mounts_under(path: str) -> set[str]:
    return build_image.mount_points_under(path)


def _run_in_image(root: str, config: dict, argv: list[str], cwd: str | None = None,
                  timeout: int = 600) -> subprocess.CompletedProcess:
    """`argv` under chroot with the config's Env and WorkingDir (or `cwd`), and HOME
    as Docker sets it for root: what a container runtime does, minus the isolation."""
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    env.setdefault("HOME", "/root")
    workdir = cwd or config["config"]["WorkingDir"]

    def enter():
        os.chroot(root)
        os.chdir(workdir)

    # The executable is looked up on the image's PATH after the chroot.
    return subprocess.run(argv, env=env, preexec_fn=enter, capture_output=True, text=True,
                          timeout=timeout)


def _populate_dev(dev: str) -> None:
    """The device nodes and links runc puts into a container's /dev."""
    import stat

    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                               ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)):
        path = os.path.join(dev, name)
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, 0o666)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "shm"), 0o1777)


@pytest.mark.e2e
def test_the_image_runs_the_cli(image):
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is needed to extract the layers")
    root = str(image["work"] / "root")
    os.mkdir(root)
    mounted = []
    try:
        with open(image["path"], "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            manifest = json.load(tar.extractfile("manifest.json"))[0]
            config = json.load(tar.extractfile(manifest["Config"]))
            for layer in manifest["Layers"]:      # in order, as a runtime stacks them
                source = tar.extractfile(layer)
                untar = subprocess.Popen(["tar", "--numeric-owner", "-xpf", "-", "-C", root],
                                         stdin=subprocess.PIPE, stderr=subprocess.PIPE)
                shutil.copyfileobj(source, untar.stdin, 1 << 20)
                untar.stdin.close()
                assert untar.wait() == 0, untar.stderr.read().decode()
        # What a container runtime provides: /proc, and a /dev with the standard nodes.
        for kind, target in (("proc", "proc"), ("tmpfs", "dev")):
            mount = subprocess.run(["mount", "-t", kind, "-o", "nosuid", kind,
                                    os.path.join(root, target)], capture_output=True, text=True)
            if mount.returncode != 0:
                pytest.skip(f"cannot mount {kind} at /{target} for the chroot: "
                            f"{mount.stderr.strip()}")
            mounted.append(os.path.join(root, target))
        _populate_dev(os.path.join(root, "dev"))

        entrypoint = config["config"]["Entrypoint"]
        help_ = _run_in_image(root, config, entrypoint + ["--help"])
        assert help_.returncode == 0, help_.stderr
        assert "python -m tfx_pipeline" in help_.stdout
        for command in ("run", "compile", "report"):
            assert command in help_.stdout

        compile_help = _run_in_image(root, config, entrypoint + ["compile", "--help"])
        assert compile_help.returncode == 0, compile_help.stderr
        assert "--image" in compile_help.stdout and "--data-root" in compile_help.stdout

        # A real compile: TFX, KFP and the project's pipeline all import in the image.
        compiled = _run_in_image(root, config, entrypoint + [
            "compile", "--output", "/tmp/kfp/funnel", "--image", "registry.example/funnelstack:1"])
        assert compiled.returncode == 0, compiled.stdout + compiled.stderr
        with open(os.path.join(root, "tmp", "kfp", "funnel.json")) as handle:
            job = json.load(handle)
        images = {executor["container"]["image"] for executor in
                  job["pipelineSpec"]["deploymentSpec"]["executors"].values()
                  if "container" in executor}
        assert images == {"registry.example/funnelstack:1"}

        # What Kubeflow's TFX launcher does: its own command, another working
        # directory; `python` is the venv's and the project still imports.
        launcher = _run_in_image(root, config, [
            "python", "-c",
            "import os, sys, tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor, "
            "tfx_pipeline.trainer, tfx_pipeline.push; print(sys.executable, os.getcwd(), "
            "tfx_pipeline.trainer.__file__)"], cwd="/")
        assert launcher.returncode == 0, launcher.stderr
        assert launcher.stdout.split() == [
            "/opt/funnelstack-venv/bin/python", "/", "/opt/funnelstack/tfx_pipeline/trainer.py"]
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", target], check=False)
        left = _mounts_under(root)
        if left:     # never delete through a mount
            raise AssertionError(f"still mounted under {root}: {sorted(left)}; not deleting it")
        shutil.rmtree(root, ignore_errors=True)
