"""`make security-audit`: run pip-audit and refuse to call an audit clean that never happened.

pip-audit looks every pinned package up in its vulnerability service (PyPI's JSON API). When
that service cannot be reached, each lookup fails, pip-audit records the package as skipped,
prints "No known vulnerabilities found" and exits 0: an offline run passes silently. This gate
runs pip-audit into a temporary file and reads it:

- every package audited: the JSON becomes the report and pip-audit's own status is kept
  (1 when it found a vulnerability that jenkins/pip-audit-accepted.txt does not accept);
- none audited: one line says the audit could not run, exit 3, no report;
- some skipped: one line names them, exit 3, no report.

The unaudited output is kept beside the report as `<report>.unaudited.json` for the record.
"""

from __future__ import annotations

import argparse
import json
import subprocess  # nosec B404  # runs pip-audit from the project's own virtualenv
import sys
from dataclasses import dataclass
from pathlib import Path

NOT_AUDITED = 3  # documented in docs/jenkins.md: distinct from pip-audit's 1 (vulnerable)


@dataclass(frozen=True)
class AuditResult:
    audited: int
    skipped: dict[str, str]  # package -> pip-audit's reason

    @property
    def complete(self) -> bool:
        return not self.skipped


def read_result(report: dict[str, object]) -> AuditResult:
    """Count audited and skipped packages in pip-audit's JSON (`--format json`)."""
    dependencies = report.get("dependencies")
    if not isinstance(dependencies, list):
        raise ValueError("pip-audit JSON: no `dependencies` list")
    skipped = {
        str(dep.get("name")): str(dep["skip_reason"])
        for dep in dependencies
        if isinstance(dep, dict) and "skip_reason" in dep
    }
    return AuditResult(audited=len(dependencies) - len(skipped), skipped=skipped)


def verdict(result: AuditResult) -> str:
    """The one line printed when the audit is incomplete."""
    total = result.audited + len(result.skipped)
    if result.audited == 0:
        return (
            f"pip-audit could not run: none of the {total} packages could be looked up in the "
            "vulnerability database (no network to the advisory DB?); NOT audited, "
            f"first reason: {next(iter(result.skipped.values()), 'none given')}"
        )
    names = ", ".join(sorted(result.skipped))
    return (
        f"pip-audit incomplete: {len(result.skipped)} of {total} packages could not be "
        f"audited ({names}); NOT audited"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True, help="where a clean JSON goes")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- pip-audit and its args")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("command: give pip-audit and its arguments after --")
    report: Path = args.report
    unaudited = report.with_suffix(".unaudited.json")
    raw = report.with_suffix(".partial.json")
    for stale in (report, unaudited, raw):  # a stale clean report must not outlive this run
        stale.unlink(missing_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    # pip-audit's own summary ("No known vulnerabilities found") is shown only for a whole audit.
    done = subprocess.run(  # nosec B603  # argv from the Makefile, no shell
        [*command, "--format", "json", "--output", str(raw)],
        check=False,
        capture_output=True,
        text=True,
    )
    if not raw.exists():
        sys.stderr.write(done.stderr)
        print(f"pip-audit failed (exit {done.returncode}) and wrote no report", file=sys.stderr)
        return done.returncode or 1
    result = read_result(json.loads(raw.read_text()))
    if not result.complete:
        raw.replace(unaudited)
        print(verdict(result), file=sys.stderr)
        return NOT_AUDITED
    raw.replace(report)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
