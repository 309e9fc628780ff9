"""The container image's build, install and start steps, run without Docker.

The test builds the wheel as the Dockerfile's builder stage does and installs
it into a fresh virtualenv as the runtime stage does. It then starts
``calsync serve`` as the image's unprivileged user, configured by environment
variables only, against the sandbox API on loopback. It also parses the
Dockerfile and checks that the ENV, EXPOSE, USER, VOLUME, HEALTHCHECK,
ENTRYPOINT and CMD lines are the ones it imitates, so that the two cannot
drift apart.

NOTE: the virtualenv uses a Python of this machine, which may differ from the
image's Python 3.12, and pip installs the newest dependencies that
pyproject.toml allows, as ``docker build`` would on the same day.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import requests

from calsync.sandbox import Sandbox
from tests.helpers import parse_both

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"

SECRET = "image-secret"
FEED_TOKEN = "image-feed-token"
UID_DOMAIN = "image.calsync.invalid"
BUILD_TIMEOUT_SECONDS = 600
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 60
POLL_SECONDS = 0.2
SETPRIV = shutil.which("setpriv")
RUNNING_AS_ROOT = os.name == "posix" and os.geteuid() == 0


# Reading the Dockerfile.


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, with its continuation lines joined."""

    keyword: str
    arguments: str


@dataclass(frozen=True)
class Stage:
    """The instructions of one build stage, from its FROM line on."""

    name: str
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[str]:
        return [instruction.arguments for instruction in self.instructions if instruction.keyword == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name!r} has {len(found)} {keyword} instructions, expected 1"
        return found[0]

    def env(self) -> dict[str, str]:
        """Return the variables that the stage's ENV instructions set, in KEY=value form only."""
        variables = {}
        for arguments in self.all("ENV"):
            for pair in shlex.split(arguments):
                key, equals, value = pair.partition("=")
                assert equals, f"ENV {arguments!r} is not in KEY=value form"
                variables[key] = value
        return variables


