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


if __name__ == "__main__":
    from sdexp.resume import main as resume

    if resume(sys.argv[1:]):  # --resume: the run's own config, not a new composition (no Hydra folder)
        sys.exit(0)
    check_config(sys.argv[1:])
    main()
