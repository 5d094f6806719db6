"""run.py (or ``sdexp``), killed by SIGKILL from inside at the end of step N (after that step's
metrics row is written), so a test kills a run at a known point instead of racing it:

    python tests/methods/killed_run.py N run.py [run.py arguments]
    python tests/methods/killed_run.py N sdexp sweep [sweep arguments]   # dies in its first trial
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    from sdexp import trainer as trainer_module
    from sdexp.callbacks.base import Callback

    kill_at = int(sys.argv[1])

    class KillAt(Callback):
        def on_train_step_end(self, trainer, module, logs: dict) -> None:
            if trainer.state.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    fit = trainer_module.Trainer.fit

    def fit_and_die(self, module):
        self.callbacks.append(KillAt())  # last: the loggers have written step N
        return fit(self, module)

    trainer_module.Trainer.fit = fit_and_die
    program, args = sys.argv[2], sys.argv[3:]
    if program == "sdexp":
        from sdexp.cli import main as sdexp

        sys.exit(sdexp(args))
    sys.argv = [str(REPO / "run.py"), *args]
    runpy.run_path(str(REPO / "run.py"), run_name="__main__")


if __name__ == "__main__":
    main()