def read_instructions(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, dropping comments and joining backslash continuations."""
    instructions = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"the Dockerfile ends inside a continued line: {pending!r}"
    return instructions


def read_stages(text: str) -> list[Stage]:
    """Group the instructions by stage. Instructions before the first FROM form a stage named "global"."""
    stages: list[tuple[str, list[Instruction]]] = [("global", [])]
    for instruction in read_instructions(text):
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[-1] if len(words) == 3 and words[1].upper() == "AS" else f"stage {len(stages)}"
            stages.append((name, []))
        stages[-1][1].append(instruction)
    return [Stage(name, tuple(instructions)) for name, instructions in stages]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return read_stages(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def builder(stages: list[Stage]) -> Stage:
    named = [stage for stage in stages if stage.name == "builder"]
    assert len(named) == 1, "the Dockerfile has no stage named builder"
    return named[0]


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def exec_form(arguments: str) -> list[str]:
    """Parse the JSON array of an exec-form instruction such as CMD ["serve"]."""
    try:
        words = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"{arguments!r} is not in exec form (a JSON array of strings)")
    assert isinstance(words, list) and all(isinstance(word, str) for word in words), arguments
    return words


def image_user(runtime: Stage) -> tuple[int, int]:
    user, _, group = runtime.one("USER").partition(":")
    assert user.isdigit(), f"USER {user}:{group} must be a numeric uid:gid, so that the test can use it"
    assert group.isdigit(), f"USER {user}:{group} must be a numeric uid:gid, so that the test can use it"
    return int(user), int(group)


def healthcheck_command(runtime: Stage) -> list[str]:
    arguments = runtime.one("HEALTHCHECK")
    assert " CMD " in f" {arguments}", f"HEALTHCHECK {arguments!r} has no CMD"
    return exec_form(arguments.split("CMD ", 1)[1])


# The Dockerfile's lines that the steps below imitate.


def test_dockerfile_entrypoint_and_cmd(runtime):
    assert exec_form(runtime.one("ENTRYPOINT")) == ["calsync"]
    assert exec_form(runtime.one("CMD")) == ["serve"]


def test_dockerfile_configures_by_environment(runtime):
    env = runtime.env()

    assert env.get("CALSYNC_SYNC_STATE_DIR") == "/data"
    assert env.get("CALSYNC_SERVER_LISTEN") == "0.0.0.0:8080"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_dockerfile_bakes_in_no_secret(stages):
    for stage in stages:
        for name in (*stage.env(), *(argument.split("=")[0] for argument in stage.all("ARG"))):
            assert "SECRET" not in name.upper(), f"{name} in stage {stage.name!r} would store a secret in the image"
            assert "TOKEN" not in name.upper(), f"{name} in stage {stage.name!r} would store a token in the image"


def test_dockerfile_exposes_listen_port(runtime):
    port = runtime.env()["CALSYNC_SERVER_LISTEN"].rpartition(":")[2]

    assert runtime.one("EXPOSE") == port


def test_dockerfile_state_volume_is_state_dir(runtime):
    state_dir = runtime.env()["CALSYNC_SYNC_STATE_DIR"]

    assert exec_form(runtime.one("VOLUME")) == [state_dir]
    assert runtime.one("WORKDIR") == state_dir


def test_dockerfile_user_is_unprivileged(runtime):
    uid, gid = image_user(runtime)

    assert uid != 0
    assert gid != 0


def test_dockerfile_healthcheck_calls_healthz(runtime):
    command = healthcheck_command(runtime)

    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]


def test_dockerfile_builds_and_installs_one_wheel(builder, runtime):
    builds = [run for run in builder.all("RUN") if "pip wheel" in run]
    installs = [run for run in runtime.all("RUN") if "pip install" in run]

    assert len(builds) == 1, "the builder stage should build the wheel with one 'pip wheel' command"
    assert "--no-deps" in builds[0]
    assert len(installs) == 1, "the runtime stage should install the wheel with one 'pip install' command"
    assert "calsync-*.whl" in installs[0]
    assert "--no-deps" not in installs[0], "the runtime stage must install the wheel's dependencies"


def test_dockerfile_copies_existing_sources(builder):
    for source in copy_sources(builder):
        assert (ROOT / source).exists(), f"the builder stage copies {source}, which does not exist"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def ignored_by_docker(path: str, patterns: list[str]) -> bool:
    """Tell whether a pattern excludes ``path`` or one of its parents, by fnmatch rules.

    fnmatch's "*" also matches "/", so this finds at least every path that
    Docker's own matching excludes.
    """
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    for candidate in candidates:
        for pattern in patterns:
            if fnmatch.fnmatchcase(candidate, pattern) or fnmatch.fnmatchcase(candidate, pattern.removeprefix("**/")):
                return True
    return False


def test_dockerignore_keeps_copied_sources(builder):
    patterns = dockerignore_patterns()

    assert not any(pattern.startswith("!") for pattern in patterns), "exceptions (!) are not checked by this test"
    for source in copy_sources(builder):
        assert not ignored_by_docker(source, patterns), f".dockerignore excludes {source}, which the build copies"


LOCAL_FILES = [
    ".git/config",
    ".venv/bin/python",
    "tests/test_cli.py",
    "calsync/__pycache__/cli.cpython-312.pyc",
    ".pytest_cache/README.md",
    "calsync-data/state.sqlite3",
    "state.sqlite3",
    "calsync.toml",
    "secrets/calsync_feed_token",
    "calsync.env",
]


@pytest.mark.parametrize("path", LOCAL_FILES)
def test_dockerignore_excludes_local_files(path):
    assert ignored_by_docker(path, dockerignore_patterns())


def copy_sources(builder: Stage) -> list[str]:
    """Return the build-context paths that the builder stage's COPY lines copy."""
    sources = []
    for arguments in builder.all("COPY"):
        words = arguments.split()
        assert not any(word.startswith("--from") for word in words), "the builder stage copies from another stage"
        sources += words[:-1]
    return sources


# The image's steps, outside Docker.


def missing_prerequisite() -> str | None:
    """Return why the image's steps cannot run here, or None when they can."""
    if os.name != "posix":
        return "needs a POSIX system to run calsync serve as another user"
    if RUNNING_AS_ROOT and SETPRIV is None:
        return "runs as root and needs setpriv (util-linux) to start calsync serve as the image's unprivileged user"
    if RUNNING_AS_ROOT and not _traversable_by_anyone(Path(tempfile.gettempdir())):
        return f"the temporary directory {tempfile.gettempdir()} is not searchable by an unprivileged user"
    return None


def _traversable_by_anyone(path: Path) -> bool:
    return all(directory.stat().st_mode & stat.S_IXOTH for directory in (path, *path.parents))


def find_base_python() -> str | None:
    """Return a Python 3.11 or newer, with the venv module, that the image's user can run.

    The virtualenv links to this interpreter and its standard library, so as
    root the interpreter that runs pytest qualifies only if it lies outside
    directories that only root may enter, such as a pyenv under /root.
    """
    candidates = [getattr(sys, "_base_executable", sys.executable), "/usr/local/bin/python3", "/usr/bin/python3"]
    for candidate in candidates:
        if RUNNING_AS_ROOT and not _runnable_by_anyone(Path(candidate)):
            continue
        check = "import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))"
        if subprocess.run([candidate, "-c", check], capture_output=True, timeout=60, check=False).returncode == 0:
            return candidate
    return None


def _runnable_by_anyone(executable: Path) -> bool:
    if not executable.exists():
        return False
    real = executable.resolve()
    return bool(real.stat().st_mode & stat.S_IXOTH) and _traversable_by_anyone(real.parent)


MISSING_PREREQUISITE = missing_prerequisite()
requires_prerequisites = pytest.mark.skipif(MISSING_PREREQUISITE is not None, reason=MISSING_PREREQUISITE or "")


@dataclass(frozen=True)
class InstalledImage:
    """A virtualenv with calsync installed from its wheel, and a state directory for the image's user."""

    root: Path
    venv: Path
    state_dir: Path


def run_step(command: list[str], step_name: str, **options) -> None:
    """Run one build or install step, failing the test with its output when it fails."""
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS, check=False, **options
    )
    if completed.returncode != 0:
        pytest.fail(f"{step_name} failed with exit code {completed.returncode}:\n{completed.stdout}\n{completed.stderr}")


