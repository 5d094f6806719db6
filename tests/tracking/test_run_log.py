"""run.log keeps what the terminal showed, once, and the traceback; the process gets its streams back."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from sdexp.tracking.run_log import run_log


@pytest.fixture()
def fresh_logger():
    """A logger of our own (propagating, no handlers), removed afterwards."""
    names = []

    def make(name: str, *handlers: logging.Handler, propagate: bool = True) -> logging.Logger:
        logger = logging.getLogger(f"test_run_log.{name}")
        logger.handlers[:] = list(handlers)
        logger.propagate = propagate
        names.append(logger)
        return logger

    yield make
    for logger in names:
        logger.handlers.clear()
        logger.propagate = True


SCRIPT = """
import logging, sys, warnings
from sdexp.tracking.run_log import run_log

handled = logging.getLogger("lib.handled")  # like Optuna: its own handler on the real stderr
handled.addHandler(logging.StreamHandler(sys.stderr))
handled.propagate = False
silent = logging.getLogger("lib.silent")  # a NullHandler: the terminal never shows it
silent.addHandler(logging.NullHandler())
silent.propagate = False
plain = logging.getLogger("lib.plain")  # no handler anywhere: Python's last resort prints it
with run_log(sys.argv[1]):
    print("hello from the run")
    sys.stderr.write("\\x1b[1mbold\\x1b[0m warning line\\n")
    for i in range(1, 4):
        sys.stderr.write(f"\\rtrain {i}/3")
    sys.stderr.write("\\n")
    warnings.warn("a library warns", UserWarning, stacklevel=1)
    handled.warning("optuna-style record")
    silent.warning("a record nobody shows")
    plain.warning("a last-resort record")
    plain.info("below WARNING: neither shown nor kept")
    print("no newline at the end", end="")
