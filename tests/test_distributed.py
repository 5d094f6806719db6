"""One run on several processes, the parts that need no process group: each process's share of
the global batch (sampler and random draws) is exactly its slice of what one process with the
global batch gets; run.py keeps the other processes from creating folders; sweep options."""

from __future__ import annotations

import pytest
import torch

from sdexp.data.buckets import BucketBatchSampler
from sdexp.errors import ConfigError
from sdexp.methods.diffusion import BatchShard, sample_noise, sample_timesteps

# Three buckets of 5, 3 and 2 items: full and partial global batches, one odd-sized.
SIZES = [(64, 64)] * 5 + [(64, 32)] * 3 + [(32, 64)] * 2


@pytest.mark.parametrize("drop_last", [False, True])
def test_processes_share_the_single_process_global_batches(drop_last):
    for epoch in (0, 1):
        one = BucketBatchSampler(SIZES, 4, seed=7, drop_last=drop_last)
        shards = [
            BucketBatchSampler(SIZES, 2, seed=7, drop_last=drop_last, num_replicas=2, rank=r) for r in (0, 1)
        ]
        for s in (one, *shards):
            s.set_epoch(epoch)
        whole = list(one)
        parts = [list(s) for s in shards]
        assert len(parts[0]) == len(parts[1]) == len(whole) == len(shards[0])
        for batch, first, second in zip(whole, *parts, strict=True):
            assert len(first) == len(second)  # equal per-process batches: DDP's mean weighs items alike
            if len(batch) % 2 == 0:
                assert first + second == batch  # process r holds slice r of the global batch
            else:  # a short batch padded with its own first item
                assert first + second == batch + batch[:1]
            assert len({SIZES[i] for i in first + second}) == 1  # one bucket per step, on every process


def test_noise_and_timesteps_of_two_processes_are_the_halves_of_one_process_draws():
    latents = torch.zeros(4, 3, 2, 2)

    def draws(shard, rows):
        gen = torch.Generator().manual_seed(11)
        noise = sample_noise(latents[:rows], gen, noise_offset=0.1, shard=shard)
        return noise, sample_timesteps(rows, 1000, gen, "cpu", shard=shard)

    noise, steps = draws(None, 4)
    assert torch.equal(draws(BatchShard((4,)), 4)[0], noise)  # one process: unchanged
    for rank in (0, 1):
        n, t = draws(BatchShard((2,), rank, 2), 2)
        assert torch.equal(n, noise[2 * rank : 2 * rank + 2]) and torch.equal(
            t, steps[2 * rank : 2 * rank + 2]
        )
    # DreamBooth: instance rows, then class rows; globally every process's instances, then classes.
    shard = BatchShard((2, 2), 1, 2)
    full = torch.arange(8.0)
    assert shard.take(full).tolist() == [2.0, 3.0, 6.0, 7.0]
    assert BatchShard((2, 2), 0, 2).take(full).tolist() == [0.0, 1.0, 4.0, 5.0]


def test_run_py_keeps_other_processes_from_creating_a_folder(monkeypatch):
    import run

    argv = ["data.dir=x", "hydra.run.dir=runs/a"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert run.several_processes(argv) == argv
    monkeypatch.setenv("RANK", "1")
    other = run.several_processes(argv)
    assert "hydra.run.dir=runs/a" not in other and other[-3:] == run.NO_HYDRA_FOLDER
    with pytest.raises(SystemExit) as exit_info:
        run.several_processes(["-m", "train.lr=1,2"])
    assert exit_info.value.code == 2
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run.several_processes(["-m"]) == ["-m"]


def test_gpus_per_trial_is_checked():
    from sdexp.sweep.ddp_trial import check_gpus_per_trial

    assert check_gpus_per_trial(2, False) == 2
    with pytest.raises(ConfigError, match="--gpus-per-trial"):
        check_gpus_per_trial(0, False)
    with pytest.raises(ConfigError, match="--resume-trials"):
        check_gpus_per_trial(2, True)
