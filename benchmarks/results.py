"""The figures of one benchmark run, as the benchmark records them and the report shows them."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.serve_bench import ServeResult

FIRST_SYNC = "first sync"
NO_CHANGES = "no changes"
CHANGED = "1% changed"


@dataclass(frozen=True)
class Settings:
    """The options of one run and the command line that set them."""

    sizes: list[int]
    latency_ms: float
    concurrency: int
    baseline_runs: int
    baseline_max_size: int
    serve_events: int
    serve_seconds: float
    serve_connections: int
    command: str


@dataclass(frozen=True)
class ScenarioResult:
    """One calsync sync and the null client's replay of its requests against the same sandbox.

    Requests are counted by the sandbox. Seconds are wall time: calsync's
    from the start to the end of ``SyncEngine.run``, the null client's from
    its first request to its last body. ``sandbox_cpu_seconds`` is the CPU
    time the sandbox process used during calsync's sync, so that a value
    near ``seconds`` shows a saturated server core.
    """

    size: int
    scenario: str
    changed: int
    list_requests: int
    details_requests: int
    events: int
    seconds: float
    null_seconds: float
    render_seconds: float
    full_render_seconds: float
    peak_rss: int
    sandbox_cpu_seconds: float
    refresh_budget: int

    @property
    def ratio(self) -> float:
        return self.seconds / self.null_seconds if self.null_seconds > 0 else float("inf")


@dataclass(frozen=True)
class BaselineResult:
    """Runs of the hand-written script at one size; it keeps no state, so each run is a first sync."""

    size: int
    run_seconds: list[float]
    list_requests: int
    details_requests: int
    events: int

    @property
    def seconds(self) -> float:
        return sum(self.run_seconds) / len(self.run_seconds)


@dataclass
class BenchmarkRun:
    """Everything one run measured, with the machine and the moment it ran on."""

    settings: Settings
    machine: dict[str, str]
    date: str
    scenarios: list[ScenarioResult] = field(default_factory=list)
    baselines: list[BaselineResult] = field(default_factory=list)
    serving: list[ServeResult] = field(default_factory=list)
    # Wall seconds per size (its syncs, null client runs and hand-written script), and of the serving part.
    size_seconds: dict[int, float] = field(default_factory=dict)
    serving_seconds: float = 0.0
    total_seconds: float = 0.0

    def scenario(self, size: int, name: str) -> ScenarioResult | None:
        return next((result for result in self.scenarios if result.size == size and result.scenario == name), None)

    def baseline(self, size: int) -> BaselineResult | None:
        return next((result for result in self.baselines if result.size == size), None)
