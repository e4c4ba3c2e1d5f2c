"""`bot.py nlu …`: train, serve and evaluate the Rasa NLU model.

`add_nlu_commands(sub)` adds the `nlu` command to bot.py's subparsers and returns its own
subparsers, so more actions can be added with `add_nlu_command(nlu_sub, name, fn)`. As in
bot.py, each command function's docstring is its help; it returns the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _setting_path(settings: Settings, value: str) -> Path:
    return (settings.base_dir / value).resolve()


def _arg_path(value: str) -> Path:
    """A path given on the command line: relative to the current directory."""
    return Path(value).expanduser().resolve()


def _logging(settings: Settings) -> None:
    from bot.logs import setup_logging

    setup_logging(settings.log.level, settings.log.format)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


# ---------------------------------------------------------------- commands


def cmd_nlu_train(args: argparse.Namespace) -> int:
    """Train the NLU model (default: nlu.config -> nlu.model of config.toml)."""
    settings = _settings(args)
    config = _arg_path(args.rasa_config) if args.rasa_config else None
    config = config or _setting_path(settings, settings.nlu.config)
    out = _arg_path(args.out) if args.out else _setting_path(settings, settings.nlu.model)
    if not config.is_file():
        return _fail(f"Rasa config file not found: {config}")
    _logging(settings)
    from bot import rasa

    data = _arg_path(args.data) if args.data else rasa.DATA_DIR
    if not data.exists():
        return _fail(f"training data not found: {data}")

    async def go() -> float:
        await rasa.ensure_env()
        return await rasa.train(config, out, data=data)

    try:
        seconds = asyncio.run(go())
    except rasa.RasaError as exc:
        return _fail(str(exc))
    print(f"model written to {out} (trained in {seconds:.0f} s, {config.name})")
    if out == _setting_path(settings, settings.nlu.model) and settings.nlu.autostart:
        print("a running bot loads it when restarted")
    return 0


def cmd_nlu_serve(args: argparse.Namespace) -> int:
    """Run the Rasa server on loopback in the foreground (trains the model if missing)."""
    settings = _settings(args)
    nlu = settings.nlu
    if args.port:
        nlu = nlu.model_copy(update={"url": f"http://127.0.0.1:{args.port}"})
    elif not nlu.url.startswith("http://127.0.0.1:"):
        nlu = nlu.model_copy(update={"url": f"http://127.0.0.1:{nlu.port}"})
    settings = settings.model_copy(update={"nlu": nlu})
    token = nlu.token
    if not token:
        token = secrets.token_hex(24)
        print(f"nlu.token is empty; this run's token: {token}")
        print(
            f"  point the bot at it with HAILONG_NLU_URL={nlu.url} HAILONG_NLU_TOKEN={token} "
            "HAILONG_NLU_AUTOSTART=false",
            flush=True,
        )
    _logging(settings)
    return asyncio.run(_serve(settings, token))


async def _serve(settings: Settings, token: str) -> int:
    from bot import rasa

    try:
        await rasa.ensure_env()
        model = _setting_path(settings, settings.nlu.model)
        if not model.is_file():
            print(f"no model at {model}: training it first (about 2 minutes)", flush=True)
            await rasa.train(_setting_path(settings, settings.nlu.config), model)
    except rasa.RasaError as exc:
        return _fail(str(exc))
    server = rasa.RasaServer(settings, token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"Rasa log: {server.log_path}  (Ctrl+C to stop)", flush=True)
    try:
        await stop.wait()
    finally:
        print("stopping Rasa…", flush=True)
        await server.stop()
    return 0


def cmd_nlu_evaluate(args: argparse.Namespace) -> int:
    """Evaluate the NLU: grouped cross-validation, held-out set, TF-IDF baseline."""
    settings = _settings(args)
    from bot import rasa

    cmd = [str(rasa.rasa_python()), "evaluate.py", "--folds", str(args.folds)]
    configs = args.rasa_configs or [f"rasa={settings.base_dir / settings.nlu.config}"]
    for spec in configs:
        name, path = spec.split("=", 1) if "=" in spec else (Path(spec).stem, spec)
        full = _arg_path(path)
        if not full.is_file():
            return _fail(f"Rasa config file not found: {full}")
        cmd += ["--config", f"{name}={full}"]
    if args.test:
        test = _arg_path(args.test)
        if not test.is_file():
            return _fail(f"held-out test file not found: {test}")
        cmd += ["--test", str(test)]
    for flag, value in (("--data", args.data), ("--report", args.report), ("--json", args.json)):
        if value:
            cmd += [flag, str(_arg_path(value))]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    if args.baseline_only:
        cmd.append("--baseline-only")
    if args.no_cv:
        cmd.append("--no-cv")
    _logging(settings)
    try:
        asyncio.run(rasa.ensure_env())
    except rasa.RasaError as exc:
        return _fail(str(exc))
    if not args.baseline_only:
        print(
            f"training {len(configs)} pipeline(s) {args.folds} times"
            + (" plus once on all data" if args.test else "")
            + ": about 2 minutes per training on 2 cores",
            flush=True,
        )
    return subprocess.run(cmd, cwd=rasa.NLU_DIR, env=rasa.rasa_env(), check=False).returncode


# ---------------------------------------------------------------- parser


def add_nlu_command(
    parent: Any, name: str, fn: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """Add one `nlu NAME` action whose help is the first line of fn's docstring."""
    doc = (fn.__doc__ or "").strip().splitlines()[0]
    sp = parent.add_parser(name, help=doc, description=doc)
    sp.set_defaults(func=fn)
    return sp


def add_nlu_commands(sub: Any) -> Any:
    """Add `nlu` to bot.py's subparsers; returns the `nlu` subparsers (to add actions)."""
    nlu = sub.add_parser("nlu", help="Rasa NLU: train, serve, evaluate.")
    nlu_sub = nlu.add_subparsers(dest="nlu_command", metavar="ACTION", required=True)

    tr = add_nlu_command(nlu_sub, "train", cmd_nlu_train)
    # dest differs from the global --config (the configuration file of bot.py).
    tr.add_argument(
        "--config", dest="rasa_config", metavar="FILE", help="Rasa pipeline (default: nlu.config)"
    )
    tr.add_argument("--out", metavar="FILE", help="model file to write (default: nlu.model)")
    tr.add_argument("--data", metavar="DIR", help="training data (default: nlu/data)")

    sv = add_nlu_command(nlu_sub, "serve", cmd_nlu_serve)
    sv.add_argument("--port", type=int, help="port on 127.0.0.1 (default: the port of nlu.url)")

    ev = add_nlu_command(nlu_sub, "evaluate", cmd_nlu_evaluate)
    ev.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    ev.add_argument("--test", metavar="FILE", help="held-out set, e.g. nlu/tests/heldout.yml")
    ev.add_argument("--data", metavar="DIR", help="training data (default: nlu/data)")
    ev.add_argument(
        "--config",
        dest="rasa_configs",
        action="append",
        metavar="[NAME=]FILE",
        help="Rasa pipeline to evaluate (repeatable; default: nlu.config)",
    )
    ev.add_argument(
        "--baseline-only", action="store_true", help="only the TF-IDF baseline (seconds)"
    )
    ev.add_argument("--no-cv", action="store_true", help="skip cross-validation (with --test)")
    ev.add_argument("--seed", type=int, help="seed of the folds (evaluate.py's default: 13)")
    ev.add_argument("--report", metavar="FILE", help="text report (default nlu/reports/eval.txt)")
    ev.add_argument("--json", metavar="FILE", help="JSON report (default nlu/reports/eval.json)")
    return nlu_sub
