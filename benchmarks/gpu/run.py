"""Every GPU measurement of issue 21 in one command, within one short GPU window.

    python3 benchmarks/gpu/run.py --out /tmp/gpu                      # on the GPU machine (README.md)
    python3 benchmarks/gpu/run.py --out /tmp/gpu --paper-code DIR     # with the paper's code beside ours
    python3 benchmarks/gpu/run.py --dry-run --out /tmp/gpu-dry        # the same commands on a CPU, tiny sizes

Each step (``plan.py``) is a subprocess under its own timeout, cut further by what is left of ``--budget-s``;
a step that no longer fits, or lacks what it needs, is skipped with the reason. Logs go to ``OUT/logs``,
each step's JSON and PNG to ``OUT``, and ``summary.json`` (rewritten after every step, so a killed window
keeps what it measured) and ``summary.png`` close the run with the issue's targets (``report.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from plan import Context, Sizes, Step, steps, worst_case_s  # noqa: E402
from report import summarize, table  # noqa: E402

REPO = HERE.parents[1]


def base_env(ctx: Context) -> dict[str, str]:
    """The environment every step starts from: wheels installed by this run first on the path, unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    paths = [str(ctx.site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = ":".join(paths)
    return env


def run_step(step: Step, ctx: Context, remaining: float) -> dict:
    """Run one step; returns its record (status ok | failed | timeout | skipped, seconds, command, log)."""
    try:
        reason = step.check(ctx)
    except Exception as e:  # a check that cannot decide skips the step, with why
        reason = f"check failed: {type(e).__name__}: {e}"
    if reason:
        return {"status": "skipped", "reason": reason, "seconds": 0.0}
    if remaining < step.min_s:
        return {"status": "skipped", "reason": f"budget: {remaining:.0f} s left, needs {step.min_s:.0f}", "seconds": 0.0}
    log = ctx.out / "logs" / f"{step.name}.log"
    t0 = time.monotonic()
    record: dict = {"log": str(log.relative_to(ctx.out))}
    try:
        if step.prepare:
            step.prepare(ctx)
        argv = step.argv(ctx)
    except Exception as e:
        return {**record, "status": "failed", "reason": f"prepare: {type(e).__name__}: {e}",
                "seconds": round(time.monotonic() - t0, 1)}
    timeout = max(1.0, min(step.timeout_s * ctx.sizes.timeout_scale, remaining - (time.monotonic() - t0)))
    record.update(command=shlex.join(argv), timeout_s=round(timeout, 1))
    cache = ctx.out / "cache" / step.name  # compilers' caches per step: a killed build leaves torn files behind
    env = {**ctx.facts["env"], "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "TRITON_CACHE_DIR": str(cache / "triton"),
           **step.env(ctx)}
    with open(log, "w") as f:
        f.write(f"$ {record['command']}\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ctx.repo, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            record.update(status="ok" if rc == 0 else "failed", rc=rc)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group: it and what it started
            proc.wait()
            record.update(status="timeout", rc=None, reason=f"killed after {timeout:.0f} s")
            shutil.rmtree(cache, ignore_errors=True)  # a rerun must not load what the kill cut short
    if step.finish:
        try:
            step.finish(ctx)
        except Exception as e:
            record["finish_error"] = f"{type(e).__name__}: {e}"
    record["seconds"] = round(time.monotonic() - t0, 1)
    record["outputs"] = {name: (ctx.out / name).exists() for name in step.outputs}
    if record["status"] == "failed":
        record["reason"] = _last_line(log)
    return record


def _last_line(log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else ""


PACKED = (".json", ".jsonl", ".png", ".log", ".xml", ".txt")  # the record; weights, data and caches stay behind


def pack(out: Path, dest: Path) -> int:
    """The run's record (JSON, PNG, logs) as one .tar.gz: a device window returns a few files of 16 MiB at
    most, and training states, datasets and compiler caches are neither needed nor small."""
    import tarfile

    def wanted(p: Path) -> bool:
        parts = p.relative_to(out).parts
        if {"cache", "data", "torch_home"} & set(parts) or p.suffix not in PACKED:
            return False
        return parts[0] != "runs" or p.suffix != ".png"  # training runs: their logs and rows, not sample grids

    files = sorted(p for p in out.rglob("*") if p.is_file() and wanted(p))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=str(Path(out.name) / f.relative_to(out)))
    return len(files)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (JSON, PNG, logs/)")
    p.add_argument("--dry-run", action="store_true", help="the same steps on this CPU at tiny sizes")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget [540; dry run 1500]")
    p.add_argument("--paper-code", default=None, help="a projected-gan checkout prepared by hand (README.md)")
    p.add_argument("--wheels", default=str(REPO / ".whl"), help="wheels the GPU image lacks; paper/ inside for its code")
    p.add_argument("--site", default="/tmp/projgan-gpu-site", help="where the wheels are installed")
    p.add_argument("--pack", default="", help="also write the record (JSON, PNG, logs) as this .tar.gz")
    p.add_argument("--only", default="", help="comma-separated step names to run (a rerun of some; the others' "
                   "records in OUT/summary.json are kept)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    sizes = Sizes.tiny() if args.dry_run else Sizes.gpu()
    budget = args.budget_s or (1500.0 if args.dry_run else 540.0)
    ctx = Context(out=out, sizes=sizes, repo=REPO, paper_code=Path(args.paper_code).resolve() if args.paper_code else None,
                  wheels=Path(args.wheels), site=Path(args.site), paper_site=Path(args.site + "-paper"))
    ctx.facts["env"] = base_env(ctx)
    plan = steps(ctx)
    if args.only:
        keep = set(args.only.split(","))
        plan = [s for s in plan if s.name in keep]
    meta = {"mode": "dry run (CPU, tiny sizes)" if args.dry_run else "GPU", "command": shlex.join(sys.argv),
            "budget_s": budget, "worst_case_s": worst_case_s(plan, sizes), "sizes": sizes.__dict__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0, records = time.monotonic(), {}
    if args.only and (out / "summary.json").exists():  # a rerun of some steps keeps the others' records
        records = json.loads((out / "summary.json").read_text()).get("steps", {})
    for step in plan:
        remaining = budget - (time.monotonic() - t0)
        print(f"[{time.monotonic() - t0:6.1f} s] {step.name} ...", flush=True)
        records[step.name] = run_step(step, ctx, remaining)
        r = records[step.name]
        print(f"[{time.monotonic() - t0:6.1f} s] {step.name}: {r['status']} {r.get('reason', '')}"[:200], flush=True)
        (out / "summary.json").write_text(json.dumps({**meta, "steps": records}, indent=2) + "\n")
    meta["seconds"] = round(time.monotonic() - t0, 1)
    summary = summarize(out, records, meta)
    if args.pack:
        print(f"packed {pack(out, Path(args.pack))} files into {args.pack}")
    print(table(summary))
    return 0 if all(r["status"] in ("ok", "skipped") for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
