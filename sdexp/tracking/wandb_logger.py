"""Weights & Biases logging that never prompts: online with credentials, otherwise offline with a notice."""

from __future__ import annotations

import netrc
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sdexp.errors import ConfigError
from sdexp.tracking.base import EvalImage, Logger

if TYPE_CHECKING:
    from PIL.Image import Image

MODES = ("auto", "online", "offline", "disabled")
_ENV_ALIASES = {"dryrun": "offline", "run": "online"}  # legacy WANDB_MODE spellings wandb still accepts
# wandb 0.31 defaults to CoreWeave Forge and also accepts netrc entries for the W&B host behind it.
_FALLBACK_BASE_URL = "https://api.forge.coreweave.com"
_FALLBACK_UPSTREAM = {"api.forge.coreweave.com": "api.wandb.ai", "forge.coreweave.com": "api.wandb.ai"}


def _netrc_hosts() -> list[str]:
    """Hosts whose netrc entry wandb would use, mirroring wandb.sdk.lib.wbauth.wbnetrc."""
    try:
        from wandb.sdk.lib import urls
    except ImportError:  # wandb missing or reorganised: fall back to 0.31's behaviour
        urls = None
    default = urls.DEFAULT_BASE_URL if urls else _FALLBACK_BASE_URL
    base = os.environ.get("WANDB_BASE_URL", "").strip().rstrip("/") or default
    hosts = [urlsplit(base).netloc]
    if urls:
        hosts.append(urlsplit(urls.forge_upstream_url(base)).netloc)
    else:
        hosts.append(_FALLBACK_UPSTREAM.get(urlsplit(base).hostname or "", ""))
    return [h for i, h in enumerate(hosts) if h and h not in hosts[:i]]


def _netrc_path() -> Path | None:
    if env := os.environ.get("NETRC"):
        return Path(env).expanduser()
    for name in ("~/.netrc", "~/_netrc"):
        if (path := Path(name).expanduser()).exists():
            return path
    return None


def has_wandb_credentials() -> bool:
    """True if wandb could authenticate without asking: WANDB_API_KEY, an identity token, or a netrc entry."""
    if os.environ.get("WANDB_API_KEY", "").strip() or os.environ.get("WANDB_IDENTITY_TOKEN_FILE", "").strip():
        return True
    path = _netrc_path()
    if path is None or not path.is_file():
        return False
    try:
        entries = netrc.netrc(str(path))
    except (netrc.NetrcParseError, OSError):
        return False
    for host in _netrc_hosts():
        auth = entries.authenticators(host)
        if auth and auth[2]:
            return True
    return False


def _resolve(requested: str) -> tuple[str, str | None]:
    """(mode, why we fell back to offline or None)."""
    req = (requested or "auto").strip().lower()
    if req not in MODES:
        raise ConfigError(f"wandb.mode={requested!r} is not one of {', '.join(MODES)}")
    source = f"wandb.mode={req}"
    if req == "auto":
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        env = _ENV_ALIASES.get(env, env)
        if env:
            if env not in MODES[1:]:
                raise ConfigError(
                    f"WANDB_MODE={env!r} is not one of online, offline, disabled (unset it or fix it)"
                )
            req, source = env, f"WANDB_MODE={env}"
        elif os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
            return "disabled", None
    if req in ("offline", "disabled"):
        return req, None
    if has_wandb_credentials():
        return "online", None
    if req == "online":
        return "offline", f"{source} but no credentials found (WANDB_API_KEY or `wandb login`)"
    return "offline", "no credentials found"


def _offline_notice(reason: str, where: Path | str) -> str:
    return f"W&B: {reason}; logging offline to {where} (sync later with `wandb sync {where}`)"


def resolve_wandb_mode(requested: str = "auto", run_dir: Path | str | None = None) -> tuple[str, str | None]:
    """Pick the W&B mode without prompting; the notice says where offline data goes and how to sync it."""
    mode, reason = _resolve(requested)
    if reason is None:
        return mode, None
    where = Path(run_dir) / "wandb" if run_dir is not None else "<run_dir>/wandb"
    return mode, _offline_notice(reason, where)


