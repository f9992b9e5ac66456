"""Every case of the hostile corpus (``hostile_corpus.py``) ends in a TorchKerasIOError or a clean load, within bounds.

Never another exception type, a crash, a hang, a memory blow-up, code execution or a partly
modified module; the corpus runs in a worker process under an address-space limit, one alarm per
case, and prints one JSON line per case, which these tests check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import hostile_corpus
import pytest
from hostile_corpus import CORPUS

FAMILIES = ["truncation", "structure", "dtype", "nonfinite", "names", "config"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, hostile_corpus.__file__, str(work), "0", ",".join(FAMILIES)], capture_output=True,
                          text=True, timeout=600, env=env)  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = [r for r in lines if "outcome" in r]
    if proc.returncode != 0:
        started = [r["start"] for r in lines if "start" in r]
        pytest.fail(f"the worker died (status {proc.returncode}) in case {started[-1] if started else '?'}:\n"
                    f"{proc.stderr[-4000:]}")  # fmt: skip
    counts = {}
    for r in done:
        c = counts.setdefault(r["family"], {"cases": 0, "loaded": 0, "errors": 0, "bad": 0})
        c["cases"] += 1
        c["loaded" if r["outcome"] == "loaded" else "errors"] += 1
        c["bad"] += "bad" in r
    print("hostile corpus:", json.dumps(counts))
    slowest = max(done, key=lambda r: r["seconds"])
    print(f"slowest case: {slowest['case']} {slowest['seconds']} s")
    return done


def _family(results, *names):
    out = [r for r in results if r["family"] in names]
    assert out, f"no cases for {names}"
    return out


def _assert_clean(rows):
    bad = [f"{r['case']}: {r['bad']}" for r in rows if "bad" in r]
    assert not bad, f"{len(bad)} of {len(rows)} cases failed:\n" + "\n".join(bad[:40])


@pytest.mark.parametrize(
    "family",
    ["truncation", "bitflip", "missing", "swapped", "dtype/shape", "links", "nonfinite", "names", "config",
     "optimizer", "lambda"],
)  # fmt: skip
def test_hostile_family(results, family):
    if family == "lambda" and not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent")
    _assert_clean(_family(results, family))


def test_truncated_files_are_refused(results):
    rows = _family(results, "truncation")
    refused = [r for r in rows if r["outcome"] == "error"]
    assert len(refused) >= 0.9 * len(rows)


def test_counts(results):
    assert len(results) >= 600
