"""The Rasa process: its environment, training, and a supervised `rasa run` server.

Rasa Open Source 3.6 needs Python 3.10, so it lives in its own venv (`.rasa-venv`, made by
`nlu/setup_env.sh`) and the bot talks to it over loopback HTTP. Everything here runs Rasa
as asyncio subprocesses, so the bot keeps serving while Rasa installs, trains or starts:

- `ensure_env()` creates or updates the venv when `bin/rasa` is missing or the lock changed;
- `train(config, model)` runs `rasa train nlu` from `nlu/` and puts the model exactly at
  `model` (trained in a temporary directory next to it, then renamed);
- `RasaServer` sets up the venv, trains the model if it does not exist, starts
  `rasa run --enable-api` on 127.0.0.1 with an auth token, waits for `/status` to report the
  loaded model, and restarts the server (1 s, doubling to 60 s) whenever it exits.

Rasa's own output goes to a log file (`data/rasa.log` by default), never to the bot's
stdout; what the administrator needs to know is logged on the `bot.rasa` logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import aiohttp
import yaml

from bot.config import ROOT, Settings

log = logging.getLogger("bot.rasa")

NLU_DIR = ROOT / "nlu"
SETUP_SCRIPT = NLU_DIR / "setup_env.sh"
LOCK_FILE = NLU_DIR / "requirements-rasa.lock"
DATA_DIR = NLU_DIR / "data"
# Environment of every Rasa process: quiet TensorFlow, no telemetry, no graph cache.
RASA_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "RASA_TELEMETRY_ENABLED": "false",
    "SQLALCHEMY_SILENCE_UBER_WARNING": "1",
    "RASA_MAX_CACHE_SIZE": "0",
}
# Variables of the bot's own environment that must not leak into Python 3.10 processes.
_DROP_ENV = ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT", "CONDA_PREFIX")
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
STOP_GRACE_SECONDS = 10.0
TAIL_LINES = 40


class RasaError(Exception):
    """Rasa could not be set up, trained or started; the message says what to do."""


class RasaEnvError(RasaError):
    """The Rasa environment (.rasa-venv) could not be created."""


class RasaTrainError(RasaError):
    """`rasa train nlu` failed (the message carries the end of Rasa's output)."""


# ---------------------------------------------------------------- paths and environment


def rasa_venv() -> Path:
    """The Rasa virtualenv: $RASA_VENV, or `<repo>/.rasa-venv`."""
    return Path(os.environ.get("RASA_VENV") or ROOT / ".rasa-venv")


def rasa_bin() -> Path:
    return rasa_venv() / "bin" / "rasa"


def rasa_python() -> Path:
    return rasa_venv() / "bin" / "python"


def find_uv() -> Path | None:
    """uv on PATH, else the one `./hailong` installs into `.tools/venv`."""
    found = shutil.which("uv")
    if found:
        return Path(found)
    local = ROOT / ".tools" / "venv" / "bin" / "uv"
    return local if os.access(local, os.X_OK) else None


def rasa_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Rasa processes (run with cwd nlu/, which is also on PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(RASA_ENV)
    env["PYTHONPATH"] = str(NLU_DIR)
    env["RASA_VENV"] = str(rasa_venv())
    uv = find_uv()
    if uv is not None and shutil.which("uv", path=env.get("PATH")) is None:
        env["PATH"] = os.pathsep.join(p for p in (env.get("PATH", ""), str(uv.parent)) if p)
    env.update(extra or {})
    return env


def env_is_current() -> bool:
    """`bin/rasa` exists and the venv was installed from the current lock file."""
    stamp = rasa_venv() / ".lock-sha256"
    if not (os.access(rasa_bin(), os.X_OK) and stamp.is_file() and LOCK_FILE.is_file()):
        return False
    want = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    return stamp.read_text(encoding="utf-8").strip() == want


# ---------------------------------------------------------------- subprocesses


class _Output:
    """Collects a process's output: the last lines (for error messages), an optional log
    file, and a callback per line. tqdm's carriage returns count as line ends."""

    def __init__(self, sink: IO[str] | None = None, on_line: Callable[[str], None] | None = None):
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.sink = sink
        self.on_line = on_line

    async def pump(self, stream: asyncio.StreamReader) -> None:
        pending = ""
        while chunk := await stream.read(65536):
            text = chunk.decode("utf-8", errors="replace")
            if self.sink is not None:
                self.sink.write(text)
                self.sink.flush()
            pending += text
            *lines, pending = re.split(r"\r\n|\r|\n", pending)
            for line in lines:
                self._line(line)
        if pending:
            self._line(pending)

    def _line(self, line: str) -> None:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip()
        if not line:
            return
        if not (self.tail and line.startswith("Epochs") and self.tail[-1].startswith("Epochs")):
            self.tail.append(line)
        else:
            self.tail[-1] = line
        if self.on_line is not None:
            self.on_line(line)

    def text(self) -> str:
        return "\n".join(self.tail)


GROUP_GONE_POLLS = 100  # × 50 ms


async def _terminate(proc: asyncio.subprocess.Process, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; reap the process."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("Rasa process %d did not stop in %.0f s: killing it", proc.pid, grace)
    # Whatever is left of the group (the leader may be gone already).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    # Killed members go away (and are reaped by init) a moment later: wait for that, so
    # that a stopped server leaves nothing behind.
    for _ in range(GROUP_GONE_POLLS):
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        await asyncio.sleep(0.05)
    log.warning("members of Rasa's process group %d are still there after SIGKILL", proc.pid)


async def _run(
    cmd: list[str], *, cwd: Path, env: dict[str, str], output: _Output
) -> tuple[int, float]:
    """Run a command in its own process group, streaming its output; returns (code, seconds).

    If the awaiting task is cancelled, the whole process group is terminated."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        await output.pump(proc.stdout)
        code = await proc.wait()
    except BaseException:
        await asyncio.shield(_terminate(proc))
        raise
    return code, time.monotonic() - started


@contextlib.asynccontextmanager
async def _file_lock(path: Path, what: str):  # type: ignore[no-untyped-def]
    """An exclusive lock between processes (two bots, or a bot and the CLI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        announced = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.info("waiting for another process %s", what)
                    announced = True
                await asyncio.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- environment


async def ensure_env() -> None:
    """Create or update the Rasa venv with `nlu/setup_env.sh` unless it is current.

    Raises RasaEnvError with setup_env.sh's message (and what to do) on failure."""
    if env_is_current():
        return
    venv = rasa_venv()
    key = hashlib.sha256(str(venv.resolve()).encode()).hexdigest()[:12]
    lock = Path(tempfile.gettempdir()) / f"hailong-rasa-setup-{key}.lock"
    async with _file_lock(lock, "to set up Rasa"):
        if env_is_current():
            return
        if find_uv() is None:
            raise RasaEnvError(
                "cannot set up the Rasa environment: 'uv' is neither on PATH nor in "
                f"{ROOT / '.tools/venv/bin/uv'}. Run ./hailong once (it installs uv there), "
                "or install uv (pip install uv), then retry."
            )
        log.info(
            "setting up the Rasa environment in %s (first time: a few minutes); "
            "details: bash nlu/setup_env.sh",
            venv,
        )
        # The script's own lines are news; uv's (one per package) are details.
        output = _Output(
            on_line=lambda line: (
                log.info("%s", line) if line.startswith("setup_env:") else log.debug("uv: %s", line)
            )
        )
        code, seconds = await _run(
            ["bash", str(SETUP_SCRIPT)], cwd=ROOT, env=rasa_env(), output=output
        )
        if code != 0:
            advice = ""
            if code == 3:
                advice = (
                    f"\nInstall Python 3.10, then start again: `{find_uv()} python install "
                    "3.10` (or `pyenv install 3.10.13`, or apt-get install python3.10 "
                    "python3.10-venv)."
                )
            raise RasaEnvError(
                f"could not set up the Rasa environment (nlu/setup_env.sh exited with code "
                f"{code}):\n{output.text()}{advice}"
            )
        if not os.access(rasa_bin(), os.X_OK):
            raise RasaEnvError(f"nlu/setup_env.sh succeeded but {rasa_bin()} is missing")
        log.info("Rasa environment ready in %.0f s", seconds)


# ---------------------------------------------------------------- training


def data_intents(data: Path = DATA_DIR) -> list[str]:
    """The intents of the Rasa YAML training data (a file or every *.yml/*.yaml in a dir)."""
    files = [data] if data.is_file() else sorted([*data.glob("*.yml"), *data.glob("*.yaml")])
    intents: list[str] = []
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise RasaTrainError(f"{path}: not valid YAML: {exc}") from None
        items = (doc.get("nlu") or []) if isinstance(doc, dict) else []
        for item in items:
            if isinstance(item, dict) and item.get("intent") and item["intent"] not in intents:
                intents.append(str(item["intent"]))
    return intents


def write_domain(intents: Iterable[str], path: Path) -> None:
    """An NLU-only domain listing `intents` (generated at train time from the data, so a new
    field needs only its data file)."""
    domain = {
        "version": "3.1",
        "intents": list(intents),
        "session_config": {
            "session_expiration_time": 60,
            "carry_over_slots_to_new_session": False,
        },
    }
    path.write_text(
        "# Generated by bot/rasa.py from the training data; not edited by hand.\n"
        + yaml.safe_dump(domain, allow_unicode=True, sort_keys=False),
        encoding="utf-8",
    )


def _check_fields(intents: list[str]) -> None:
    fields: dict[str, set[str]] = {}
    for intent in intents:
        if "+" in intent:
            field, category = intent.split("+", 1)
            fields.setdefault(field, set()).add(category)
    for field, categories in sorted(fields.items()):
        missing = {"procedure", "conduct"} - categories
        if missing:
            log.warning(
                "field %r has no %s examples (intents %s)",
                field,
                " or ".join(sorted(missing)),
                ", ".join(f"{field}+{c}" for c in sorted(missing)),
            )


class _TrainProgress:
    """Turns Rasa's training output into a few log lines."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.done = "0"

    def __call__(self, line: str) -> None:
        if m := re.search(r"Starting to train component '([^']+)'", line):
            log.info("training: %s", m.group(1))
        elif m := re.match(r"Epochs:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", line):
            now = time.monotonic()
            done, total = m.groups()
            if done != self.done and (now - self.last >= 15 or done == total):
                self.last, self.done = now, done
                log.info("training: DIETClassifier epoch %s/%s", done, total)


async def train(
    config_path: Path | str,
    model_path: Path | str,
    *,
    data: Path | str = DATA_DIR,
    log_file: IO[str] | None = None,
) -> float:
    """Train an NLU model with `rasa train nlu` (cwd nlu/) into exactly `model_path`.

    The domain is generated from the intents found in `data`. The model is written to a
    temporary directory next to `model_path` and renamed into place, so a reader never
    sees half a model. Returns the training time in seconds; raises RasaTrainError."""
    config_path, model_path, data = Path(config_path), Path(model_path), Path(data)
    if not config_path.is_file():
        raise RasaTrainError(f"Rasa config file not found: {config_path}")
    if not data.exists():
        raise RasaTrainError(f"training data not found: {data}")
    if not os.access(rasa_bin(), os.X_OK):
        raise RasaTrainError(f"{rasa_bin()} is missing: set up the Rasa environment first")
    intents = data_intents(data)
    if len(intents) < 2:
        raise RasaTrainError(f"{data}: need at least 2 intents to train, found {intents}")
    _check_fields(intents)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".train-", dir=model_path.parent))
    try:
        domain = work / "domain.yml"
        write_domain(intents, domain)
        log.info(
            "training %s with %s (%d intents) -> %s",
            data,
            config_path.name,
            len(intents),
            model_path,
        )
        cmd = [
            str(rasa_bin()),
            "train",
            "nlu",
            "--config",
            str(config_path.resolve()),
            "--nlu",
            str(data.resolve()),
            "--domain",
            str(domain),
            "--out",
            str(work),
            "--fixed-model-name",
            "model",
        ]
        output = _Output(sink=log_file, on_line=_TrainProgress())
        code, seconds = await _run(cmd, cwd=NLU_DIR, env=rasa_env(), output=output)
        trained = work / "model.tar.gz"
        if code != 0 or not trained.is_file():
            raise RasaTrainError(
                f"rasa train nlu failed (exit code {code}); the end of its output:\n"
                + output.text()
            )
        os.replace(trained, model_path)
        log.info("trained %s in %.0f s", model_path, seconds)
        return seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- the server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"code {code} ({signal.Signals(-code).name})"
    return f"code {code}"


class RasaServer:
    """A supervised `rasa run --enable-api` on 127.0.0.1:`settings.nlu.port`.

    `await start()` returns at once; a background task sets up the venv, trains the model
    if it is missing, starts Rasa and restarts it whenever it exits. `is_ready` is true
    while the server answers /status with its model loaded."""

    def __init__(self, settings: Settings, token: str, *, log_path: Path | None = None) -> None:
        if not token:
            raise ValueError("RasaServer needs an auth token")
        self.settings = settings
        self.token = token
        self.port = settings.nlu.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_path = (settings.base_dir / settings.nlu.model).resolve()
        self.config_path = (settings.base_dir / settings.nlu.config).resolve()
        self.log_path = Path(log_path or settings.base_dir / "data" / "rasa.log")
        # The running server's pid: a server left behind by a killed bot is stopped first.
        # One pid file per port, holding the server's pid and the pid of the process that
        # started it: another process's server is never taken for a leftover.
        self.pid_path = self.log_path.with_name(f"rasa-{self.port}.pid")
        self.restarts = 0
        # What went wrong when Rasa cannot run (no venv possible, training failed); else None.
        self.error: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- state

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        """The pid of the running `rasa run` process (None between processes)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the server is ready; False after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ---- lifecycle

    async def start(self) -> None:
        """Start the supervisor in the background (returns immediately)."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self.error = None
        self._task = asyncio.create_task(self._guarded(), name="rasa-supervisor")

    async def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s) and the supervisor."""
        self._stopping = True
        self._ready.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        proc = self._proc
        if proc is not None:
            await _terminate(proc)
            self._proc = None

    # ---- supervisor

    def _show(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(self.settings.base_dir))
        return str(path)

    async def _guarded(self) -> None:
        try:
            await self._supervise()
        except Exception as exc:  # a bug: say so instead of dying silently
            self.error = f"the Rasa supervisor stopped: {exc!r}"
            log.exception("the Rasa supervisor stopped; Rasa is off until the bot restarts")

    async def _supervise(self) -> None:
        try:
            await ensure_env()
        except Exception as exc:
            self.error = str(exc)
            log.error("%s\nRasa is off: the bot runs without classification.", exc)
            return
        await self._ensure_model()
        backoff = BACKOFF_START
        while not self._stopping:
            try:
                ready_at, why = await self._run_once()
            except (OSError, aiohttp.ClientError) as exc:
                log.exception("could not start Rasa")
                ready_at, why = None, f"could not start Rasa ({exc})"
            if self._stopping:
                return
            if ready_at is not None and time.monotonic() - ready_at > BACKOFF_MAX:
                backoff = BACKOFF_START  # it ran fine for a while: a fresh failure
            again = "restarting" if why.startswith("Rasa exited") else "trying again"
            log.warning("%s; %s in %.0f s (log: %s)", why, again, backoff, self.log_path)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            self.restarts += 1

    async def _ensure_model(self) -> None:
        """Train the model if it does not exist; after a failed training wait for the file
        (e.g. from `bot.py nlu train`) instead of retraining in a loop."""
        if self.model_path.is_file():
            return
        lock = self.model_path.with_name(f".{self.model_path.name}.lock")
        async with _file_lock(lock, f"to train {self.model_path.name}"):
            if self.model_path.is_file():
                return
            log.info(
                "no model at %s: training with %s (about 2 minutes; the bot answers "
                "meanwhile, without classification)",
                self._show(self.model_path),
                self._show(self.config_path),
            )
            try:
                with self._open_log() as fh:
                    await train(self.config_path, self.model_path, log_file=fh)
                return
            except (RasaError, OSError) as exc:
                self.error = str(exc)
                log.error(
                    "%s\nfix the data or config, then run `python bot.py nlu train`; "
                    "Rasa starts as soon as %s exists",
                    exc,
                    self.model_path,
                )
        while True:  # until someone puts a model there
            await asyncio.sleep(5)
            if self.model_path.is_file():
                break
        self.error = None

    def _open_log(self) -> IO[str]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > 10_000_000:
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        fh = self.log_path.open("a", encoding="utf-8")
        fh.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} bot.rasa\n")
        fh.flush()
        return fh

    async def _run_once(self) -> tuple[float | None, str]:
        """Start one `rasa run`, wait until it is ready (or dies), then until it exits.

        Returns when it became ready (monotonic; None if it never did) and why it ended."""
        await self._stop_leftover()
        if await self._port_taken():
            return None, f"port {self.port} is in use by another program (not this Rasa)"
        cmd = [
            str(rasa_bin()),
            "run",
            "--enable-api",
            # One argument: a token starting with "-" must not read as an option.
            f"--auth-token={self.token}",
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--model",
            str(self.model_path),
        ]
        started = time.monotonic()
        with self._open_log() as fh:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=NLU_DIR,
                env=rasa_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fh,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        with contextlib.suppress(OSError):
            self.pid_path.write_text(f"{proc.pid} {os.getpid()}\n", encoding="utf-8")
        log.info("starting Rasa on %s (pid %d)", self.url, proc.pid)
        ready_at: float | None = None
        try:
            if await self._wait_status(proc):
                ready_at = time.monotonic()
                self._ready.set()
                log.info(
                    "Rasa ready on %s (model %s) in %.0f s",
                    self.url,
                    self._show(self.model_path),
                    ready_at - started,
                )
            elif proc.returncode is None:
                log.error(
                    "Rasa did not load its model within %.0f s (nlu.start_timeout_seconds); "
                    "stopping it",
                    self.settings.nlu.start_timeout_seconds,
                )
                await _terminate(proc)
            code = await proc.wait()
        finally:
            self._ready.clear()
            # Stopped (cancelled) or exited: nothing of its process group stays behind.
            await asyncio.shield(_terminate(proc))
            with contextlib.suppress(OSError):
                self.pid_path.unlink()
        return ready_at, f"Rasa exited with {_describe_exit(code)}"

    def _leftover_pid(self) -> int | None:
        """The pid in the pid file if it is still a `rasa run` of this venv whose starter
        (another bot process, killed) is gone."""
        try:
            fields = self.pid_path.read_text(encoding="utf-8").split()
            pid, owner = int(fields[0]), int(fields[1]) if len(fields) > 1 else 0
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return None
        if owner and owner != os.getpid() and _alive(owner):
            return None  # the server of a bot process that is still running
        ours = str(rasa_bin()).encode() in cmdline and b"run" in cmdline
        return pid if ours else None

    async def _stop_leftover(self) -> None:
        """Stop the server of an earlier bot process that was killed without stopping it."""
        pid = self._leftover_pid()
        if pid is None:
            return
        log.warning("stopping Rasa pid %d, left running by an earlier bot process", pid)
        for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            for _ in range(int(wait * 10)):
                if not _alive(pid):
                    return
                await asyncio.sleep(0.1)

    async def _port_taken(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _wait_status(self, proc: asyncio.subprocess.Process) -> bool:
        """Poll GET /status until it reports a loaded model; False if the process died or
        start_timeout_seconds passed."""
        deadline = time.monotonic() + self.settings.nlu.start_timeout_seconds
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while time.monotonic() < deadline and proc.returncode is None:
                try:
                    async with http.get(f"{self.url}/status", params={"token": self.token}) as resp:
                        if resp.status == 200:
                            body = await resp.json(content_type=None)
                            if isinstance(body, dict) and body.get("model_file"):
                                return True
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass
                await asyncio.sleep(0.5)
        return False