@pytest.fixture(scope="module")
def installed(builder: Stage, runtime: Stage) -> Iterator[InstalledImage]:
    # pytest's own temporary directories are private to root, so the image's user could not enter them.
    root = Path(tempfile.mkdtemp(prefix="calsync-image-"))
    root.chmod(0o755)
    try:
        yield install_image(root, builder, runtime)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def install_image(root: Path, builder: Stage, runtime: Stage) -> InstalledImage:
    base_python = find_base_python()
    if base_python is None:
        pytest.skip("needs a Python 3.11 or newer with the venv module that an unprivileged user can run")

    source = root / "src"
    source.mkdir()
    for name in copy_sources(builder):
        copy_into(ROOT / name, source / Path(name).name)

    # The source is passed as an absolute path: pip reads a bare word such as "src" as a package name on PyPI.
    wheels = root / "wheels"
    run_step([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)], "pip wheel")
    [wheel] = wheels.glob("calsync-*.whl")

    venv = root / "venv"
    run_step([base_python, "-m", "venv", str(venv)], "python -m venv")
    run_step([str(venv / "bin" / "pip"), "install", str(wheel)], "pip install of the wheel")
    make_readable(venv)

    state_dir = root / "data"
    state_dir.mkdir(mode=0o750)
    if RUNNING_AS_ROOT:
        os.chown(state_dir, *image_user(runtime))
    return InstalledImage(root, venv, state_dir)


