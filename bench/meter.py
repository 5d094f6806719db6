"""Step timing and peak memory for bench/step.py (CUDA allocator stats, or RSS and profiler on CPU)."""

from __future__ import annotations

import statistics
import time


# ----- measurement helpers ------------------------------------------------------------------
def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _maxrss_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Meter:
    """Step timestamps and peak memory, from ``start()`` (after the model is loaded and placed).

    Steps 1..warmup are untimed, warmup+1..warmup+steps timed; the RSS / CUDA peak is read at the
    end of the last timed step. On CPU one more step then runs under torch.profiler to count the
    bytes of tensors it allocates (its peak above the level at its start): exact, unlike RSS,
    which also holds what the allocator keeps. That step is not timed.
    """

    def __init__(self, device, warmup: int, steps: int):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.warmup, self.steps = warmup, steps
        self.total = warmup + steps + (0 if self.cuda else 1)
        self.times: list[float] = []
        self.peak: dict = {}
        self._prof = None

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def start(self, modules=()):
        # safetensors weights are memory-mapped: their pages join the RSS only when first read, which
        # would count the whole model as training memory on CPU. Read them all before the baseline.
        with self.torch.no_grad():
            for m in modules:
                for t in (*m.parameters(), *m.buffers()):
                    t.sum()
        self.sync()
        if self.cuda:
            self.base_mb = self.torch.cuda.memory_allocated() / 2**20
            self.torch.cuda.reset_peak_memory_stats()
        else:
            self.base_rss_kb = _rss_kb()
            self.maxrss_before_kb = _maxrss_kb()
            try:  # Linux: "5" resets the peak RSS (VmHWM, and so ru_maxrss) to the current RSS
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.peak_reset = True
            except OSError:
                self.peak_reset = False
        self.times.append(time.perf_counter())

    def step_end(self, step: int):
        """Call after step ``step`` (1-based) has finished."""
        self.sync()
        if step <= self.warmup + self.steps:
            self.times.append(time.perf_counter())
        if step == self.warmup + self.steps:
            self._read_peak()
            if not self.cuda:
                self._profile_begin()
        elif step == self.total and self._prof is not None:
            self._profile_end()

    def _read_peak(self):
        if self.cuda:
            torch = self.torch
            peak = torch.cuda.max_memory_allocated() / 2**20
            self.peak = {
                "peak_mb": peak - self.base_mb,
                "peak_abs_mb": peak,
                "baseline_mb": self.base_mb,
                "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
                "peak_method": "torch.cuda.max_memory_allocated - allocated after setup",
            }
        else:
            maxrss = _maxrss_kb()
            base = self.base_rss_kb if self.peak_reset else self.maxrss_before_kb
            self.peak = {
                "peak_mb": (maxrss - base) / 1024,
                "peak_abs_mb": maxrss / 1024,
                "baseline_mb": self.base_rss_kb / 1024,
                "peak_method": "ru_maxrss (reset via clear_refs) - RSS after setup"
                if self.peak_reset
                else "ru_maxrss delta (no peak reset: may under-count)",
            }

    def _profile_begin(self):
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()

    def _profile_end(self):
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        try:  # every allocation (+bytes) and free (-bytes) in the step, in time order
            events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
            events.sort(key=lambda e: e.start_ns())
            live = peak = 0
            for e in events:
                live += e.nbytes()
                peak = max(peak, live)
            self.peak["tensor_peak_mb"] = peak / 2**20
        except AttributeError:  # a torch without these (private) profiler results
            self.peak["tensor_peak_mb"] = None

    def summary(self) -> dict:
        steps = [b - a for a, b in zip(self.times, self.times[1:])]
        timed = steps[self.warmup :]
        return {
            "step_ms_median": 1000 * statistics.median(timed),
            "step_ms_mean": 1000 * statistics.fmean(timed),
            "step_ms_min": 1000 * min(timed),
            "step_ms_all": [round(1000 * s, 2) for s in steps],
            **self.peak,
        }
