"""The `elo bench` typer commands: run a benchmark against an OpenAI-compatible URL, compare two result files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

bench_app = typer.Typer(
    help="Benchmark any OpenAI-compatible endpoint (ours or a raw `vllm serve`) and compare results.",
    no_args_is_help=True,
)

DEFAULT_URL = "http://127.0.0.1:8000/v1"
DEFAULT_CONCURRENCY = 4
DEFAULT_NUM_REQUESTS = 100


def parse_headers(values: list[str] | None) -> dict[str, str]:
    """``["K: V", ...]`` → dict; raises typer.BadParameter on a value without a colon or an empty name."""
    headers: dict[str, str] = {}
    for raw in values or []:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise typer.BadParameter(f"expected NAME:VALUE, got {raw!r}", param_hint="--header")
        headers[name.strip()] = value.strip()
    return headers


def _is_secret(header_name: str) -> bool:
    name = header_name.lower()
    return any(word in name for word in ("authorization", "key", "token", "secret", "cookie"))


def _check_conflicts(
    *,
    concurrency: int | None,
    rate: float | None,
    trace: Path | None,
    prompt_tokens: int | None,
    output_tokens: int | None,
) -> None:
    if concurrency is not None and rate is not None:
        raise typer.BadParameter(
            f"--concurrency {concurrency} and --rate {rate} conflict: choose a closed loop or an arrival rate",
            param_hint="--concurrency/--rate",
        )
    if trace is not None and prompt_tokens is not None:
        raise typer.BadParameter(
            f"--trace {trace} sets prompt sizes; drop --prompt-tokens {prompt_tokens}", param_hint="--prompt-tokens"
        )
    if trace is not None and output_tokens is not None:
        raise typer.BadParameter(
            f"--trace {trace} sets output sizes; drop --output-tokens {output_tokens}", param_hint="--output-tokens"
        )


@bench_app.command()
def serve(
    url: Annotated[str, typer.Option(help="Base URL including /v1.")] = DEFAULT_URL,
    model: Annotated[str | None, typer.Option(help="Model name; default: the first of GET /v1/models.")] = None,
    num_requests: Annotated[
        int | None,
        typer.Option("--num-requests", "-n", min=1, help=f"Requests to send (default {DEFAULT_NUM_REQUESTS}; "
                     "with --trace: all selected trace rows)."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", min=1, help=f"Closed loop with C workers (default {DEFAULT_CONCURRENCY} "
                     "unless --rate or --trace)."),
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Poisson arrivals, requests/s.")] = None,
    prompt_tokens: Annotated[int | None, typer.Option(min=1, help="Prompt length in tokens (default 128).")] = None,
    output_tokens: Annotated[int | None, typer.Option(min=1, help="max_tokens per request (default 128).")] = None,
    trace: Annotated[
        Path | None,
        typer.Option(help="Trace file (Azure CSV, arrival_s/prompt_tokens/output_tokens CSV, or JSONL): sizes and, "
                     "without -c/--rate, arrival times."),
    ] = None,
    trace_time_scale: Annotated[float, typer.Option(help="Trace speed-up factor.")] = 1.0,
    trace_start: Annotated[int, typer.Option(min=0, help="Skip this many trace rows.")] = 0,
    trace_limit: Annotated[int | None, typer.Option(min=0, help="Keep at most this many trace rows.")] = None,
    trace_max_duration_s: Annotated[
        float | None, typer.Option(min=0.0, help="Keep trace rows arriving within this many (scaled) seconds.")
    ] = None,
    trace_sort: Annotated[bool, typer.Option(help="Sort an unsorted trace instead of failing.")] = False,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer path/name for exact-length prompts (else ~1 word per token).")
    ] = None,
    max_prompt_tokens: Annotated[int | None, typer.Option(min=1, help="Clamp prompt lengths (counted).")] = None,
    max_output_tokens: Annotated[int | None, typer.Option(min=1, help="Clamp max_tokens (counted).")] = None,
    endpoint: Annotated[str, typer.Option(help="chat or completions.")] = "chat",
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="Extra request header NAME:VALUE (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for prompts and arrivals.")] = 0,
    timeout_s: Annotated[float, typer.Option(help="Per-request timeout (s).")] = 120.0,
    deadline_s: Annotated[
        float | None, typer.Option(help="Stop the whole run after this many seconds.")
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    ignore_eos: Annotated[
        bool, typer.Option("--ignore-eos/--no-ignore-eos", help="Send ignore_eos so output lengths are exact.")
    ] = True,
    api_key: Annotated[
        str | None, typer.Option(help="API key (default: $OPENAI_API_KEY or 'EMPTY').", show_default=False)
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the result JSON here.")] = None,
    records: Annotated[bool, typer.Option("--records/--no-records", help="Include per-request records in the JSON.")]
    = False,
    label: Annotated[str | None, typer.Option(help="Name of this run in reports (default: the URL).")] = None,
) -> None:
    """Send N streaming requests at a concurrency, a rate or trace arrivals; report TTFT, TPOT, latency, throughput."""
    from orchestrator.bench.loadgen import EndpointError, LoadgenConfig, fetch_first_model, run_load
    from orchestrator.bench.report import build_report, print_summary, write_report
    from orchestrator.bench.stats import summarize
    from orchestrator.bench.trace import TraceError, load_trace
    from orchestrator.bench.workload import build_plan, load_prompt_factory

    _check_conflicts(
        concurrency=concurrency, rate=rate, trace=trace, prompt_tokens=prompt_tokens, output_tokens=output_tokens
    )
    for hint, value in (("--rate", rate), ("--trace-time-scale", trace_time_scale), ("--timeout-s", timeout_s),
                        ("--deadline-s", deadline_s)):
        if value is not None and not value > 0:
            raise typer.BadParameter(f"must be > 0, got {value}", param_hint=hint)
    if endpoint not in ("chat", "completions"):
        raise typer.BadParameter(f"expected chat or completions, got {endpoint!r}", param_hint="--endpoint")
    kind: Literal["chat", "completions"] = "chat" if endpoint == "chat" else "completions"
    headers = parse_headers(header)
    console = Console()
    key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"

    trace_rows = None
    if trace is not None:
        try:
            trace_rows = load_trace(
                trace,
                time_scale=trace_time_scale,
                start=trace_start,
                limit=trace_limit,
                max_duration_s=trace_max_duration_s,
                sort=trace_sort,
            )
        except TraceError as e:
            raise typer.BadParameter(str(e), param_hint="--trace") from e
        if not trace_rows:
            raise typer.BadParameter(f"{trace}: no rows left after --trace-start/--trace-limit", param_hint="--trace")
    elif num_requests is None:
        num_requests = DEFAULT_NUM_REQUESTS
    if concurrency is None and rate is None and trace is None:
        concurrency = DEFAULT_CONCURRENCY

    try:
        factory = load_prompt_factory(tokenizer)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(f"cannot load tokenizer {tokenizer!r}: {e}", param_hint="--tokenizer") from e
    plan = build_plan(
        num_requests=num_requests,
        prompt_tokens=prompt_tokens or 128,
        output_tokens=output_tokens or 128,
        concurrency=concurrency,
        rate_per_s=rate,
        trace=trace_rows,
        prompt_factory=factory,
        max_prompt_tokens=max_prompt_tokens,
        max_output_tokens=max_output_tokens,
        seed=seed,
    )
    if plan.clamped_prompts or plan.clamped_outputs:
        console.print(
            f"[yellow]clamped {plan.clamped_prompts} prompt(s) to {max_prompt_tokens} tokens and "
            f"{plan.clamped_outputs} output(s) to {max_output_tokens} tokens[/yellow]"
        )

    async def _run() -> tuple[str, Any]:
        name = model or await fetch_first_model(url, key, headers=headers)
        cfg = LoadgenConfig(
            base_url=url,
            model=name,
            api_key=key,
            endpoint=kind,
            temperature=temperature,
            ignore_eos=ignore_eos,
            headers=headers,
            timeout_s=timeout_s,
            deadline_s=deadline_s,
            concurrency=concurrency or 1,
        )
        return name, await run_load(plan.requests, cfg)

    console.print(
        f"[bold]bench[/bold] {url}: {len(plan.requests)} requests, mode={plan.mode}"
        + (f", concurrency={concurrency}" if plan.mode == "concurrency" else "")
        + (f", rate={rate}/s" if plan.mode == "rate" else "")
    )
    try:
        model_name, result = asyncio.run(_run())
    except EndpointError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e

    summary = summarize(result.records, wall_s=result.wall_s, num_planned=result.num_planned)
    run_label = label or url
    print_summary(summary, console, title=f"{run_label} ({model_name})")
    if result.deadline_hit:
        console.print(f"[yellow]deadline of {deadline_s} s reached: run was cut short[/yellow]")
    if out is not None:
        params: dict[str, Any] = {
            "url": url,
            "model": model_name,
            "endpoint": kind,
            "mode": plan.mode,
            "num_requests": len(plan.requests),
            "concurrency": plan.concurrency,
            "rate_per_s": plan.rate_per_s,
            "prompt_tokens": None if trace else (prompt_tokens or 128),
            "output_tokens": None if trace else (output_tokens or 128),
            "trace": str(trace) if trace else None,
            "trace_time_scale": trace_time_scale if trace else None,
            "trace_start": trace_start if trace else None,
            "trace_limit": trace_limit,
            "trace_max_duration_s": trace_max_duration_s,
            "tokenizer": tokenizer,
            "exact_prompt_tokens": plan.exact_prompt_tokens,
            "max_prompt_tokens": max_prompt_tokens,
            "max_output_tokens": max_output_tokens,
            "clamped_prompts": plan.clamped_prompts,
            "clamped_outputs": plan.clamped_outputs,
            "headers": {k: ("<redacted>" if _is_secret(k) else v) for k, v in headers.items()},
            "seed": seed,
            "temperature": temperature,
            "ignore_eos": ignore_eos,
            "timeout_s": timeout_s,
            "deadline_s": deadline_s,
            "deadline_hit": result.deadline_hit,
            "started_at": result.started_at,
        }
        report = build_report(
            label=run_label, params=params, summary=summary, records=list(result.records) if records else None
        )
        console.print(f"wrote {write_report(report, out)}")


@bench_app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="Result JSON A (baseline, e.g. raw vLLM).")],
    b: Annotated[Path, typer.Argument(help="Result JSON B (e.g. our endpoint).")],
) -> None:
    """Side-by-side table of two result files: throughput ratio B/A and latency differences B−A."""
    from orchestrator.bench.report import load_report, print_comparison

    try:
        ra, rb = load_report(a), load_report(b)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    print_comparison(ra, rb)


from orchestrator.sim.cli import bench_profile  # noqa: E402  (the simulator's calibration: `elo bench profile`)

bench_app.command("profile")(bench_profile)
