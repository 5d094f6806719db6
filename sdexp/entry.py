"""The `run.py` entry point: check the composed config first, then hand over to Hydra.

Hydra reports a bad override with exit code 1 and a multi-line message. We compose the same
config once through Hydra's compose API beforehand so that a bad key or value becomes one line
and exit code 2, before anything is loaded or written.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_run_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config"):
    """The validated RunConfig that run.py would build for ``overrides`` (Hydra's compose API).

    Sweeps, the demo and tests build runs through this, so they see exactly what run.py sees.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from sdexp.config import describe_omegaconf_error, register_schemas, to_run_config
    from sdexp.errors import ConfigError

    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except MissingConfigException as err:
        raise ConfigError(missing_option_message(err, CONF_DIR)) from None
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
        raise ConfigError(describe_omegaconf_error(cause)) from None
    return to_run_config(cfg)


def _overrides_to_check(overrides: list[str], multirun: bool) -> list[list[str]]:
    """One override list per value of every sweep override (others at their first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun or not any(o.is_sweep_override() for o in parsed):
        return [overrides]
    firsts = []
    choices: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            values = [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        else:
            values = [o.input_line]
        firsts.append(values[0])
        choices.append(values)
    lists = []
    for i, values in enumerate(choices):
        for v in values[1:] if len(values) > 1 else []:
            lists.append(firsts[:i] + [v] + firsts[i + 1 :])
    return [firsts] + lists


def check_config(argv: list[str]) -> None:
    """Compose the run config for ``argv`` and validate it; exit 2 with one line if it is bad."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from sdexp.config import describe_omegaconf_error, register_schemas, to_run_config
    from sdexp.errors import ConfigError, report_and_exit

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        raise SystemExit(2) from None
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir:
        return
    config_dir = CONF_DIR
    if args.config_path:
        config_dir = Path(args.config_path)
        if not config_dir.is_absolute():
            config_dir = (Path(sys.argv[0]).resolve().parent / config_dir).resolve()
    config_name = args.config_name or "config"
    register_schemas()
    try:
        for overrides in _overrides_to_check(args.overrides, args.multirun):
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
                cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
            to_run_config(cfg)
    except ConfigError as err:
        report_and_exit(err, prefix="sdexp: bad config")
    except MissingConfigException as err:
        report_and_exit(ConfigError(missing_option_message(err, config_dir)), prefix="sdexp: bad config")
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
        report_and_exit(ConfigError(describe_omegaconf_error(cause)), prefix="sdexp: bad config")


def missing_option_message(err, config_dir: Path) -> str:
    """'model=nosuch' → which options the group has."""
    import re

    match = re.search(r"Could not (?:find|load) '([^']+)'", str(err))  # load: one of a list (logger=[a,b])
    if not match:
        return str(err).strip().splitlines()[0]
    group, _, option = match.group(1).rpartition("/")
    options = sorted(p.stem for p in (config_dir / group).glob("*.yaml")) if group else []
    if options:
        return f"{group}={option}: no such option; choose one of {', '.join(options)}"
    return f"{match.group(1)}: no such config"