print("after the block")
plain.warning("after the block too")
"""


def test_the_log_holds_prints_warnings_records_and_the_last_drawing_of_a_progress_bar(tmp_path, cli):
    """In a process of its own: pytest's log capture would stand in for Python's last-resort handler."""
    script, path = tmp_path / "script.py", tmp_path / "run" / "run.log"
    script.write_text(SCRIPT)
    proc = cli([str(script), str(path)])
    assert proc.returncode == 0, proc.stderr
    text = path.read_text()
    lines = text.splitlines()
    assert proc.stdout == "hello from the run\nno newline at the endafter the block\n"
    for shown in ("\x1b[1mbold", "train 1/3", "UserWarning: a library warns", "optuna-style record",
                  "a last-resort record", "after the block too"):  # fmt: skip
        assert shown in proc.stderr, shown
    assert "a record nobody shows" not in proc.stderr
    assert "hello from the run" in lines and "bold warning line" in lines
    assert "train 3/3" in lines and "train 1/3" not in text and "\x1b" not in text
    assert any("UserWarning: a library warns" in line for line in lines)
    for message in ("optuna-style record", "a record nobody shows", "a last-resort record"):
        assert sum(message in line for line in lines) == 1, (message, text)
    assert "WARNING lib.silent: a record nobody shows" in lines
    assert "below WARNING" not in text and "after the block" not in text
    assert lines[-1] == "no newline at the end"


def test_an_exception_ends_the_log_with_its_traceback_and_the_streams_come_back(tmp_path):
    out, err, handlers = sys.stdout, sys.stderr, list(logging.root.handlers)
    path = tmp_path / "run.log"

    def fail():
        raise FileNotFoundError("images/ is gone")

    with pytest.raises(FileNotFoundError), run_log(path):
        print("before the failure")
        fail()
    assert (sys.stdout, sys.stderr) == (out, err) and logging.root.handlers == handlers
    text = path.read_text()
    assert text.index("before the failure") < text.index("Traceback (most recent call last)")
    assert text.rstrip().endswith("FileNotFoundError: images/ is gone") and "in fail" in text


def test_ctrl_c_restores_streams_and_handlers(tmp_path, fresh_logger):
    out, err, handlers = sys.stdout, sys.stderr, list(logging.root.handlers)
    console = logging.StreamHandler(sys.stderr)
    fresh_logger("console", console, propagate=False)
    with pytest.raises(KeyboardInterrupt), run_log(tmp_path / "run.log"):
        assert console.stream is sys.stderr and sys.stderr is not err  # pointed at the tee
        raise KeyboardInterrupt
    assert (sys.stdout, sys.stderr) == (out, err) and logging.root.handlers == handlers
    assert console.stream is err
    assert (tmp_path / "run.log").read_text().rstrip().endswith("KeyboardInterrupt")


def test_nested_blocks_write_each_line_once_per_file(tmp_path):
    outer, inner = tmp_path / "sweep.log", tmp_path / "trials" / "0000" / "run.log"
    with run_log(outer):
        print("sweep starts")
        with run_log(inner), run_log(inner):  # a trial's block around train_run's, same file
            print("trial line")
            logging.getLogger("test_run_log.nested").warning("trial record")
        print("sweep ends")
    outer_lines, inner_lines = outer.read_text().splitlines(), inner.read_text().splitlines()
    assert [line for line in outer_lines if "record" not in line] == [
        "sweep starts",
        "trial line",
        "sweep ends",
    ]
    assert [line for line in inner_lines if "record" not in line] == ["trial line"]
    assert sum("trial record" in line for line in outer_lines) == 1
    assert sum("trial record" in line for line in inner_lines) == 1


def test_many_runs_in_one_process_leak_no_handles_and_a_same_file_handler_is_detached(tmp_path):
    path = tmp_path / "run.log"
    hydra_file = logging.FileHandler(path)  # Hydra's job log: <output_dir>/run.log for run.py
    hydra_file.setFormatter(logging.Formatter("[hydra] %(message)s"))
    logging.root.addHandler(hydra_file)
    level = logging.root.level
    logging.root.setLevel(logging.INFO)
    try:
        fds = len(os.listdir("/proc/self/fd"))
        for i in range(30):
            with run_log(tmp_path / f"t{i}" / "run.log"):
                print(f"trial {i}")
        assert len(os.listdir("/proc/self/fd")) == fds
        assert (tmp_path / "t29" / "run.log").read_text() == "trial 29\n"
        with run_log(path):
            assert hydra_file not in logging.root.handlers
            logging.getLogger("test_run_log.hydra").warning("written once")
        assert hydra_file in logging.root.handlers
    finally:
        logging.root.removeHandler(hydra_file)
        hydra_file.close()
        logging.root.setLevel(level)
    assert path.read_text().count("written once") == 1


TINY = ["model=tiny", "eval=none", "data.prompt=a photo of sks toy", "logger=none", "train.steps=4",
        "train.checkpoint_every=2"]  # fmt: skip


def test_a_single_run_that_fails_in_training_ends_its_run_log_with_the_traceback(
    tmp_path, toy_images, compose
):
    from sdexp.run import train_run

    cfg = compose(*TINY, "train.lr=1e30", f"data.dir={toy_images}")
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train_run(cfg, tmp_path / "run", notify=print)
    text = (tmp_path / "run" / "run.log").read_text()
    assert (
        text.count("Traceback (most recent call last)") == 1
    )  # train_run's and fit_and_record's blocks are one
    assert "in fit_and_record" in text and text.rstrip().splitlines()[-1].startswith(
        "FloatingPointError: loss is nan"
    )


def test_run_py_logs_its_input_checks_into_the_folder_hydra_made(tmp_path, cli):
    """Hydra makes the run folder first and writes its own <job>.log there: run.log, once."""
    out = tmp_path / "run"
    proc = cli(["run.py", *TINY, f"data.dir={tmp_path / 'gone'}", f"hydra.run.dir={out}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith(
        f"image folder {tmp_path / 'gone'} does not exist; set data.dir to a folder of images"
    )
    lines = (out / "run.log").read_text().splitlines()
    assert lines.count("Traceback (most recent call last):") == 1
    assert (
        lines[-1]
        == f"sdexp.errors.UserError: image folder {tmp_path / 'gone'} does not exist; set data.dir to a folder of images"
    )
