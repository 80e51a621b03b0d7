"""Rewrites tests/legacy/golden_vectors.json from the real PHP: ``.venv/bin/python -m tests.legacy.regenerate_golden``.

The vectors are the corpus plus a fixed-seed sample of generated cases, with the results php-cli gave
for them, so the port's parity is still checked where PHP is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.legacy.cases import corpus, generated_cases, generated_helper_cases
from tests.legacy.harness import GOLDEN_VECTORS, Case, php_binary, run_php

GOLDEN_SEED = 20240611


def golden_cases() -> list[Case]:
    cases = corpus() + generated_cases(GOLDEN_SEED, 3000) + generated_helper_cases(GOLDEN_SEED, 1000)
    return list(dict.fromkeys(cases))


def main() -> int:
    php = php_binary()
    if php is None:
        print("php-cli is needed to regenerate the vectors (apt-get install php-cli)", file=sys.stderr)
        return 1
    version = subprocess.run([php, "-r", "echo PHP_VERSION;"], capture_output=True, text=True, check=True)
    cases = golden_cases()
    results = run_php(cases, php)
    vectors = [{"fn": fn, "args": args, "php": result} for (fn, args), result in zip(cases, results, strict=True)]
    # One vector a line keeps a regeneration's diff readable.
    lines = ",\n".join(json.dumps(vector, ensure_ascii=True) for vector in vectors)
    GOLDEN_VECTORS.write_text(f'{{"php_version": "{version.stdout}", "cases": [\n{lines}\n]}}\n')
    print(f"wrote {len(vectors)} vectors from PHP {version.stdout} to {GOLDEN_VECTORS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
