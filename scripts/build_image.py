#!/usr/bin/env python3
"""Writes the pipeline image as a `docker load` archive, without an engine or a registry.

    python3 scripts/build_image.py [--rootfs DIR] [--output out/funnelstack-image.tar]
                                   [--tag funnelstack:latest]

The image is what the Dockerfile describes, assembled from the project's own
Debian 13 root filesystem (scripts/setup.sh) instead of a base image:

  layer 1  the root filesystem with its venv at /opt/funnelstack-venv: what the
           Dockerfile's RUN steps produce. Left out: whatever is mounted into it
           (/proc, /sys, /dev and /tmp stay as empty directories; the bind-mounted
           repository parent and any other mount go), apt's package lists and
           downloaded packages, root's caches, and host-specific files
           (/etc/resolv.conf, /etc/hostname).
  layer 2  the project files, laid out as the Dockerfile's COPY lines say.
  config   Env, WorkingDir, Entrypoint and Cmd read from the Dockerfile, so the
           two cannot drift.

The archive holds both the `docker save` layout (manifest.json, repositories)
and an OCI image layout (oci-layout, index.json, blobs/sha256/...): `docker load
-i`, `podman load -i` and OCI tools read it. Layers are uncompressed tars, so
each layer's digest is also its diff_id.

Re-running is cheap: when the archive already holds the same image (same base
layer key, same project layer, same config) nothing is written; when only the
project changed, the base layer stays in place in the archive and only what
follows it is rewritten. The base layer key is made of the rootfs's set-up
markers (.funnelstack-bootstrapped, the venv's .installed-<fingerprint>) and
the modification times of dpkg's status file and the venv's site-packages,
so an apt or pip install in the rootfs rebuilds it.

Standard library only (runs with the host's Python 3.11 and inside the rootfs).
Reads the rootfs and never writes to it.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import hashlib
import io
import json
import os
import platform
import shlex
import sys
import tarfile
import time

BUILDER_VERSION = "1"
DEFAULT_TAG = "funnelstack:latest"
DEFAULT_OUTPUT = os.path.join("out", "funnelstack-image.tar")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The PATH a Debian base image's config starts with; ENV PATH=... replaces it.
BASE_ENV = [("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")]
VENV = "/opt/funnelstack-venv"

# Relative to the rootfs. Kept as empty directories: filled by the container runtime.
KEEP_EMPTY = ("proc", "sys", "dev", "tmp", "var/lib/apt/lists", "var/cache/apt")
# Left out with everything below them.
EXCLUDE = (
    ".funnelstack-bootstrapped",
    "etc/resolv.conf", "etc/hostname",          # the host's; the runtime provides them
    "root/.cache", "root/.keras", "root/.apache_beam", "root/.config/matplotlib",
)
LABEL_KEY = "org.funnelstack.image-key"
LABEL_BASE_KEY = "org.funnelstack.base-layer-key"
COPY_BUFSIZE = 1 << 20


def log(message: str) -> None:
    print(f"[funnelstack] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- Dockerfile

class DockerfileError(ValueError):
    pass


def _logical_lines(text: str):
    """Dockerfile lines with comments dropped and backslash continuations joined."""
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            yield current.strip()
        current = ""
    if current.strip():
        yield current.strip()


def parse_dockerfile(path: str) -> dict:
    """The parts of the Dockerfile an engine-less build needs: the default base
    image, the final Env, WorkingDir, Entrypoint and Cmd, and the COPY lines."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    env = list(BASE_ENV)
    result = {"base_image": None, "workdir": "/", "entrypoint": None, "cmd": None,
              "copies": [], "labels": {}}
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            if name == "BASE_IMAGE":
                result["base_image"] = default or None
        elif keyword == "ENV":
            for name, value in _pairs(rest, line):
                names = [k for k, _ in env]    # a redefined variable keeps its place, as in Docker
                if name in names:
                    env[names.index(name)] = (name, value)
                else:
                    env.append((name, value))
        elif keyword == "LABEL":
            result["labels"].update(_pairs(rest, line))
        elif keyword == "WORKDIR":
            _no_variables(rest, line)
            result["workdir"] = os.path.normpath(os.path.join(result["workdir"], rest))
        elif keyword in ("ENTRYPOINT", "CMD"):
            try:
                value = json.loads(rest)
            except json.JSONDecodeError:
                raise DockerfileError(f"{keyword} must be a JSON array (exec form): {line!r}") from None
            if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
                raise DockerfileError(f"{keyword} must be a JSON array of strings: {line!r}")
            result[keyword.lower()] = value
            if keyword == "ENTRYPOINT":
                result["cmd"] = None    # as Docker does: a new ENTRYPOINT resets CMD
        elif keyword in ("COPY", "ADD"):
            _no_variables(rest, line)
            words = shlex.split(rest)
            if keyword == "ADD" or any(word.startswith("--") for word in words) or len(words) < 2:
                raise DockerfileError(f"only plain 'COPY SRC... DEST' is supported: {line!r}")
            dest = words[-1]
            if not dest.startswith("/"):
                dest = os.path.join(result["workdir"], dest) + ("/" if dest.endswith("/") else "")
            result["copies"].append((words[:-1], dest))
    result["env"] = env
    if result["entrypoint"] is None:
        raise DockerfileError(f"{path} has no ENTRYPOINT")
    return result


