"""One training run, composed by Hydra from conf/ and the command line.

    python run.py model=tiny data.dir=DIR data.prompt="a photo of sks toy" train.steps=500 \
        hydra.run.dir=OUT
    python run.py -m train.lr=1e-4,1e-5 method.rank=4,8      # a plain grid (Hydra multirun)
    python run.py --resume RUN_DIR    # go on from its newest checkpoint with train.save_state=true
"""

import sys

import hydra
from omegaconf import DictConfig

from sdexp.config import register_schemas
from sdexp.entry import CONF_DIR, check_config

register_schemas()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from sdexp.run import run_from_hydra

    run_from_hydra(cfg)


# What Hydra creates for a process beside the main one under torchrun: nothing (no run folder, no
# .hydra/, no log file); it trains in the main process's folder (sdexp.run.run_from_hydra).
NO_HYDRA_FOLDER = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled"]


def several_processes(argv: list[str]) -> list[str]:
    """``argv`` for this process of a ``torchrun``/``accelerate launch`` run: one run, one folder."""
    from sdexp.distributed import is_launched_main, launched_processes

    if launched_processes() == 1:
        return argv
    if "-m" in argv or "--multirun" in argv:
        from sdexp.errors import ConfigError, report_and_exit

        report_and_exit(
            ConfigError(
                "-m: torchrun trains one run on several processes; for a grid of runs, each on several "
                "GPUs, use sdexp sweep --gpus-per-trial N"
            ),
            prefix="sdexp: bad config",
        )
    if is_launched_main():
        return argv
    keys = tuple(o.split("=", 1)[0] + "=" for o in NO_HYDRA_FOLDER)
    return [a for a in argv if not a.startswith(keys)] + NO_HYDRA_FOLDER


if __name__ == "__main__":
    from sdexp.resume import main as resume

    if resume(sys.argv[1:]):  # --resume: the run's own config, not a new composition (no Hydra folder)
        sys.exit(0)
    sys.argv[1:] = several_processes(sys.argv[1:])
    check_config(sys.argv[1:])
    main()