def _run_folders(run_dir: Path) -> set[Path]:
    return {p for p in (run_dir / "wandb").glob("*run-*") if p.is_dir() and not p.is_symlink()}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class WandbLogger(Logger):
    """Logs to a W&B run stored under <run_dir>/wandb/; mode "auto" goes online only with credentials.

    wandb drops data logged at a step lower than one already logged, so log images at the current step.
    ``hparams`` join the config as top-level keys (W&B's parallel coordinates compare runs on them);
    with ``log_model`` a finished run logs its best checkpoint as a model artifact.
    """

    EVAL_TABLE_KEY = "eval/images"

    def __init__(
        self,
        *,
        run_dir: Path | str,
        project: str,
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        tags: Iterable[str] = (),
        config: dict | None = None,
        mode: str = "auto",
        notify: Callable[[str], Any] = print,
        init_timeout: float = 120.0,
        run_id: str | None = None,
        hparams: dict | None = None,
        log_model: bool = False,
    ):
        self.run_dir = Path(run_dir)
        self.notify = notify
        self.log_model = log_model
        self.mode, reason = _resolve(mode)
        self.run: Any = None
        self._run_path: Path | None = None
        self._reason: str | None = None
        if self.mode == "disabled":
            return
        # wandb infers a git root from dir and warns if dir does not exist yet.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        import wandb

        self._wandb = wandb
        init_kwargs = dict(
            dir=str(self.run_dir),
            project=project,
            entity=entity,
            group=group,
            name=name,
            tags=list(tags),
            config={**(config or {}), **(hparams or {})},
            reinit="create_new",
            # a resumed run (train.resume) logs to the W&B run it started
            **({"id": run_id, "resume": "allow"} if run_id else {}),
            settings=wandb.Settings(console="off", silent=True, init_timeout=init_timeout),
        )
        before = _run_folders(self.run_dir)
        try:
            self.run = wandb.init(mode=self.mode, **init_kwargs)
        except Exception as err:  # noqa: BLE001 - an unreachable server must not kill training
            if self.mode != "online":
                raise
            first_line = (str(err).strip().splitlines() or [""])[0]
            self.mode, reason = (
                "offline",
                f"could not start an online run ({type(err).__name__}: {first_line})",
            )
            failed_attempt = _run_folders(self.run_dir) - before
            self.run = wandb.init(mode="offline", **init_kwargs)
            # the failed attempt leaves a run-* folder holding only its handshake; keep one run per run_dir
            for stale in failed_attempt:
                shutil.rmtree(stale, ignore_errors=True)
        self._run_path = Path(self.run.settings.sync_dir)
        self._reason = reason
        if reason:
            notify(_offline_notice(reason, self._run_path))
        elif self.mode == "online" and self.run.url:
            notify(f"W&B: logging online to {self.run.url}")

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def run_path(self) -> Path | None:
        """The run's local folder (<run_dir>/wandb/offline-run-... or run-...); kept after finish()."""
        return self._run_path

    @property
    def offline_dir(self) -> Path | None:
        """The folder to pass to `wandb sync`, or None when the run is online or disabled."""
        return self._run_path if self.mode == "offline" else None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log({k: _plain(v) for k, v in metrics.items()}, step=int(step))

    def log_images(self, key: str, images: list[Image], step: int, captions: list[str] | None = None) -> None:
        if self.run is None:
            return
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"log_images({key!r}): {len(images)} images but {len(captions)} captions")
        caps = captions if captions is not None else [None] * len(images)
        self.run.log(
            {key: [self._wandb.Image(im, caption=c) for im, c in zip(images, caps, strict=True)]},
            step=int(step),
        )

    def log_eval_table(self, step: int, rows: list[EvalImage]) -> None:
        if self.run is None or not rows:
            return
        table = self._wandb.Table(columns=["step", "set", "prompt", "seed", "image"])
        for row in rows:
            table.add_data(
                int(step), row.set, row.prompt, row.seed, self._wandb.Image(row.image, caption=row.prompt)
            )
        self.run.log({self.EVAL_TABLE_KEY: table}, step=int(step))

    def log_summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update({k: _plain(v) for k, v in values.items()})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            if self.log_model and exit_code == 0:
                from sdexp.tracking.wandb_artifacts import artifact_name, log_best_checkpoint, step_alias

                name = artifact_name(run.name or run.id)
                log_best_checkpoint(run, self.run_dir, name, ["best", step_alias(self.run_dir)])
        finally:
            run.finish(exit_code=int(exit_code))  # the start-up notice already said where and how to sync
        if self.mode == "offline" and self._run_path is not None:
            _wait_until_written(self._run_path)


def _wait_until_written(run_path: Path, timeout: float = 30.0) -> bool:
    """Wait until the offline run file holds its exit record.

    wandb-core can still be writing the transaction log when ``finish()`` returns (seen on a loaded
    2-core box: the history was not yet on disk); whoever reads the run next (reports, sweeps,
    tests) must see all of it.
    """
    import time

    from sdexp.tracking.wandb_offline import read_offline_run

    deadline = time.monotonic() + timeout
    while True:
        try:
            if read_offline_run(run_path)["exit_code"] is not None:
                return True
        except Exception:  # a partly written record: read again
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