def _no_variables(text: str, line: str) -> None:
    if "$" in text:
        raise DockerfileError(f"variable references are not supported here: {line!r}")


def _pairs(rest: str, line: str):
    _no_variables(rest, line)
    for word in shlex.split(rest):
        name, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"use the KEY=VALUE form: {line!r}")
        yield name, value


def image_config_fields(spec: dict) -> dict:
    """The `config` object fields that come from the Dockerfile."""
    fields = {"Env": [f"{name}={value}" for name, value in spec["env"]],
              "Entrypoint": spec["entrypoint"], "WorkingDir": spec["workdir"]}
    if spec["cmd"] is not None:
        fields["Cmd"] = spec["cmd"]
    if spec["labels"]:
        fields["Labels"] = dict(spec["labels"])
    return fields


# --------------------------------------------------------------------------- the project layer

def read_dockerignore(context: str) -> list[str]:
    path = os.path.join(context, ".dockerignore")
    if not os.path.exists(path):
        return []
    patterns = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                if line.startswith("!"):
                    raise DockerfileError(".dockerignore exceptions (!) are not supported")
                patterns.append(line.strip("/"))
    return patterns


def _glob(parts: list[str], pattern: list[str]) -> bool:
    """Path-segment glob: `*` stays within a segment, `**` spans any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob(parts[1:], pattern[1:])


def _ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore matching: a pattern matches a path or any of its parents."""
    parts = rel.split("/")
    return any(_glob(parts[:n], pattern.split("/"))
               for pattern in patterns for n in range(1, len(parts) + 1))


def project_entries(context: str, spec: dict) -> list[tuple[str, str]]:
    """(source path, path in the image) for every file and directory the COPY lines
    put into the image, parents first; .dockerignore applies."""
    patterns = read_dockerignore(context)
    entries: dict[str, str] = {}

    def add_parents(dest: str) -> None:
        parent = os.path.dirname(dest)
        while parent not in ("", "/") and parent not in entries:
            entries[parent] = ""
            parent = os.path.dirname(parent)

    for sources, dest in spec["copies"]:
        if len(sources) > 1 and not dest.endswith("/"):
            raise DockerfileError(f"COPY with several sources needs a directory destination: {dest}")
        for source in sources:
            rel = os.path.normpath(source)
            path = os.path.join(context, rel)
            if rel.startswith("..") or os.path.isabs(rel):
                raise DockerfileError(f"COPY source outside the context: {source}")
            if not os.path.exists(path):
                raise DockerfileError(f"COPY source not found: {source}")
            if os.path.isdir(path):
                # COPY dir/ dest/ copies the directory's contents into dest.
                target = dest.rstrip("/")
                add_parents(target + "/x")
                entries[target] = path
                for root, dirs, files in os.walk(path):
                    dirs.sort()
                    for name in sorted(dirs) + sorted(files):
                        full = os.path.join(root, name)
                        relative = os.path.relpath(full, context)
                        if _ignored(relative, patterns):
                            if name in dirs:
                                dirs.remove(name)
                            continue
                        entries[os.path.join(target, os.path.relpath(full, path))] = full
            else:
                if _ignored(rel, patterns):
                    raise DockerfileError(f"COPY source excluded by .dockerignore: {source}")
                target = os.path.join(dest, os.path.basename(rel)) if dest.endswith("/") else dest
                add_parents(target)
                entries[target] = path
    return sorted(entries.items(), key=lambda item: item[0])