def copy_into(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copy2(source, target)


def make_readable(directory: Path) -> None:
    """Give everyone read access, and search access to directories, whatever the umask was."""
    for path in (directory, *directory.rglob("*")):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        extra = stat.S_IROTH | stat.S_IRGRP
        if path.is_dir() or mode & stat.S_IXUSR:
            extra |= stat.S_IXOTH | stat.S_IXGRP
        path.chmod(mode | extra)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_image_user(runtime: Stage, command: list[str]) -> list[str]:
    """Prefix ``command`` so that it runs as the Dockerfile's USER, as the container would."""
    if not RUNNING_AS_ROOT:
        return command  # already unprivileged
    uid, gid = image_user(runtime)
    return [str(SETPRIV), f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *command]


def image_environment(runtime: Stage, installed: InstalledImage, listen: str, base_url: str) -> dict[str, str]:
    """Return the container's environment: the Dockerfile's ENV with test addresses, and the run-time settings.

    Nothing comes from the environment of pytest, and no config file exists,
    so every setting that calsync reads comes from these variables.
    """
    env = {key: value for key, value in runtime.env().items() if key != "PATH"}
    env.update(
        PATH=f"{installed.venv / 'bin'}:/usr/bin:/bin",
        HOME=str(installed.state_dir),
        LANG="C.UTF-8",
        # An empty PYTHONTZPATH hides the system zone files, so time zones must come from the tzdata package.
        PYTHONTZPATH="",
        CALSYNC_SYNC_STATE_DIR=str(installed.state_dir),
        CALSYNC_SERVER_LISTEN=listen,
        CASHFIN_CLIENT_SECRET=SECRET,
        CALSYNC_CASHFIN_BASE_URL=base_url,
        CALSYNC_FEED_TOKEN=FEED_TOKEN,
        CALSYNC_CALENDAR_UID_DOMAIN=UID_DOMAIN,
    )
    return env


def wait_for_status(
    session: requests.Session, url: str, process: subprocess.Popen, log_path: Path, expected: int = 200
) -> requests.Response:
    """Poll ``url`` until it returns ``expected``. Fail with the server's log if the process exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    last = "no response yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"calsync serve exited with code {process.returncode}:\n{read_log(log_path)}")
        try:
            response = session.get(url, timeout=5)
        except requests.ConnectionError as error:
            last = f"connection failed: {error}"
        else:
            if response.status_code == expected:
                return response
            last = f"status {response.status_code}: {response.text.strip()}"
        time.sleep(POLL_SECONDS)
    pytest.fail(f"{url} did not return {expected} within {START_TIMEOUT_SECONDS} s ({last}):\n{read_log(log_path)}")


def read_log(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no output)"


@pytest.fixture
def api() -> Iterator[Sandbox]:
    # The data set is generated around today, so that the feed's past_days window contains bookings.
    with Sandbox(secret=SECRET, count=40) as sandbox:
        sandbox.start()
        yield sandbox


@requires_prerequisites
def test_wheel_installs_tzdata(installed):
    python = str(installed.venv / "bin" / "python")
    check = "import tzdata, zoneinfo; print(zoneinfo.ZoneInfo('Africa/Nairobi'))"

    completed = subprocess.run(
        [python, "-c", check], env={"PYTHONTZPATH": ""}, capture_output=True, text=True, timeout=60, check=False
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "Africa/Nairobi"


@requires_prerequisites
def test_image_serves_feed_from_environment(installed, runtime, api):
    listen = f"127.0.0.1:{free_port()}"
    base = f"http://{listen}"
    env = image_environment(runtime, installed, listen, api.base_url)
    # "calsync" is found on PATH, which starts with the virtualenv's bin directory as the image's PATH does.
    command = as_image_user(runtime, exec_form(runtime.one("ENTRYPOINT")) + exec_form(runtime.one("CMD")))
    log_path = installed.root / "serve.log"
    session = requests.Session()
    session.trust_env = False  # no proxy between the test and the loopback server

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, cwd=installed.state_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        check_serving_image(session, base, process, log_path, runtime, env)

        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=STOP_TIMEOUT_SECONDS)
        assert returncode == 0, f"calsync serve exited with {returncode} after SIGTERM:\n{read_log(log_path)}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)

    healthcheck_after_stop = run_healthcheck(runtime, env)
    assert healthcheck_after_stop.returncode != 0, "the HEALTHCHECK passed with the server stopped"
    check_state_files(installed, runtime)


def check_serving_image(
    session: requests.Session,
    base: str,
    process: subprocess.Popen,
    log_path: Path,
    runtime: Stage,
    env: dict[str, str],
) -> None:
    health = wait_for_status(session, f"{base}/healthz", process, log_path)
    assert health.text == "ok\n"

    healthcheck = run_healthcheck(runtime, env)
    assert healthcheck.returncode == 0, f"the Dockerfile's HEALTHCHECK failed:\n{healthcheck.stderr}"

    wait_for_status(session, f"{base}/readyz", process, log_path)

    feed = session.get(f"{base}/feeds/bookings.ics", params={"token": FEED_TOKEN}, timeout=10)
    assert feed.status_code == 200, read_log(log_path)
    assert feed.headers["Content-Type"] == "text/calendar; charset=utf-8"
    calendar = parse_both(feed.content)
    assert calendar.walk("VEVENT"), "the feed has no events"

    wrong_token = session.get(f"{base}/feeds/bookings.ics", params={"token": "wrong"}, timeout=10)
    assert wrong_token.status_code == 404


def run_healthcheck(runtime: Stage, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the Dockerfile's HEALTHCHECK command as the container would, with the image's PATH and user."""
    command = as_image_user(runtime, healthcheck_command(runtime))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


def check_state_files(installed: InstalledImage, runtime: Stage) -> None:
    state_file = installed.state_dir / "state.sqlite3"
    feed_file = installed.state_dir / "feeds" / "bookings.ics"

    assert state_file.exists()
    assert feed_file.exists()
    if RUNNING_AS_ROOT:
        assert (state_file.stat().st_uid, state_file.stat().st_gid) == image_user(runtime)
