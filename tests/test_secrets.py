"""Tests for orchestrate.safety.secrets: detect-secrets findings, redaction, refusal."""

from __future__ import annotations

import threading

import pytest

from orchestrate.errors import SecretFoundError
from orchestrate.safety.secrets import (
    REDACTED,
    SecretFinding,
    SecretScanner,
    describe_findings,
    find_secrets,
)

# Well-known fake credentials, split so that scanners of this repository stay quiet.
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_" + "0123456789abcdefghijklmnopqrstuvwxyzAB"
PASSWORD = "hunter2" + "hunter2"
PRIVATE_KEY = (
    "-----BEGIN RSA " + "PRIVATE KEY-----\n"
    "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
    "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm\n"
    "-----END RSA " + "PRIVATE KEY-----\n"
)
LEAKY = (
    "import os\n"
    f'AWS_KEY = "{AWS_KEY}"\n'
    f'password = "{PASSWORD}"\n'
    f'token = "{GITHUB_TOKEN}"\n'
    f"{PRIVATE_KEY}"
)
CLEAN = (
    "import os\n"
    'api_key = os.environ["API_KEY"]\n'
    'password = "${DB_PASSWORD}"\n'
    'request_id = "123e4567-e89b-12d3-a456-426614174000"\n'
    'server = "8.8.8.8"\n'
    "def add(a, b):\n    return a + b\n"
)


def test_finds_each_kind_with_its_line():
    kinds = {(finding.kind, finding.line) for finding in find_secrets("app.py", LEAKY)}
    assert ("AWS Access Key", 2) in kinds
    assert ("Secret Keyword", 3) in kinds
    assert ("GitHub Token", 4) in kinds
    assert ("Private Key", 5) in kinds


def test_ordinary_code_has_no_findings():
    assert find_secrets("app.py", CLEAN) == []


def test_redaction_removes_every_value_and_keeps_the_rest():
    content, findings = SecretScanner("redact").check("app.py", LEAKY)
    for secret in (AWS_KEY, PASSWORD, GITHUB_TOKEN, "MIIBOgIBAAJBAKj34Gkx", "GitHub"):
        assert secret not in content
    assert content.startswith("import os\n")
    assert f'AWS_KEY = "{REDACTED}"\n' in content
    assert f"-----{REDACTED} PRIVATE KEY-----" in content
    assert len(findings) >= 4
    assert find_secrets("app.py", content) == []  # redacting twice changes nothing


def test_findings_never_carry_the_value():
    _, findings = SecretScanner("redact").check("app.py", LEAKY)
    text = repr(findings) + repr([finding.as_event() for finding in findings])
    for secret in (AWS_KEY, PASSWORD, GITHUB_TOKEN):
        assert secret not in text
    assert findings[0].as_event() == {"kind": findings[0].kind, "line": findings[0].line}


def test_refuse_mode_raises_with_kinds_and_lines_only():
    with pytest.raises(SecretFoundError) as info:
        SecretScanner("refuse").check("app.py", f'key = "{AWS_KEY}"\n')
    assert str(info.value).startswith("'app.py' holds 1 secret (AWS Access Key on line 1)")
    assert AWS_KEY not in str(info.value)
    assert info.value.findings == (SecretFinding("AWS Access Key", 1),)


def test_clean_content_passes_unchanged_in_both_modes():
    for mode in ("redact", "refuse"):
        assert SecretScanner(mode).check("app.py", CLEAN) == (CLEAN, ())


def test_an_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="'loud' is not a valid SecretMode"):
        SecretScanner("loud")


def test_describe_findings_counts_and_truncates():
    findings = tuple(SecretFinding("Secret Keyword", line) for line in range(1, 8))
    assert describe_findings(findings[:1]) == "1 secret (Secret Keyword on line 1)"
    assert describe_findings(findings).endswith("Secret Keyword on line 5 and 2 more)")


def test_threads_scan_at_once_with_the_same_results():
    expected = find_secrets("app.py", LEAKY)
    results: list[list[SecretFinding]] = []
    start = threading.Barrier(6)

    def scan() -> None:
        start.wait()
        for _ in range(5):
            results.append(find_secrets("app.py", LEAKY))

    threads = [threading.Thread(target=scan) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 30