def project_layer(context: str, spec: dict) -> bytes:
    """The project layer as an uncompressed tar (small; built in memory)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dest, source in project_entries(context, spec):
            name = dest.lstrip("/")
            if not source:              # a parent directory the COPY creates
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
                continue
            info = tar.gettarinfo(source, arcname=name)
            info.uid = info.gid = 0     # COPY without --chown: root-owned
            info.uname = info.gname = ""
            if info.isreg():
                with open(source, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the base layer

def _unescape_mount(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path


def mount_points_under(root: str) -> set[str]:
    """Mount points below `root` (relative paths), from /proc/self/mountinfo.
    Bind mounts of the same file system are invisible to st_dev comparisons
    (tar --one-file-system misses them), so mountinfo is the only reliable source."""
    root = os.path.realpath(root)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError as error:
        raise RuntimeError(f"cannot read /proc/self/mountinfo ({error}); refusing to walk "
                           f"{root} without knowing its mounts") from None
    found = set()
    for line in lines:
        point = _unescape_mount(line.split()[4])
        if root == "/":
            rel = point.lstrip("/")
        elif point.startswith(root + "/"):
            rel = point[len(root) + 1:]
        else:
            continue
        if rel:
            found.add(rel)
    return found


def base_layer_key(rootfs: str) -> str:
    """Changes whenever the rootfs is re-bootstrapped, its venv re-installed, or
    packages are added with apt or pip."""
    parts = [f"builder={BUILDER_VERSION}", f"keep_empty={KEEP_EMPTY}", f"exclude={EXCLUDE}"]
    bootstrap = os.path.join(rootfs, ".funnelstack-bootstrapped")
    if not os.path.exists(bootstrap):
        raise RuntimeError(f"{rootfs} is not a funnelstack root filesystem (no "
                           ".funnelstack-bootstrapped); run scripts/setup.sh")
    parts.append(f"bootstrapped={os.stat(bootstrap).st_mtime_ns}")
    venv = os.path.join(rootfs, VENV.lstrip("/"))
    markers = sorted(name for name in os.listdir(venv) if name.startswith(".installed-")) \
        if os.path.isdir(venv) else []
    if not markers:
        raise RuntimeError(f"the rootfs venv {VENV} is not installed; run scripts/setup.sh")
    parts.append(f"venv={markers}")
    for rel in ["var/lib/dpkg/status"] + sorted(
            os.path.join(VENV.lstrip("/"), "lib", name, "site-packages")
            for name in os.listdir(os.path.join(venv, "lib")) if name.startswith("python")):
        try:
            st = os.stat(os.path.join(rootfs, rel))
            parts.append(f"{rel}={st.st_mtime_ns}:{st.st_size}")
        except FileNotFoundError:
            parts.append(f"{rel}=missing")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class _HashingWriter:
    """File-like sink: writes through to `out` and hashes and counts the bytes."""

    def __init__(self, out):
        self.out, self.digest, self.size = out, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.out.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


def _architecture(rootfs: str) -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


def _outermost(paths: set[str]) -> set[str]:
    """The paths that lie below none of the others."""
    return {path for path in paths
            if not any(path.startswith(other + "/") for other in paths if other != path)}


def excluded_paths(rootfs: str) -> tuple[set[str], set[str]]:
    """(paths left out with everything below them, mount points kept as empty
    directories), relative to the rootfs."""
    rootfs = os.path.realpath(rootfs)
    mounts = _outermost(mount_points_under(rootfs))
    dropped = {m for m in mounts if m not in KEEP_EMPTY}
    # A directory that holds nothing but left-out mount points goes too.
    for point in sorted(dropped, key=lambda p: -p.count("/")):
        parent = os.path.dirname(point)
        while parent and parent not in KEEP_EMPTY and parent not in mounts:
            try:
                children = os.listdir(os.path.join(rootfs, parent))
            except OSError:
                break
            if not all(os.path.join(parent, child) in dropped for child in children):
                break
            dropped.add(parent)
            parent = os.path.dirname(parent)
    return set(EXCLUDE) | dropped, mounts & set(KEEP_EMPTY)


def is_left_out(rootfs: str, path: str) -> bool:
    """True when `path` (absolute) is not part of the base layer of `rootfs`."""
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(rootfs))
    if rel.startswith(".."):
        return True
    excluded, _ = excluded_paths(rootfs)
    return any(rel == p or rel.startswith(p + "/")
               for p in excluded) or any(rel.startswith(p + "/") for p in KEEP_EMPTY)


def write_base_layer(rootfs: str, sink) -> dict:
    """Streams the rootfs as a layer tar into `sink`; returns counts. Never descends
    into a mount point (bind mounts of the same file system included)."""
    rootfs = os.path.realpath(rootfs)
    exclude, _ = excluded_paths(rootfs)
    mounts = _outermost(mount_points_under(rootfs))
    keep_empty = set(KEEP_EMPTY)
    counts = {"files": 0, "skipped": 0}
    tar = tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT)
    tar.copybufsize = COPY_BUFSIZE

    def add(rel: str, full: str) -> bool:
        """Adds one entry; True when it is a directory to descend into."""
        try:
            info = tar.gettarinfo(full, arcname=rel)
        except FileNotFoundError:       # removed while walking
            return False
        if info is None:                # a socket: not representable in tar
            counts["skipped"] += 1
            return False
        info.uname = info.gname = ""    # numeric ids only: the host's names are not the image's
        if info.isreg():
            try:
                with open(full, "rb") as handle:
                    tar.addfile(info, handle)
            except FileNotFoundError:
                return False
        else:
            tar.addfile(info)
        counts["files"] += 1
        return info.isdir() and rel not in keep_empty

    def walk(rel_dir: str) -> None:
        full_dir = os.path.join(rootfs, rel_dir) if rel_dir else rootfs
        try:
            names = sorted(os.listdir(full_dir))
        except FileNotFoundError:
            return
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in exclude:
                continue
            full = os.path.join(full_dir, name)
            if rel in mounts and rel not in keep_empty:
                continue
            if add(rel, full):
                walk(rel)

    walk("")
    tar.close()
    return counts


# --------------------------------------------------------------------------- the archive

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _header(name: str, size: int, mtime: int, mode: int = 0o644, type_=tarfile.REGTYPE) -> bytes:
    """One 512-byte GNU tar header: base-256 sizes keep it one block for any size,
    so a header can be rewritten in place once the member's size and digest are known."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, mode, type_
    block = info.tobuf(format=tarfile.GNU_FORMAT)
    if len(block) != tarfile.BLOCKSIZE:
        raise ValueError(f"member name too long for a one-block header: {name}")
    return block


def _pad(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _write_member(out, name: str, data: bytes, mtime: int) -> None:
    out.write(_header(name, len(data), mtime))
    out.write(data)
    out.write(_pad(len(data)))


def _blob(digest_hex: str) -> str:
    return f"blobs/sha256/{digest_hex}"


def _existing_archive(path: str):
    """(config, offset just past the base layer member, base layer member size) of a
    previous archive written by this builder, or None."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = {member.name: member for member in tar.getmembers()}
            manifest = json.load(tar.extractfile(members["manifest.json"]))[0]
            config = json.load(tar.extractfile(members[manifest["Config"]]))
            base = members[manifest["Layers"][0]]
            first = min((member for member in members.values() if member.isfile()),
                        key=lambda member: member.offset)
            if first is not base or base.name != _blob(config["rootfs"]["diff_ids"][0][7:]):
                return None
            return config, base.offset_data + base.size + len(_pad(base.size)), base.size
    except (OSError, KeyError, IndexError, ValueError, tarfile.TarError):
        return None


def _tag_parts(tag: str) -> tuple[str, str]:
    name, sep, version = tag.rpartition(":")
    if not sep or "/" in version:
        return tag, "latest"
    return name, version


def build(rootfs: str, output: str, tag: str = DEFAULT_TAG, context: str = REPO,
          dockerfile: str | None = None, base_image: str | None = None) -> dict:
    """Writes (or confirms) the image archive at `output`; returns what was done."""
    started = time.monotonic()
    dockerfile = dockerfile or os.path.join(context, "Dockerfile")
    spec = parse_dockerfile(dockerfile)
    fields = image_config_fields(spec)
    rootfs = os.path.realpath(rootfs)
    output = os.path.abspath(output)
    if not is_left_out(rootfs, output):
        raise RuntimeError(f"the output {output} lies inside the rootfs being archived")
    base_key = base_layer_key(rootfs)
    layer2 = project_layer(context, spec)
    layer2_digest = _sha256(layer2)
    repo_name, version = _tag_parts(tag)
    base_name = base_image or spec["base_image"] or "debian:trixie-slim"
    image_key = _sha256(json.dumps([BUILDER_VERSION, base_key, layer2_digest, fields, tag],
                                   sort_keys=True).encode())[:16]

    previous = _existing_archive(output) if os.path.exists(output) else None
    if previous and previous[0].get("config", {}).get("Labels", {}).get(LABEL_KEY) == image_key:
        return {"path": output, "size": os.path.getsize(output), "action": "up to date",
                "seconds": time.monotonic() - started, "config": previous[0]}
    reuse = None
    if previous and previous[0].get("config", {}).get("Labels", {}).get(LABEL_BASE_KEY) == base_key:
        reuse = previous

    now = datetime.datetime.now(datetime.timezone.utc)
    created = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    mtime = int(now.timestamp())
    os.makedirs(os.path.dirname(output), exist_ok=True)
    if reuse:
        config0, base_end, _ = reuse
        base_diff_id = config0["rootfs"]["diff_ids"][0]
        base_hex = base_diff_id.split(":", 1)[1]
        base_size = reuse[2]
        out = open(output, "r+b")
        out.seek(base_end)
        out.truncate()
        action = "project layer rebuilt, base layer reused"
    else:
        partial = output + ".partial"
        out = open(partial, "wb")
        for directory in ("blobs/", "blobs/sha256/"):
            out.write(_header(directory, 0, mtime, 0o755, tarfile.DIRTYPE))
        log(f"writing the base layer from {rootfs} (a few GB; about a minute)")
        header_at = out.tell()
        out.write(b"\0" * tarfile.BLOCKSIZE)        # rewritten once size and digest are known
        sink = _HashingWriter(out)
        counts = write_base_layer(rootfs, sink)
        base_hex, base_size = sink.digest.hexdigest(), sink.size
        out.write(_pad(base_size))
        end = out.tell()
        out.seek(header_at)
        out.write(_header(_blob(base_hex), base_size, mtime))
        out.seek(end)
        base_diff_id = f"sha256:{base_hex}"
        log(f"base layer: {counts['files']} entries, {base_size / 1e9:.2f} GB"
            + (f", {counts['skipped']} sockets skipped" if counts["skipped"] else ""))
        action = "built"
    try:
        labels = dict(fields.get("Labels", {}))
        labels.update({LABEL_KEY: image_key, LABEL_BASE_KEY: base_key,
                       "org.opencontainers.image.base.name": base_name})
        config = {
            "architecture": _architecture(rootfs),
            "os": "linux",
            "created": created,
            "config": dict(fields, Labels=labels),
            "rootfs": {"type": "layers", "diff_ids": [base_diff_id, f"sha256:{layer2_digest}"]},
            "history": [
                {"created": created, "created_by": f"funnelstack rootfs {base_key}: Debian 13 "
                 f"with the venv at {VENV} (the Dockerfile's RUN steps)"},
                {"created": created, "created_by": "COPY project files (the Dockerfile's COPY lines)"},
            ],
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_hex = _sha256(config_bytes)
        oci_manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{config_hex}", "size": len(config_bytes)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": base_diff_id, "size": base_size},
                       {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": f"sha256:{layer2_digest}", "size": len(layer2)}],
        }, sort_keys=True, separators=(",", ":")).encode()
        manifest_hex = _sha256(oci_manifest)
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "digest": f"sha256:{manifest_hex}", "size": len(oci_manifest),
                                "annotations": {"org.opencontainers.image.ref.name": version}}]}
        docker_manifest = [{"Config": _blob(config_hex), "RepoTags": [tag],
                            "Layers": [_blob(base_hex), _blob(layer2_digest)]}]
        _write_member(out, _blob(layer2_digest), layer2, mtime)
        _write_member(out, _blob(config_hex), config_bytes, mtime)
        _write_member(out, _blob(manifest_hex), oci_manifest, mtime)
        _write_member(out, "index.json", json.dumps(index).encode(), mtime)
        _write_member(out, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', mtime)
        _write_member(out, "manifest.json", json.dumps(docker_manifest).encode(), mtime)
        _write_member(out, "repositories",
                      json.dumps({repo_name: {version: layer2_digest}}).encode(), mtime)
        out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        out.flush()
        os.fsync(out.fileno())
        out.close()
    except BaseException:
        out.close()
        if not reuse:
            os.unlink(output + ".partial")
        else:                           # a half-rewritten tail: make the next run start over
            os.unlink(output)
        raise
    if not reuse:
        os.replace(output + ".partial", output)
    return {"path": output, "size": os.path.getsize(output), "action": action,
            "seconds": time.monotonic() - started, "config": config}


def default_rootfs() -> str:
    """scripts/common.sh's FUNNEL_ROOTFS default."""
    if os.environ.get("FUNNEL_ROOTFS"):
        return os.environ["FUNNEL_ROOTFS"]
    home = os.environ.get("FUNNEL_HOME")
    if not home and os.geteuid() == 0:
        home = "/var/cache/funnelstack"
    elif not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                            "funnelstack")
    return os.path.join(home, "rootfs-trixie")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", default=default_rootfs(),
                        help="the project's Debian 13 root filesystem (default: %(default)s)")
    parser.add_argument("--output", default=os.path.join(REPO, DEFAULT_OUTPUT))
    parser.add_argument("--tag", default=DEFAULT_TAG)
    parser.add_argument("--base-image", default=None,
                        help="recorded as the base image name; the content always comes "
                             "from --rootfs")
    args = parser.parse_args(argv)
    try:
        result = build(args.rootfs, args.output, args.tag, base_image=args.base_image)
    except (RuntimeError, DockerfileError, OSError) as error:
        print(f"[funnelstack] error: {error}", file=sys.stderr)
        return 1
    size = result["size"]
    print(f"image {args.tag}: {result['action']} in {result['seconds']:.1f} s")
    print(f"archive: {os.path.relpath(result['path'])} ({size / 1e9:.2f} GB, {size} bytes)")
    print(f"load it with: docker load -i {os.path.relpath(result['path'])}"
          f"   (or: podman load -i ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
